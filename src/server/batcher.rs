//! Dynamic batching: requests from many connections share model runs.
//!
//! Handlers hand preprocessed images to [`Batcher::embed`] and await the answer. Each
//! inference thread owns one [`Encoder`]; it takes the first waiting job, then keeps
//! collecting jobs until `max_batch` images are gathered or `max_wait` has passed since
//! the first, runs the model once (in chunks of `max_batch`) and sends every job its rows.
//! The queue is bounded in images: a request that does not fit is refused at once with
//! [`ApiError::Overloaded`] (503 + Retry-After) rather than growing memory without limit.

use crate::server::config::BatchingConfig;
use crate::server::encoder::Encoder;
use crate::server::error::ApiError;
use crate::server::metrics::{Metrics, Stage};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Vec<f32>, ApiError>>;

struct Job {
    images: Vec<f32>,
    n: usize,
    reply: Reply,
}

pub struct Batcher {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    capacity: usize,
    dim: usize,
}

impl Batcher {
    /// Starts one inference thread per encoder.
    pub fn start(
        encoders: Vec<Box<dyn Encoder>>,
        cfg: &BatchingConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let dim = encoders.first().map_or(0, |e| e.dim());
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.queue_capacity);
        let threads = encoders
            .into_iter()
            .enumerate()
            .map(|(i, encoder)| {
                let rx = rx.clone();
                let metrics = metrics.clone();
                let max_batch = cfg.max_batch;
                let max_wait = Duration::from_millis(cfg.max_wait_ms);
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || worker(encoder, rx, max_batch, max_wait, metrics))
                    .expect("spawning an inference thread")
            })
            .collect();
        Self {
            tx: Some(tx),
            threads,
            metrics,
            capacity: cfg.queue_capacity,
            dim,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds `n` preprocessed images (CHW tensors back to back); `n × dim` values back.
    pub async fn embed(&self, images: Vec<f32>, n: usize) -> Result<Vec<f32>, ApiError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("the server is shutting down".into()))?;
        // Reserve room for n images; undo and refuse when the queue would overflow.
        let before = self.metrics.queue_depth.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity {
            self.metrics.queue_depth.fetch_sub(n, Ordering::SeqCst);
            return Err(ApiError::Overloaded { queued: before });
        }
        let (reply, answer) = oneshot::channel();
        match tx.try_send(Job { images, n, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_depth.fetch_sub(n, Ordering::SeqCst);
                return Err(ApiError::Overloaded { queued: before });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.fetch_sub(n, Ordering::SeqCst);
                return Err(ApiError::Unavailable(
                    "the inference threads have stopped".into(),
                ));
            }
        }
        answer
            .await
            .map_err(|_| ApiError::Internal("an inference thread stopped mid-request".into()))?
    }

    /// Stops accepting work, lets the threads finish what is queued, and joins them.
    pub fn shutdown(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("an inference thread panicked");
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(
    mut encoder: Box<dyn Encoder>,
    rx: Receiver<Job>,
    max_batch: usize,
    max_wait: Duration,
    metrics: Arc<Metrics>,
) {
    // Ends when every sender is gone and the queue is empty.
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + max_wait;
        let mut total = first.n;
        let mut jobs = vec![first];
        while total < max_batch {
            match rx.recv_deadline(deadline) {
                Ok(job) => {
                    total += job.n;
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        metrics.queue_depth.fetch_sub(total, Ordering::SeqCst);
        run_batch(encoder.as_mut(), jobs, total, max_batch, &metrics);
    }
}

/// One model run over the jobs' images (in chunks of `max_batch`), rows sent back per job.
fn run_batch(
    encoder: &mut dyn Encoder,
    jobs: Vec<Job>,
    total: usize,
    max_batch: usize,
    metrics: &Metrics,
) {
    let per_image = jobs[0].images.len() / jobs[0].n.max(1);
    let dim = encoder.dim();
    let mut input = Vec::with_capacity(total * per_image);
    for job in &jobs {
        input.extend_from_slice(&job.images);
    }
    let mut output = Vec::with_capacity(total * dim);
    let mut failure = None;
    for start in (0..total).step_by(max_batch) {
        let n = max_batch.min(total - start);
        let t = Instant::now();
        let chunk = &input[start * per_image..(start + n) * per_image];
        match encoder.embed(chunk, n) {
            Ok(rows) => output.extend_from_slice(&rows),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
        metrics.record_stage(Stage::Inference, t.elapsed());
        metrics.record_batch(n);
    }
    let mut offset = 0;
    for job in jobs {
        let result = match &failure {
            Some(message) => Err(ApiError::Internal(format!("model run failed: {message}"))),
            None => Ok(output[offset * dim..(offset + job.n) * dim].to_vec()),
        };
        offset += job.n;
        // The requester may have gone (timeout, disconnect): nothing to do then.
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;
    use std::sync::Mutex;

    /// Returns each image's first value repeated `dim` times, and records batch sizes.
    struct Echo {
        dim: usize,
        per_image: usize,
        runs: Arc<Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl Encoder for Echo {
        fn dim(&self) -> usize {
            self.dim
        }
        fn embed(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
            std::thread::sleep(self.delay);
            self.runs.lock().unwrap().push(n);
            Ok((0..n)
                .flat_map(|i| std::iter::repeat_n(images[i * self.per_image], self.dim))
                .collect())
        }
    }

    fn batcher(
        max_batch: usize,
        wait_ms: u64,
        capacity: usize,
        delay_ms: u64,
    ) -> (Batcher, Arc<Mutex<Vec<usize>>>) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let echo = Echo {
            dim: 2,
            per_image: 3,
            runs: runs.clone(),
            delay: Duration::from_millis(delay_ms),
        };
        let cfg = BatchingConfig {
            max_batch,
            max_wait_ms: wait_ms,
            queue_capacity: capacity,
        };
        (
            Batcher::start(vec![Box::new(echo)], &cfg, Arc::new(Metrics::default())),
            runs,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_share_a_run_and_get_their_own_rows() {
        let (b, runs) = batcher(8, 200, 64, 0);
        let b = Arc::new(b);
        let mut handles = Vec::new();
        for r in 0..6 {
            let b = b.clone();
            handles.push(tokio::spawn(async move {
                let v = r as f32;
                b.embed(vec![v; 3], 1).await
            }));
        }
        for (r, h) in handles.into_iter().enumerate() {
            let rows = h.await.expect("join").expect("embed");
            assert_eq!(rows, vec![r as f32; 2]);
        }
        let runs = runs.lock().unwrap().clone();
        assert!(
            runs.len() < 6,
            "six requests within 200 ms must share runs: {runs:?}"
        );
        assert_eq!(runs.iter().sum::<usize>(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_request_is_split_into_max_batch_chunks() {
        let (b, runs) = batcher(4, 1, 64, 0);
        let images: Vec<f32> = (0..10).flat_map(|i| vec![i as f32; 3]).collect();
        let rows = b.embed(images, 10).await.expect("embed");
        let firsts: Vec<f32> = rows.chunks(2).map(|r| r[0]).collect();
        assert_eq!(firsts, (0..10).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(*runs.lock().unwrap(), vec![4, 4, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_growing() {
        let (b, _) = batcher(1, 0, 4, 300);
        let b = Arc::new(b);
        // The first job occupies the model for 300 ms; the next fill the queue.
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.embed(vec![0.0; 3], 1).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.embed(vec![0.0; 12], 4).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = b.embed(vec![0.0; 3], 1).await.unwrap_err();
        assert!(matches!(err, ApiError::Overloaded { .. }), "{err}");
        first.await.expect("join").expect("first");
        waiting.await.expect("join").expect("waiting");
    }
}
