//! The gallery's watchdog: a thread that looks at the gallery every few seconds, so that
//! what only a client's write would otherwise reveal is known without one.
//!
//! - **Readiness comes back by itself.** Once a gallery write fails (a full disk, a lost
//!   database), `/readyz` answers 503, and an orchestrator sends the replica no traffic,
//!   so no client write would ever show that the cause is gone. While writes are failed,
//!   the watchdog probes ([`Gallery::probe`]: a small synced file beside the log, or a
//!   query), and a success makes the replica ready again.
//! - **A warning before the wall.** The free bytes of the gallery's filesystem go to
//!   `/metrics` (`simsiam_gallery_free_bytes`), and the log warns once when they fall
//!   below `gallery.low_space_warning_mb` (and says so once when they are back above).

use crate::gallery::Gallery;
use crate::health::Health;
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct Watchdog {
    gallery: Arc<dyn Gallery>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Below this many free bytes, warn.
    warn_below: u64,
    /// Whether the last look found free space below `warn_below`.
    low: bool,
}

impl Watchdog {
    pub fn new(
        gallery: Arc<dyn Gallery>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        warn_below: u64,
    ) -> Self {
        Self {
            gallery,
            health,
            metrics,
            warn_below,
            low: false,
        }
    }

    /// Looks every `every` until shutdown begins, on a thread of its own (probes block).
    pub fn spawn(mut self, every: Duration) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("gallery-watch".into())
            .spawn(move || {
                while !self.health.shutting_down() {
                    self.look();
                    std::thread::sleep(every);
                }
            })
            .map(|_| ())
    }

    /// One look: the free-space gauge and warning, then a probe if writes are failed.
    pub fn look(&mut self) {
        if let Some(free) = self.gallery.free_bytes() {
            self.metrics
                .gallery_free_bytes
                .store(free, Ordering::Relaxed);
            let low = free < self.warn_below;
            if low && !self.low {
                log::warn!(
                    "the gallery's disk has {:.1} MB free, below gallery.low_space_warning_mb ({:.1} MB): adds will fail with 507 when it is full",
                    free as f64 / 1e6,
                    self.warn_below as f64 / 1e6
                );
            } else if !low && self.low {
                log::info!(
                    "the gallery's disk has {:.1} MB free again",
                    free as f64 / 1e6
                );
            }
            self.low = low;
        }
        if self.health.gallery_failure().is_some() {
            if let Ok(()) = self.gallery.probe() {
                self.health.gallery_written(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GalleryConfig;
    use crate::gallery::{self, Opening, Seed};

    /// An empty embedded gallery in `dir/g` whose last write failed.
    fn failed_gallery(dir: &std::path::Path) -> (Watchdog, std::path::PathBuf) {
        let cfg = GalleryConfig {
            dir: dir.join("g"),
            ..Default::default()
        };
        let (health, metrics) = (Arc::new(Health::default()), Arc::new(Metrics::default()));
        let opening = Opening {
            dim: 2,
            model: "m",
            seed: Seed::default(),
            health: health.clone(),
            metrics: metrics.clone(),
        };
        let g = gallery::open(&cfg, opening).expect("open");
        health.gallery_written(Err("No space left on device".into()));
        // Warn below "everything": every look finds the disk low.
        (Watchdog::new(g, health, metrics, u64::MAX), cfg.dir)
    }

    #[test]
    fn a_successful_probe_makes_the_gallery_ready_and_free_space_is_measured() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut w, dir) = failed_gallery(tmp.path());
        w.look();
        assert_eq!(
            w.health.gallery_failure(),
            None,
            "the probe wrote, so ready"
        );
        assert!(w.low);
        let free = w.metrics.gallery_free_bytes.load(Ordering::Relaxed);
        assert!(free > 0 && free < u64::MAX, "{free}");
        assert!(!dir.join(".write-probe").exists(), "the probe cleans up");
    }

    #[test]
    fn a_failing_probe_leaves_the_gallery_unready() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut w, dir) = failed_gallery(tmp.path());
        // The directory gone: the probe cannot write.
        std::fs::remove_dir_all(&dir).expect("rm");
        w.look();
        assert!(w.health.gallery_failure().is_some());
    }
}
