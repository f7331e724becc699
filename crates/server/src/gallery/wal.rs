//! The embedded gallery's append-only log: every change since the last snapshot, so that a
//! write costs what it writes (one record, one `fdatasync`) instead of the whole gallery.
//!
//! The log is a series of segment files, `gallery.log.<n>`; a snapshot records the first
//! segment it does not contain, and compaction starts a new segment before it snapshots,
//! so older segments can be deleted once the snapshot is on disk. A record is framed as
//! `len: u32 LE, crc32: u32 LE, payload`; the payload is a tag byte then, for an upsert, a
//! `u32 LE` JSON length, the item's JSON and the vector as little-endian f32, for a
//! removal the id. A crash can leave a torn record at the end of the last segment: it was
//! never acknowledged (the answer waits for the sync), so replay drops it.

use super::{GalleryError, Item};
use simsiam::files::FileError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const PREFIX: &str = "gallery.log.";
const UPSERT: u8 = 1;
const REMOVE: u8 = 2;

/// One change.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Upsert { item: Item, vector: Vec<f32> },
    Remove { id: String },
}

impl Record {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::new();
        match self {
            Record::Upsert { item, vector } => {
                // An Item always serialises (strings and a JSON value).
                let json = serde_json::to_vec(item).unwrap_or_default();
                payload.push(UPSERT);
                payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
                payload.extend_from_slice(&json);
                for v in vector {
                    payload.extend_from_slice(&v.to_le_bytes());
                }
            }
            Record::Remove { id } => {
                payload.push(REMOVE);
                payload.extend_from_slice(id.as_bytes());
            }
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        match payload.split_first()? {
            (&UPSERT, rest) => {
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let item = serde_json::from_slice(rest.get(4..4usize.checked_add(len)?)?).ok()?;
                let floats = &rest[4 + len..];
                if floats.len() % 4 != 0 {
                    return None;
                }
                let vector = floats
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Some(Record::Upsert { item, vector })
            }
            (&REMOVE, rest) => Some(Record::Remove {
                id: String::from_utf8(rest.to_vec()).ok()?,
            }),
            _ => None,
        }
    }
}

/// The path of segment `n`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:08}"))
}

/// The number of a segment's file name; `None` for other files.
pub fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// The segment numbers present in `dir`, ascending.
pub fn segments(dir: &Path) -> Result<Vec<u64>, GalleryError> {
    let entries = std::fs::read_dir(dir).map_err(FileError::at(dir))?;
    let mut out: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| segment_number(e.file_name().to_str()?))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A segment's records in order, and the length of its intact prefix: a record cut off
/// or failing its checksum ends the segment there.
pub fn read_segment(path: &Path) -> Result<(Vec<Record>, u64), GalleryError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(FileError::at(path))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + 8..(at + 8).saturating_add(len)) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(record) = Record::decode(payload) else {
            break;
        };
        records.push(record);
        at += 8 + len;
    }
    Ok((records, at as u64))
}

