//! Liveness and readiness, as an orchestrator asks for them.
//!
//! `/healthz` answers while the process serves HTTP. `/readyz` answers 200 only when the
//! model is loaded and recently produced correct embeddings, the gallery is open and its
//! last write succeeded, and the server is not shutting down. Under load, readiness must
//! not queue behind the clients it serves (an orchestrator would pull the server at its
//! busiest), so it is first judged from the runs the model just made for them: every run
//! whose rows all came out as finite unit vectors counts as a success. Only when no run
//! succeeded recently (an idle server, or one whose model failed) does `/readyz` send its
//! own canary image through the model, which is then idle or broken, so it does not wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A successful run this recent makes the model ready without a canary.
pub const RECENT: Duration = Duration::from_secs(5);

/// What is known of the model without running it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// A run succeeded within [`RECENT`], after any failure.
    Serving,
    /// The latest run failed (with this message).
    Failed(String),
    /// No run in a while: only a canary can tell.
    Unknown,
}

/// The server's health, updated by the inference threads and the gallery's writers.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` (+1, so that 0 means never) of the last good run.
    last_ok: AtomicU64,
    last_failure: AtomicU64,
    failure: Mutex<String>,
    /// Why the last gallery write failed, until one succeeds again.
    gallery: Mutex<Option<String>>,
    shutting_down: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ok: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            failure: Mutex::new(String::new()),
            gallery: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    pub fn run_succeeded(&self) {
        self.last_ok.store(self.now(), Ordering::SeqCst);
    }

    pub fn run_failed(&self, message: &str) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = message.to_string();
        self.last_failure.store(self.now(), Ordering::SeqCst);
    }

    pub fn model(&self) -> ModelState {
        let (ok, failed) = (
            self.last_ok.load(Ordering::SeqCst),
            self.last_failure.load(Ordering::SeqCst),
        );
        if failed > ok {
            let message = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            return ModelState::Failed(message.clone());
        }
        if ok > 0 && self.now() - ok <= RECENT.as_millis() as u64 {
            return ModelState::Serving;
        }
        ModelState::Unknown
    }

    /// Records the outcome of a gallery write (or of the watchdog's probe, see
    /// [`crate::watch`]). The change of state is logged once each way, not per write.
    pub fn gallery_written(&self, result: Result<(), String>) {
        let mut state = self.gallery.lock().unwrap_or_else(|e| e.into_inner());
        match (state.is_some(), &result) {
            (false, Err(e)) => log::error!("gallery writes fail, so /readyz answers 503: {e}"),
            (true, Ok(())) => log::info!("gallery writes succeed again; /readyz may answer 200"),
            _ => {}
        }
        *state = result.err();
    }

    /// Why the gallery is not usable, if it is not.
    pub fn gallery_failure(&self) -> Option<String> {
        self.gallery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The canary: a small colour gradient, as PNG, that start-up and `/readyz` send through
/// decoding, preprocessing and the model.
pub fn canary_image() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let img = image::RgbImage::from_fn(96, 80, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        // Encoding a small in-memory image cannot fail.
        let _ = img.write_to(&mut out, image::ImageFormat::Png);
        out.into_inner()
    })
}

/// Whether every row of a run's output is a finite vector of unit length: what a healthy
/// encoder (which l2-normalises) returns for any input.
pub fn rows_are_unit_vectors(rows: &[f32], dim: usize) -> bool {
    dim > 0
        && rows.chunks(dim).all(|r| {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() <= 1e-3
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_outcome_decides_and_success_goes_stale() {
        let h = Health::default();
        assert_eq!(h.model(), ModelState::Unknown);
        h.run_succeeded();
        assert_eq!(h.model(), ModelState::Serving);
        std::thread::sleep(Duration::from_millis(2));
        h.run_failed("model run failed: out of memory");
        assert_eq!(
            h.model(),
            ModelState::Failed("model run failed: out of memory".into())
        );
        std::thread::sleep(Duration::from_millis(2));
        h.run_succeeded();
        assert_eq!(h.model(), ModelState::Serving);
        let stale = Health {
            started: Instant::now() - RECENT * 3,
            ..Default::default()
        };
        stale.last_ok.store(1, Ordering::SeqCst);
        assert_eq!(stale.model(), ModelState::Unknown);
    }

    #[test]
    fn gallery_failures_last_until_a_write_succeeds() {
        let h = Health::default();
        assert_eq!(h.gallery_failure(), None);
        h.gallery_written(Err("disk full".into()));
        assert_eq!(h.gallery_failure().as_deref(), Some("disk full"));
        h.gallery_written(Ok(()));
        assert_eq!(h.gallery_failure(), None);
        assert!(!h.shutting_down());
        h.begin_shutdown();
        assert!(h.shutting_down());
    }

    #[test]
    fn only_finite_unit_rows_pass() {
        assert!(rows_are_unit_vectors(&[1.0, 0.0, 0.6, 0.8], 2));
        assert!(!rows_are_unit_vectors(&[1.0, 0.0, 0.6, 0.7], 2));
        assert!(!rows_are_unit_vectors(&[f32::NAN, 1.0], 2));
        assert!(!rows_are_unit_vectors(&[0.0, 0.0], 2));
    }
}
