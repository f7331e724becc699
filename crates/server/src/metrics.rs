//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.
//!
//! A handful of counters and histograms behind mutexes: the lock is held for a few
//! additions per request, far below the cost of the request itself, and it keeps the
//! module free of a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds: 1 ms to 10 s.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch-size buckets (images per model run).
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram with fixed upper bounds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]` = observations ≤ `bounds[i]` (not cumulative; summed when rendered).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The stages of a request whose time is measured separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Decode,
    Preprocess,
    Inference,
    Search,
    Classify,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Search => "search",
            Stage::Classify => "classify",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batch_size: Mutex<Histogram>,
    stages: Mutex<BTreeMap<Stage, Histogram>>,
    /// Images waiting for the model right now.
    pub queue_depth: AtomicUsize,
    /// Live items in the gallery.
    pub gallery_items: AtomicUsize,
    /// Free bytes on the embedded gallery's filesystem (`u64::MAX`: not measured).
    pub gallery_free_bytes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Mutex::default(),
            batch_size: Mutex::new(Histogram::new(BATCH)),
            stages: Mutex::default(),
            queue_depth: AtomicUsize::new(0),
            gallery_items: AtomicUsize::new(0),
            gallery_free_bytes: AtomicU64::new(u64::MAX),
        }
    }
}

/// Locks a metrics mutex; a panic elsewhere while holding it leaves counts that are still
/// worth reporting, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_batch(&self, images: usize) {
        lock(&self.batch_size).observe(images as f64);
    }

    pub fn record_stage(&self, stage: Stage, elapsed: Duration) {
        lock(&self.stages)
            .entry(stage)
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(elapsed.as_secs_f64());
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP simsiam_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE simsiam_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "simsiam_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP simsiam_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE simsiam_http_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.latency).iter() {
            h.render(
                &mut out,
                "simsiam_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP simsiam_batch_size Images per model run (dynamic batching).\n");
        out.push_str("# TYPE simsiam_batch_size histogram\n");
        lock(&self.batch_size).render(&mut out, "simsiam_batch_size", "");
        out.push_str("# HELP simsiam_stage_duration_seconds Time per stage: decode, preprocess, inference (per model run), search, classify.\n");
        out.push_str("# TYPE simsiam_stage_duration_seconds histogram\n");
        for (stage, h) in lock(&self.stages).iter() {
            h.render(
                &mut out,
                "simsiam_stage_duration_seconds",
                &format!("stage=\"{}\"", stage.name()),
            );
        }
        out.push_str("# HELP simsiam_queue_depth Images waiting for the model.\n");
        out.push_str("# TYPE simsiam_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "simsiam_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out.push_str("# HELP simsiam_gallery_items Live items in the search gallery.\n");
        out.push_str("# TYPE simsiam_gallery_items gauge\n");
        let _ = writeln!(
            out,
            "simsiam_gallery_items {}",
            self.gallery_items.load(Ordering::Relaxed)
        );
        let free = self.gallery_free_bytes.load(Ordering::Relaxed);
        if free != u64::MAX {
            out.push_str("# HELP simsiam_gallery_free_bytes Free bytes on the embedded gallery's filesystem.\n");
            out.push_str("# TYPE simsiam_gallery_free_bytes gauge\n");
            let _ = writeln!(out, "simsiam_gallery_free_bytes {free}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        m.record_batch(1);
        m.record_batch(3);
        m.record_batch(32);
        m.record_request("/v1/embed", 200, Duration::from_millis(3));
        m.record_stage(Stage::Decode, Duration::from_micros(500));
        let text = m.render();
        assert!(
            text.contains("simsiam_batch_size_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("simsiam_batch_size_bucket{le=\"4\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("simsiam_batch_size_bucket{le=\"32\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("simsiam_batch_size_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("simsiam_batch_size_sum 36"), "{text}");
        assert!(text.contains("simsiam_http_requests_total{route=\"/v1/embed\",status=\"200\"} 1"));
        assert!(text.contains(
            "simsiam_http_request_duration_seconds_bucket{route=\"/v1/embed\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "simsiam_http_request_duration_seconds_bucket{route=\"/v1/embed\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("simsiam_stage_duration_seconds_count{stage=\"decode\"} 1"));
    }
}
