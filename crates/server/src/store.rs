//! The gallery behind its lock, and its file.
//!
//! Readers (search, counts, readiness) take the read lock for as long as they look. A
//! change takes the write lock only to apply itself and take a snapshot of the result;
//! the slow part, writing and fsyncing the file, happens after the lock is released, so
//! readers never wait for a disk. Snapshots are numbered: writes are serialised, and a
//! writer whose snapshot is older than the one already on disk has nothing left to do
//! (the newer snapshot contains its change). A change is answered only once a snapshot
//! containing it is on disk, so every acknowledged write survives a crash.

use crate::gallery::{self, Gallery, GalleryError};
use crate::health::Health;
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

pub struct GalleryStore {
    gallery: RwLock<Versioned>,
    /// The version of the snapshot on disk; held while writing one.
    on_disk: Mutex<u64>,
    dir: PathBuf,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// The gallery and the number of changes applied to it.
pub struct Versioned {
    pub gallery: Gallery,
    version: u64,
}

impl GalleryStore {
    /// A store over `gallery`, already on disk in `dir`.
    pub fn new(gallery: Gallery, dir: PathBuf, health: Arc<Health>, metrics: Arc<Metrics>) -> Self {
        metrics
            .gallery_items
            .store(gallery.len(), Ordering::Relaxed);
        Self {
            gallery: RwLock::new(Versioned {
                gallery,
                version: 0,
            }),
            on_disk: Mutex::new(0),
            dir,
            health,
            metrics,
        }
    }

    /// The gallery, for reading. Blocks while a change is being applied (not while it is
    /// written to disk): call it off the async executor.
    pub fn read(&self) -> RwLockReadGuard<'_, Versioned> {
        self.gallery.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The gallery for reading if no change holds it right now (for readiness, which
    /// must not wait).
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, Versioned>> {
        self.gallery.try_read().ok()
    }

    /// Applies `change` and returns once the gallery with it is on disk. Blocking: call
    /// it on the blocking pool.
    pub fn change<T, E>(&self, change: impl FnOnce(&mut Gallery) -> Result<T, E>) -> Result<T, E>
    where
        E: From<GalleryError>,
    {
        let (out, snapshot, version, len) = {
            let mut g = self.gallery.write().unwrap_or_else(|e| e.into_inner());
            let out = change(&mut g.gallery)?;
            g.version += 1;
            (out, g.gallery.snapshot()?, g.version, g.gallery.len())
        };
        self.persist(snapshot, version)?;
        self.metrics.gallery_items.store(len, Ordering::Relaxed);
        Ok(out)
    }

    /// Writes the current gallery again (at shutdown).
    pub fn flush(&self) -> Result<(), GalleryError> {
        let mut on_disk = self.on_disk.lock().unwrap_or_else(|e| e.into_inner());
        let (snapshot, version) = {
            let g = self.read();
            (g.gallery.snapshot()?, g.version)
        };
        gallery::write_file(&self.dir, &snapshot)?;
        *on_disk = version;
        Ok(())
    }

    fn persist(&self, snapshot: Vec<u8>, version: u64) -> Result<(), GalleryError> {
        let mut on_disk = self.on_disk.lock().unwrap_or_else(|e| e.into_inner());
        if *on_disk >= version {
            return Ok(()); // a newer snapshot, with this change in it, is on disk already
        }
        let written = gallery::write_file(&self.dir, &snapshot);
        self.health
            .gallery_written(written.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        written?;
        *on_disk = version;
        Ok(())
    }
}

impl std::ops::Deref for Versioned {
    type Target = Gallery;
    fn deref(&self) -> &Gallery {
        &self.gallery
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::{GraphParams, Item};

    const P: GraphParams = GraphParams {
        m: 8,
        ef_construction: 32,
        ef_search: 32,
    };

    fn item(id: &str) -> Item {
        Item {
            id: id.into(),
            breed: None,
            source: None,
            metadata: serde_json::Value::Null,
        }
    }

    #[test]
    fn every_change_is_on_disk_when_it_returns_and_a_failed_write_is_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let health = Arc::new(Health::default());
        let store = GalleryStore::new(
            Gallery::new(2, "m", P),
            dir.path().to_path_buf(),
            health.clone(),
            Arc::new(Metrics::default()),
        );
        store
            .change(|g| g.upsert(item("a"), &[1.0, 0.0]))
            .expect("add");
        let on_disk = Gallery::load(dir.path(), P).expect("load").expect("file");
        assert_eq!((on_disk.len(), on_disk.model()), (1, "m"));
        store
            .change(|g| Ok::<_, GalleryError>(g.remove("a")))
            .expect("remove");
        assert_eq!(
            Gallery::load(dir.path(), P)
                .expect("load")
                .expect("file")
                .len(),
            0
        );
        assert_eq!(health.gallery_failure(), None);

        // A directory where the file should go: the write fails, and readiness knows.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join(crate::gallery::FILE)).expect("mkdir");
        let store = GalleryStore::new(
            Gallery::new(2, "m", P),
            blocked,
            health.clone(),
            Arc::new(Metrics::default()),
        );
        let err = store.change(|g| g.upsert(item("b"), &[0.0, 1.0]));
        assert!(err.is_err());
        assert!(health.gallery_failure().is_some());
    }
}
