//! Files written so that a crash leaves the old version or the new one, never half of
//! one, and I/O errors that name their file. The bundle, the trainer's checkpoints and
//! histories, and the server's gallery all write through [`write_atomic`].

use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error on a named file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// `map_err(FileError::at(&path))`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the filesystem is full or the quota spent: nothing is wrong with the
    /// program, and writing succeeds again once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self.source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, then a sync of the
/// directory so that the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(source) = written {
        // A half-written temporary file must not hold the space (a full disk) it failed on.
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Some(dir) = path.parent() {
        // Not every platform lets a directory be synced.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.json");
        write_atomic(&path, b"old").expect("first");
        write_atomic(&path, b"new").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn a_failed_write_names_its_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("missing").join("a.json");
        let e = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(e.path, path);
        assert!(e.to_string().contains("a.json"), "{e}");
        assert!(!e.is_no_space());
    }
}
