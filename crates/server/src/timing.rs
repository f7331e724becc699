//! Where a request's time went, reported on every answer as headers (milliseconds, as
//! TEI does): `x-preprocess-time` (decoding and resizing), `x-queue-time` (waiting for a
//! model run), `x-inference-time` (the model runs that served it) and `x-total-time`.
//!
//! The middleware opens a [`scope`] per request; the pipeline stages [`add`] to it from the
//! request's own task. Work that is not part of a request (the canary at start-up) adds to
//! nothing.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static TIMINGS: Cell<Timings>;
}

/// Time spent per stage, summed over the request's images and model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub preprocess: Duration,
    pub queue: Duration,
    pub inference: Duration,
}

impl Timings {
    /// The headers, named and valued in milliseconds.
    pub fn headers(&self, total: Duration) -> [(&'static str, String); 4] {
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
        [
            ("x-preprocess-time", ms(self.preprocess)),
            ("x-queue-time", ms(self.queue)),
            ("x-inference-time", ms(self.inference)),
            ("x-total-time", ms(total)),
        ]
    }
}

/// Runs `work` with a fresh record of timings; gives back its output and the record.
pub async fn scope<F: Future>(work: F) -> (F::Output, Timings) {
    TIMINGS
        .scope(Cell::new(Timings::default()), async {
            let out = work.await;
            (out, TIMINGS.with(Cell::get))
        })
        .await
}

/// Adds to the current request's record; nothing outside a [`scope`].
pub fn add(f: impl FnOnce(&mut Timings)) {
    let _ = TIMINGS.try_with(|cell| {
        let mut t = cell.get();
        f(&mut t);
        cell.set(t);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_sums_what_its_task_adds_and_nothing_leaks_outside() {
        add(|t| t.queue += Duration::from_secs(9));
        let ((), t) = scope(async {
            add(|t| t.queue += Duration::from_millis(2));
            tokio::task::yield_now().await;
            add(|t| t.queue += Duration::from_millis(3));
            add(|t| t.inference += Duration::from_micros(1500));
        })
        .await;
        assert_eq!(t.queue, Duration::from_millis(5));
        assert_eq!(t.inference, Duration::from_micros(1500));
        let h = t.headers(Duration::from_millis(10));
        assert_eq!(h[1], ("x-queue-time", "5.000".to_string()));
        assert_eq!(h[2], ("x-inference-time", "1.500".to_string()));
        assert_eq!(h[3], ("x-total-time", "10.000".to_string()));
    }
}
