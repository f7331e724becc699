//! The embedded gallery: in memory ([`MemoryGallery`]), durable through an append-only
//! log ([`super::wal`]) and a snapshot with the graph's dump, in `gallery.dir`.
//!
//! A change takes the gallery's write lock to check itself, append its record to the log
//! and apply it; the `fdatasync` happens after the lock is released (readers never wait
//! for the disk), and concurrent writers share one sync. The answer waits for the sync,
//! so every acknowledged write survives a crash. Once the log since the last snapshot
//! outgrows a quarter of that snapshot (at least [`MIN_COMPACT_BYTES`]), a background
//! thread compacts: under the read lock (searches go on, writers wait) it starts a new log
//! segment, dumps the graph and encodes the snapshot; then it writes the snapshot
//! atomically and deletes what it replaces. A start reloads the snapshot and its graph
//! and replays the log after it, so nothing is rebuilt. A clean shutdown compacts, so the
//! next start replays nothing.
//!
//! Each of the three modules has one job: [`super::wal`] the log (its records, segments,
//! replay), [`super::memory`] the rows and their graph (with the snapshot they are saved
//! to), and this one the policy that ties them: when to log, sync, snapshot and compact,
//! and what a start does with what it finds ([`EmbeddedGallery::open`]).

use super::memory::{self, MemoryGallery, FILE};
use super::wal::{self, LogWriter, Record};
use super::{graph_params, Counts, Gallery, GalleryError, Hit, Opening};
use crate::config::{GalleryConfig, OnModelChange};
use crate::health::Health;
use crate::metrics::Metrics;
use simsiam::files::{write_atomic, FileError};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// The watchdog's probe (see [`Gallery::probe`]): this many bytes, written, synced and
/// removed; about what one add logs.
const PROBE_FILE: &str = ".write-probe";
const PROBE_BYTES: usize = 16 << 10;

/// Free space a compaction leaves on top of what it writes, for the adds meanwhile.
const COMPACT_MARGIN_BYTES: u64 = 1 << 20;

/// Below this much log, compaction waits (a small gallery would otherwise snapshot at
/// every few writes).
pub const MIN_COMPACT_BYTES: u64 = 4 << 20;

pub struct EmbeddedGallery {
    inner: Arc<Inner>,
    compactor: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    gallery: RwLock<MemoryGallery>,
    log: Mutex<LogWriter>,
    /// The sequence number of the last record known to be on disk; held while syncing.
    synced: Mutex<u64>,
    compacting: AtomicBool,
    /// A compaction was put off for want of disk space (logged once until one succeeds).
    compaction_deferred: AtomicBool,
    /// Bytes of the last snapshot written.
    snapshot_bytes: Mutex<u64>,
    dir: PathBuf,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GalleryError + '_ {
    move |source| FileError::at(path)(source).into()
}

impl EmbeddedGallery {
    /// Opens `cfg.dir`: the snapshot, its graph and the log after it; or, the first time,
    /// the seed. A gallery of another width is refused; one of another model too, unless
    /// `on_model_change = "reseed"` (the old gallery is kept as `gallery.bin.previous-model`).
    pub fn open(cfg: &GalleryConfig, o: Opening) -> Result<Self, GalleryError> {
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let params = graph_params(cfg);
        let opened = match stored(&dir, params)? {
            Some(stored) if keeps(&dir, &stored.gallery, cfg, &o)? => stored,
            Some(_) | None => seed(&dir, o.dim, o.model, o.seed, params)?,
        };
        // Leftovers of a compaction that crashed before its snapshot was committed.
        remove_stale(&dir, opened.first_segment, opened.graph.as_deref());
        Ok(Self::serving(dir, opened, o.health, o.metrics))
    }