/// Feeds every record of the segments from `first` on to `apply`, in order; the number
/// of records and a writer at the end of the log back. Only the last segment may end in a
/// torn record (it was never acknowledged: the answer waits for the sync), which is
/// dropped; damage anywhere else, or a record `apply` refuses, is `Corrupt`.
pub fn replay(
    dir: &Path,
    first: u64,
    mut apply: impl FnMut(Record) -> Result<(), GalleryError>,
) -> Result<(usize, LogWriter), GalleryError> {
    let segments: Vec<u64> = segments(dir)?.into_iter().filter(|&n| n >= first).collect();
    let (mut last, mut len, mut total, mut replayed) = (first, 0, 0, 0);
    for (i, &n) in segments.iter().enumerate() {
        let path = segment_path(dir, n);
        let (records, intact) = read_segment(&path)?;
        let size = std::fs::metadata(&path)
            .map_err(FileError::at(&path))?
            .len();
        if intact < size && i + 1 < segments.len() {
            return Err(GalleryError::Corrupt {
                path,
                message: format!("damaged at byte {intact}, and later segments follow"),
            });
        }
        if intact < size {
            log::warn!(
                "{}: dropping a torn record at the end ({} bytes, never acknowledged)",
                path.display(),
                size - intact
            );
        }
        replayed += records.len();
        for r in records {
            apply(r).map_err(|e| GalleryError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        (last, len) = (n, intact);
        total += intact;
    }
    Ok((replayed, LogWriter::open(dir, last, len, total)?))
}

/// The open segment that changes are appended to.
pub struct LogWriter {
    dir: PathBuf,
    segment: u64,
    file: File,
    /// Bytes in the current segment.
    len: u64,
    /// Records appended since the writer opened (all segments): a change's sequence number.
    seq: u64,
    /// Bytes in every segment since the last snapshot.
    since_snapshot: u64,
}

impl LogWriter {
    /// Opens segment `n` for appending at `len` (its intact prefix: anything after it, a
    /// torn record, is cut off), creating it if absent.
    pub fn open(
        dir: &Path,
        segment: u64,
        len: u64,
        since_snapshot: u64,
    ) -> Result<Self, GalleryError> {
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FileError::at(&path))?;
        file.set_len(len).map_err(FileError::at(&path))?;
        let mut w = Self {
            dir: dir.to_path_buf(),
            segment,
            file,
            len,
            seq: 0,
            since_snapshot,
        };
        w.seek_end()?;
        sync_dir(dir)?;
        Ok(w)
    }

    fn seek_end(&mut self) -> Result<(), GalleryError> {
        use std::io::Seek;
        let len = self.len;
        self.file
            .seek(std::io::SeekFrom::Start(len))
            .map_err(|source| self.io(source))?;
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> GalleryError {
        FileError::at(&segment_path(&self.dir, self.segment))(source).into()
    }

    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Bytes logged since the last snapshot.
    pub fn since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// Appends the records in one write (not yet synced); their sequence number back. On
    /// failure the segment is cut back to where it was, so no partial record stays in the
    /// middle of the log; if even that fails the error says the log is broken.
    pub fn append(&mut self, records: &[Record]) -> Result<u64, GalleryError> {
        let mut buf = Vec::new();
        for r in records {
            r.encode_into(&mut buf);
        }
        if let Err(e) = self.file.write_all(&buf) {
            let restored = self.file.set_len(self.len).and_then(|()| {
                use std::io::Seek;
                self.file
                    .seek(std::io::SeekFrom::Start(self.len))
                    .map(|_| ())
            });
            return Err(match restored {
                Ok(()) => self.io(e),
                Err(e2) => GalleryError::LogBroken(format!(
                    "a failed append ({e}) could not be undone ({e2})"
                )),
            });
        }
        self.len += buf.len() as u64;
        self.since_snapshot += buf.len() as u64;
        self.seq += 1;
        Ok(self.seq)
    }

    /// A handle on the current segment and the sequence number of its last record, to
    /// sync without holding the writer.
    pub fn sync_handle(&self) -> Result<(File, u64), GalleryError> {
        let file = self.file.try_clone().map_err(|e| self.io(e))?;
        Ok((file, self.seq))
    }

    /// Syncs the current segment and starts segment `n + 1`; its number back. Called by
    /// compaction, which then snapshots everything before it.
    pub fn rotate(&mut self) -> Result<u64, GalleryError> {
        self.file.sync_data().map_err(|e| self.io(e))?;
        let next = Self::open(&self.dir, self.segment + 1, 0, self.since_snapshot)?;
        let seq = self.seq;
        *self = next;
        self.seq = seq;
        Ok(self.segment)
    }

    /// The snapshot now holds everything before the current segment.
    pub fn snapshot_taken(&mut self) {
        self.since_snapshot = self.len;
    }
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), GalleryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FileError::at(dir)(source).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str, v: f32) -> Record {
        Record::Upsert {
            item: Item {
                id: id.into(),
                breed: Some("Pug".into()),
                source: None,
                metadata: serde_json::json!({"n": v}),
            },
            vector: vec![v, -v, 0.5],
        }
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = LogWriter::open(dir.path(), 1, 0, 0).expect("open");
        let written = vec![
            upsert("a", 1.0),
            Record::Remove { id: "a".into() },
            upsert("b/ü", 2.0),
        ];
        assert_eq!(w.append(&written[..2]).expect("append"), 1);
        assert_eq!(w.append(&written[2..]).expect("append"), 2);
        let path = segment_path(dir.path(), 1);
        let (back, intact) = read_segment(&path).expect("read");
        assert_eq!(back, written);
        assert_eq!(intact, std::fs::metadata(&path).expect("meta").len());

        // A crash mid-append: half a record at the end.
        let mut torn = Vec::new();
        upsert("c", 3.0).encode_into(&mut torn);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&torn[..torn.len() / 2]).expect("write");
        let (back, len) = read_segment(&path).expect("read");
        assert_eq!((back.len(), len), (3, intact));
        // Reopening cuts the torn bytes and appends after the intact prefix.
        let mut w = LogWriter::open(dir.path(), 1, len, len).expect("reopen");
        w.append(&[upsert("d", 4.0)]).expect("append");
        let (back, _) = read_segment(&path).expect("read");
        assert_eq!(back.len(), 4);
        assert_eq!(back[3], upsert("d", 4.0));

        // A flipped bit fails the checksum: the segment ends before that record.
        let mut bytes = std::fs::read(&path).expect("read");
        let n = bytes.len();
        bytes[n - 2] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(read_segment(&path).expect("read").0.len(), 3);
    }

    #[test]
    fn rotation_starts_the_next_segment_and_segments_are_listed_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = LogWriter::open(dir.path(), 7, 0, 0).expect("open");
        w.append(&[upsert("a", 1.0)]).expect("append");
        assert_eq!(w.rotate().expect("rotate"), 8);
        w.append(&[upsert("b", 1.0)]).expect("append");
        assert_eq!(
            w.append(&[upsert("c", 1.0)]).expect("append"),
            3,
            "seq continues"
        );
        assert_eq!(segments(dir.path()).expect("list"), vec![7, 8]);
        assert_eq!(
            read_segment(&segment_path(dir.path(), 8))
                .expect("read")
                .0
                .len(),
            2
        );
        assert!(w.since_snapshot() > 0);
        w.snapshot_taken();
        assert_eq!(w.since_snapshot(), w.len);
    }
}