    fn serving(dir: PathBuf, opened: Opened, health: Arc<Health>, metrics: Arc<Metrics>) -> Self {
        let snapshot_bytes = std::fs::metadata(dir.join(FILE)).map_or(0, |m| m.len());
        let (gallery, writer) = (opened.gallery, opened.writer);
        metrics
            .gallery_items
            .store(gallery.len(), Ordering::Relaxed);
        Self {
            inner: Arc::new(Inner {
                gallery: RwLock::new(gallery),
                log: Mutex::new(writer),
                synced: Mutex::new(0),
                compacting: AtomicBool::new(false),
                compaction_deferred: AtomicBool::new(false),
                snapshot_bytes: Mutex::new(snapshot_bytes),
                dir,
                health,
                metrics,
            }),
            compactor: Mutex::new(None),
        }
    }

    /// Logs and applies `records` under the write lock (after `check` approves them
    /// against the gallery), then waits for them to be on disk. `check` returns the
    /// records to log, possibly fewer (nothing to remove).
    fn change(
        &self,
        check: impl FnOnce(&MemoryGallery) -> Result<Vec<Record>, GalleryError>,
    ) -> Result<(usize, bool), GalleryError> {
        let inner = &self.inner;
        let (seq, len, changed) = {
            let mut g = inner.gallery.write().unwrap_or_else(|e| e.into_inner());
            let records = check(&g)?;
            if records.is_empty() {
                return Ok((g.len(), false));
            }
            let appended = lock(&inner.log).append(&records);
            let seq = match appended {
                Ok(seq) => seq,
                Err(e) => {
                    inner.health.gallery_written(Err(e.to_string()));
                    return Err(e);
                }
            };
            for r in records {
                apply(&mut g, r)?;
            }
            (seq, g.len(), true)
        };
        let synced = inner.sync(seq);
        inner
            .health
            .gallery_written(synced.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        synced?;
        inner.metrics.gallery_items.store(len, Ordering::Relaxed);
        self.maybe_compact();
        Ok((len, changed))
    }

    /// Starts a compaction in the background when the log has outgrown the snapshot, and
    /// the disk has room for it (else it waits, and says so once).
    fn maybe_compact(&self) {
        let inner = &self.inner;
        let since = lock(&inner.log).since_snapshot();
        let threshold = (*lock(&inner.snapshot_bytes) / 4).max(MIN_COMPACT_BYTES);
        if since < threshold {
            return;
        }
        if let Err(e) = inner.room_to_compact() {
            if !inner.compaction_deferred.swap(true, Ordering::SeqCst) {
                log::warn!(
                    "gallery compaction waits for disk space (the log keeps every change): {e}"
                );
            }
            return;
        }
        if inner.compacting.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut slot = lock(&self.compactor);
        if let Some(done) = slot.take() {
            let _ = done.join();
        }
        let worker = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("gallery-compact".into())
            .spawn(move || {
                if let Err(e) = worker.compact() {
                    log::error!("gallery compaction failed (the log keeps every change): {e}");
                }
                worker.compacting.store(false, Ordering::SeqCst);
            });
        match spawned {
            Ok(handle) => *slot = Some(handle),
            Err(e) => {
                log::error!("no thread for gallery compaction: {e}");
                inner.compacting.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Compacts now, in the caller's thread (tests and benchmarks).
    pub fn compact(&self) -> Result<(), GalleryError> {
        self.wait_for_compaction();
        self.inner.compact()
    }

    fn wait_for_compaction(&self) {
        if let Some(handle) = lock(&self.compactor).take() {
            let _ = handle.join();
        }
    }
}

impl Inner {
    /// Waits until record `seq` is on disk, syncing the log unless another writer's sync
    /// already covered it.
    fn sync(&self, seq: u64) -> Result<(), GalleryError> {
        let mut synced = lock(&self.synced);
        if *synced >= seq {
            return Ok(());
        }
        // Records before the current segment were synced when it was started.
        let (file, last) = lock(&self.log).sync_handle()?;
        file.sync_data().map_err(io(&self.dir))?;
        *synced = last;
        Ok(())
    }

    /// Whether the disk has room for a compaction's new files (snapshot and graph dump,
    /// each about the size of the snapshot with the log applied), with a margin: a
    /// compaction started without it would fill the disk that clients' adds need.
    fn room_to_compact(&self) -> Result<(), GalleryError> {
        let gallery = *lock(&self.snapshot_bytes) + lock(&self.log).since_snapshot();
        let need = 2 * gallery + COMPACT_MARGIN_BYTES;
        match free_bytes(&self.dir) {
            Some(free) if free < need => Err(GalleryError::NoSpace {
                place: self.dir.display().to_string(),
                message: format!(
                    "a compaction needs about {:.1} MB free, and {:.1} MB are",
                    need as f64 / 1e6,
                    free as f64 / 1e6
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Snapshots the gallery and its graph, then drops the log segments and graph dumps
    /// the snapshot replaces. Refused up front without the room; a failure half-way
    /// removes what it wrote, so the log stays the source of truth.
    fn compact(&self) -> Result<(), GalleryError> {
        self.room_to_compact()?;
        let (segment, graph, bytes) = {
            let g = self.gallery.read().unwrap_or_else(|e| e.into_inner());
            let segment = lock(&self.log).rotate()?;
            let name = format!("graph-{segment:08}");
            let written = g
                .dump_graph(&self.dir, &name)
                .and_then(|graph| Ok((graph.clone(), g.encode(segment, graph.as_deref())?)));
            match written {
                Ok((graph, bytes)) => (segment, graph, bytes),
                Err(e) => {
                    remove_files(&memory::graph_files(&self.dir, &name));
                    return Err(e);
                }
            }
        };
        if let Err(e) = write_atomic(&self.dir.join(FILE), &bytes) {
            if let Some(graph) = &graph {
                remove_files(&memory::graph_files(&self.dir, graph));
            }
            return Err(e.into());
        }
        self.compaction_deferred.store(false, Ordering::SeqCst);
        lock(&self.log).snapshot_taken();
        *lock(&self.snapshot_bytes) = bytes.len() as u64;
        remove_stale(&self.dir, segment, graph.as_deref());
        log::info!(
            "gallery {}: compacted into a snapshot of {:.1} MB",
            self.dir.display(),
            bytes.len() as f64 / 1e6
        );
        Ok(())
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Removes files a failed step wrote; one that cannot be removed is only logged.
fn remove_files(paths: &[PathBuf]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}: not removed: {e}", path.display()),
        }
    }
}

/// Applies one logged change (already checked).
fn apply(g: &mut MemoryGallery, r: Record) -> Result<(), GalleryError> {
    match r {
        Record::Upsert { item, vector } => g.upsert(item, &vector),
        Record::Remove { id } => {
            g.remove(&id);
            Ok(())
        }
    }
}

/// A gallery ready to serve: its rows and graph, and a writer at the end of its log.
struct Opened {
    gallery: MemoryGallery,
    writer: LogWriter,
    /// The first segment the snapshot does not contain: the ones before are stale.
    first_segment: u64,
    /// The graph dump in use, if the graph was reloaded.
    graph: Option<String>,
}

/// The stored gallery (the snapshot with the log after it applied); `None` when `dir`
/// holds none. Log segments without a snapshot are refused.
fn stored(dir: &Path, params: memory::GraphParams) -> Result<Option<Opened>, GalleryError> {
    let Some(loaded) = MemoryGallery::load(dir, params)? else {
        if !wal::segments(dir)?.is_empty() {
            return Err(GalleryError::Corrupt {
                path: dir.join(FILE),
                message:
                    "log segments without a snapshot: restore gallery.bin or delete the directory"
                        .into(),
            });
        }
        return Ok(None);
    };
    let mut gallery = loaded.gallery;
    let first_segment = loaded.log_segment.max(1);
    let (replayed, writer) = wal::replay(dir, first_segment, |r| apply(&mut gallery, r))?;
    let graph = if loaded.graph.is_some() {
        "its reloaded"
    } else {
        "a rebuilt"
    };
    log::info!(
        "gallery {}: snapshot with {graph} graph, {replayed} logged changes replayed",
        dir.display()
    );
    Ok(Some(Opened {
        gallery,
        writer,
        first_segment,
        graph: loaded.graph,
    }))
}

/// Whether the stored gallery `g` serves this model: yes when it is this model's (or from
/// before models were recorded); an error when its width differs, or its model does and
/// `on_model_change` is `refuse`; no when it is to be reseeded (it is kept aside first).
fn keeps(
    dir: &Path,
    g: &MemoryGallery,
    cfg: &GalleryConfig,
    o: &Opening,
) -> Result<bool, GalleryError> {
    let place = dir.display().to_string();
    if g.dim() != o.dim {
        return Err(GalleryError::StoredDimension {
            place,
            model: o.model.to_string(),
            expected: o.dim,
            found: g.dim(),
            fix: "point gallery.dir elsewhere or delete it",
        });
    }
    if g.model().is_empty() || g.model() == o.model {
        log::info!("gallery {place}: {} items", g.len());
        return Ok(true);
    }
    if cfg.on_model_change == OnModelChange::Refuse {
        return Err(GalleryError::StoredModel {
            place,
            expected: o.model.to_string(),
            found: g.model().to_string(),
            fix: "set gallery.on_model_change = \"reseed\" to rebuild it from the bundle (the old file is kept), or point gallery.dir elsewhere",
        });
    }
    keep_previous(dir, g)?;
    log::warn!(
        "gallery {place}: made by {}, re-seeded for {}; the old gallery is {FILE}.previous-model",
        g.model(),
        o.model,
    );
    Ok(false)
}

/// A new gallery of the bundle's seed, snapshotted, with an empty log.
fn seed(
    dir: &Path,
    dim: usize,
    model: &str,
    seed: super::Seed,
    params: memory::GraphParams,
) -> Result<Opened, GalleryError> {
    let items = seed.items.len();
    let g = MemoryGallery::from_parts(dim, model, seed.items, seed.vectors, params);
    let (graph, _) = write_snapshot(dir, &g, 1)?;
    log::info!(
        "gallery {}: seeded with {items} items from the bundle",
        dir.display()
    );
    Ok(Opened {
        gallery: g,
        writer: LogWriter::open(dir, 1, 0, 0)?,
        first_segment: 1,
        graph,
    })
}

/// Writes `g` as the snapshot (with its graph) whose log starts at `segment`; the graph
/// dump's name and the snapshot's size back.
fn write_snapshot(
    dir: &Path,
    g: &MemoryGallery,
    segment: u64,
) -> Result<(Option<String>, u64), GalleryError> {
    let graph = g.dump_graph(dir, &format!("graph-{segment:08}"))?;
    let bytes = g.encode(segment, graph.as_deref())?;
    write_atomic(&dir.join(FILE), &bytes)?;
    Ok((graph, bytes.len() as u64))
}

/// Moves the gallery of another model aside as one self-contained file, and clears the
/// directory of its log and graph.
fn keep_previous(dir: &Path, g: &MemoryGallery) -> Result<(), GalleryError> {
    let kept = dir.join(format!("{FILE}.previous-model"));
    write_atomic(&kept, &g.encode(0, None)?)?;
    std::fs::remove_file(dir.join(FILE)).map_err(io(dir))?;
    remove_stale(dir, u64::MAX, None);
    Ok(())
}

/// Deletes log segments before `segment` and graph dumps other than `keep` (all of them
/// when `None`); a failure only costs disk space, so it is logged, not returned.
fn remove_stale(dir: &Path, segment: u64, keep: Option<&str>) {
    let keep = keep.map(|k| memory::graph_files(dir, k));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let old_segment = wal::segment_number(&name).is_some_and(|n| n < segment);
        let old_graph = name.starts_with("graph-")
            && (name.ends_with(".hnsw.graph") || name.ends_with(".hnsw.data"))
            && !keep.as_ref().is_some_and(|k| k.contains(&path));
        if old_segment || old_graph {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("{}: not removed: {e}", path.display());
            }
        }
    }
}

impl Gallery for EmbeddedGallery {
    fn dim(&self) -> usize {
        self.inner
            .gallery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .dim()
    }

    fn upsert(&self, entries: Vec<(super::Item, Vec<f32>)>) -> Result<usize, GalleryError> {
        self.change(|g| {
            for (_, v) in &entries {
                g.check_dim(v)?;
            }
            Ok(entries
                .into_iter()
                .map(|(item, vector)| Record::Upsert { item, vector })
                .collect())
        })
        .map(|(len, _)| len)
    }

    fn remove(&self, id: &str) -> Result<Option<usize>, GalleryError> {
        let (len, removed) = self.change(|g| {
            Ok(if g.contains(id) {
                vec![Record::Remove { id: id.to_string() }]
            } else {
                Vec::new()
            })
        })?;
        Ok(removed.then_some(len))
    }

    fn search(
        &self,
        queries: &[f32],
        k: usize,
        breed: Option<&str>,
    ) -> Result<Vec<Vec<Hit>>, GalleryError> {
        let g = self.inner.gallery.read().unwrap_or_else(|e| e.into_inner());
        queries
            .chunks(g.dim().max(1))
            .map(|q| g.search(q, k, breed))
            .collect()
    }

    fn counts(&self) -> Result<Counts, GalleryError> {
        let g = self.inner.gallery.read().unwrap_or_else(|e| e.into_inner());
        Ok(Counts {
            total: g.len(),
            dim: g.dim(),
            by_breed: g.counts(),
        })
    }

    /// The count when no change holds the gallery right now: readiness never waits.
    fn ready(&self) -> Result<Option<usize>, GalleryError> {
        Ok(self.inner.gallery.try_read().ok().map(|g| g.len()))
    }

    fn probe(&self) -> Result<(), GalleryError> {
        let path = self.inner.dir.join(PROBE_FILE);
        let written = File::create(&path).and_then(|mut f| {
            f.write_all(&[0u8; PROBE_BYTES])
                .and_then(|()| f.sync_data())
        });
        let _ = std::fs::remove_file(&path);
        written.map_err(io(&path))
    }

    fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.inner.dir)
    }

    fn flush(&self) -> Result<(), GalleryError> {
        self.wait_for_compaction();
        let empty = lock(&self.inner.log).since_snapshot() == 0;
        if empty {
            return Ok(());
        }
        self.inner.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::{Item, Seed};

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    }

    fn item(i: u64) -> Item {
        Item {
            id: format!("img-{i}"),
            breed: Some(if i.is_multiple_of(2) { "even" } else { "odd" }.into()),
            source: None,
            metadata: serde_json::json!({ "i": i }),
        }
    }

    fn config(dir: &Path) -> GalleryConfig {
        GalleryConfig {
            dir: dir.to_path_buf(),
            m: 8,
            ef_construction: 64,
            ef_search: 32,
            ..GalleryConfig::default()
        }
    }

    fn open(cfg: &GalleryConfig, model: &str, seed: u64) -> Result<EmbeddedGallery, GalleryError> {
        let items: Vec<Item> = (0..seed).map(item).collect();
        let vectors = (0..seed).flat_map(|i| unit(i, 8)).collect();
        EmbeddedGallery::open(
            cfg,
            Opening {
                dim: 8,
                model,
                seed: Seed { items, vectors },
                health: Arc::new(Health::default()),
                metrics: Arc::new(Metrics::default()),
            },
        )
    }

    fn nearest(g: &EmbeddedGallery, i: u64) -> String {
        g.search(&unit(i, 8), 1, None).expect("search")[0][0]
            .id
            .clone()
    }

    #[test]
    fn changes_are_logged_and_replayed_and_the_snapshot_is_not_rewritten() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = config(dir.path());
        let g = open(&cfg, "m1", 20).expect("open");
        let snapshot = std::fs::metadata(dir.path().join(FILE)).expect("snapshot");
        assert_eq!(g.upsert(vec![(item(100), unit(100, 8))]).expect("add"), 21);
        assert_eq!(g.remove("img-3").expect("remove"), Some(20));
        assert_eq!(g.remove("img-3").expect("remove again"), None);
        let err = g.upsert(vec![(item(101), vec![1.0; 3])]).unwrap_err();
        assert!(matches!(err, GalleryError::Dimension { .. }), "{err}");
        // The snapshot is untouched: each write appended a record to the log.
        let after = std::fs::metadata(dir.path().join(FILE)).expect("snapshot");
        assert_eq!(after.modified().ok(), snapshot.modified().ok());
        assert_eq!(after.len(), snapshot.len());
        assert!(
            wal::segment_path(dir.path(), 1)
                .metadata()
                .expect("log")
                .len()
                > 0
        );
        drop(g); // no flush: as after a crash

        let g = open(&cfg, "m1", 0).expect("reopen");
        assert_eq!(g.counts().expect("counts").total, 20);
        assert_eq!(nearest(&g, 100), "img-100");
        assert_ne!(nearest(&g, 3), "img-3");
    }

    #[test]
    fn compaction_snapshots_the_graph_drops_old_segments_and_a_restart_reloads_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = config(dir.path());
        let g = open(&cfg, "m1", 50).expect("open");
        for i in 50..80 {
            g.upsert(vec![(item(i), unit(i, 8))]).expect("add");
        }
        g.remove("img-7").expect("remove");
        g.compact().expect("compact");
        assert_eq!(wal::segments(dir.path()).expect("segments"), vec![2]);
        g.upsert(vec![(item(500), unit(500, 8))])
            .expect("add after");
        let graphs = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".hnsw.graph"))
            })
            .count();
        assert_eq!(graphs, 1, "the old graph dump is gone");
        let before: Vec<String> = (0..90).map(|i| nearest(&g, i)).collect();
        drop(g);

        let loaded = MemoryGallery::load(dir.path(), graph_params(&cfg))
            .expect("load")
            .expect("snapshot");
        assert!(loaded.graph.is_some(), "the graph is reloaded, not rebuilt");
        assert_eq!(loaded.log_segment, 2);
        let g = open(&cfg, "m1", 0).expect("reopen");
        assert_eq!(g.counts().expect("counts").total, 80);
        let after: Vec<String> = (0..90).map(|i| nearest(&g, i)).collect();
        assert_eq!(before, after, "the same graph answers the same");
        assert_eq!(
            nearest(&g, 500),
            "img-500",
            "the record after the snapshot replayed"
        );

        // A clean shutdown compacts: the next start replays nothing.
        g.flush().expect("flush");
        assert_eq!(wal::segments(dir.path()).expect("segments"), vec![3]);
        assert_eq!(
            std::fs::metadata(wal::segment_path(dir.path(), 3))
                .expect("log")
                .len(),
            0
        );
    }

    #[test]
    fn a_torn_record_at_the_end_is_dropped_and_another_model_is_refused_or_reseeded() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cfg = config(dir.path());
        let g = open(&cfg, "m1", 10).expect("open");
        g.upsert(vec![(item(10), unit(10, 8))]).expect("add");
        drop(g);
        let log = wal::segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&log).expect("log");
        let whole = bytes.len();
        bytes.extend_from_within(..whole / 2);
        std::fs::write(&log, &bytes).expect("write");
        let g = open(&cfg, "m1", 0).expect("reopen");
        assert_eq!(g.counts().expect("counts").total, 11);
        assert_eq!(
            std::fs::metadata(&log).expect("log").len(),
            whole as u64,
            "cut back"
        );
        g.upsert(vec![(item(11), unit(11, 8))])
            .expect("append after the cut");
        drop(g);
        assert_eq!(
            open(&cfg, "m1", 0)
                .expect("reopen")
                .counts()
                .expect("c")
                .total,
            12
        );

        let err = open(&cfg, "m2", 3).err().expect("refused");
        assert!(matches!(err, GalleryError::StoredModel { .. }), "{err}");
        cfg.on_model_change = OnModelChange::Reseed;
        let g = open(&cfg, "m2", 3).expect("reseeded");
        assert_eq!(g.counts().expect("counts").total, 3);
        let previous = dir.path().join(format!("{FILE}.previous-model"));
        let bytes = std::fs::read(&previous).expect("the old gallery is kept");
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join(FILE), bytes).expect("write");
        let old = MemoryGallery::load(tmp.path(), graph_params(&cfg))
            .expect("load")
            .expect("snapshot");
        assert_eq!(old.gallery.len(), 12, "with its logged changes");
    }
}
