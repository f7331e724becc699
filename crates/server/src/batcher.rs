//! Dynamic batching: requests from many connections share model runs.
//!
//! A handler takes a [`Ticket`] as soon as its request arrives, reads and decodes the
//! images, then hands them with the ticket to [`Batcher::embed`] and awaits the answer.
//! Each inference thread owns one [`Encoder`]; it takes the first waiting job, then keeps
//! collecting jobs until `max_batch` images are gathered or `max_wait` has passed since it
//! took the first. When the queue was empty (light load) it also stops as soon as nothing
//! more is on its way: no ticketed request still being read or decoded once [`SETTLE`] has
//! passed. So a lone request runs at once, and under load runs fill up. It then runs the
//! model (in chunks of `max_batch`) and sends every job its rows. The queue is bounded in
//! images: a request that does not fit is refused at once with [`EmbedError::Overloaded`]
//! (503 + Retry-After) rather than growing memory without limit.

use crate::config::BatchingConfig;
use crate::encoder::Encoder;
use crate::health::{self, Health};
use crate::metrics::{Metrics, Stage};
use crate::pipeline::EmbedError;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Served, EmbedError>>;

/// A job's rows, with how long it waited for its run and how long that run took.
struct Served {
    rows: Vec<f32>,
    queue: Duration,
    inference: Duration,
}

/// How long a run waits, at least, before concluding that nothing more is on its way: the
/// time the clients of the run just answered need to send their next requests.
pub const SETTLE: Duration = Duration::from_millis(1);
/// How often a waiting run rereads the count of requests on their way.
const POLL: Duration = Duration::from_micros(250);

/// A request announced to the batcher while its images are read and decoded; the count
/// drops when they are queued or when the ticket is dropped (a bad image, a request without
/// images, a cancelled request).
pub struct Ticket {
    preparing: Arc<AtomicUsize>,
    /// Admitted even when the queue is full: the readiness canary, one image per probe.
    /// A server busy with clients' work must not look broken for it.
    exempt: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.preparing.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Job {
    images: Vec<f32>,
    n: usize,
    reply: Reply,
    queued: Instant,
}

pub struct Batcher {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    capacity: usize,
    dim: usize,
    /// Requests holding a [`Ticket`].
    preparing: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts one inference thread per encoder; fails only when the system refuses a
    /// thread.
    pub fn start(
        encoders: Vec<Box<dyn Encoder>>,
        cfg: &BatchingConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> std::io::Result<Self> {
        let dim = encoders.first().map_or(0, |e| e.dim());
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.queue_capacity);
        let preparing = Arc::new(AtomicUsize::new(0));
        let threads = encoders
            .into_iter()
            .enumerate()
            .map(|(i, encoder)| {
                let queue = Queue {
                    rx: rx.clone(),
                    preparing: preparing.clone(),
                    max_batch: cfg.max_batch,
                    max_wait: Duration::from_millis(cfg.max_wait_ms),
                };
                let (metrics, health) = (metrics.clone(), health.clone());
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || worker(encoder, queue, metrics, health))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            tx: Some(tx),
            threads,
            metrics,
            capacity: cfg.queue_capacity,
            dim,
            preparing,
        })
    }

    /// Announces a request that may bring images, so that a run about to start waits for
    /// it (up to `max_wait`). Take it when the request arrives; [`Self::embed`] redeems it.
    pub fn ticket(&self) -> Ticket {
        self.preparing.fetch_add(1, Ordering::SeqCst);
        Ticket {
            preparing: self.preparing.clone(),
            exempt: false,
        }
    }

    /// The ticket of the readiness canary: admitted past a full queue (see [`Ticket`]).
    pub fn canary_ticket(&self) -> Ticket {
        let mut t = self.ticket();
        t.exempt = true;
        t
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds `n` preprocessed images (CHW tensors back to back) of the ticket's request;
    /// `n × dim` values back.
    pub async fn embed(
        &self,
        images: Vec<f32>,
        n: usize,
        ticket: Ticket,
    ) -> Result<Vec<f32>, EmbedError> {
        // Queued or refused, the images are no longer on their way.
        let exempt = ticket.exempt;
        drop(ticket);
        if n == 0 {
            return Ok(Vec::new());
        }
        let tx = self.tx.as_ref().ok_or(EmbedError::ShuttingDown)?;
        // Reserve room for n images; undo and refuse when the queue would overflow.
        let before = self.metrics.queue_depth.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity && !exempt {
            self.metrics.queue_depth.fetch_sub(n, Ordering::SeqCst);
            return Err(EmbedError::Overloaded { queued: before });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            images,
            n,
            reply,
            queued: Instant::now(),
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_depth.fetch_sub(n, Ordering::SeqCst);
                return Err(EmbedError::Overloaded { queued: before });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.fetch_sub(n, Ordering::SeqCst);
                return Err(EmbedError::ShuttingDown);
            }
        }
        let served = answer.await.map_err(|_| {
            EmbedError::WorkerLost("an inference thread stopped mid-request".into())
        })??;
        crate::timing::add(|t| {
            t.queue += served.queue;
            t.inference += served.inference;
        });
        Ok(served.rows)
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

/// An inference thread's side of the queue.
struct Queue {
    rx: Receiver<Job>,
    preparing: Arc<AtomicUsize>,
    max_batch: usize,
    max_wait: Duration,
}

impl Queue {
    /// The jobs of the next run and their image count; `None` once every sender is gone
    /// and the queue is empty.
    fn next_run(&self) -> Option<(Vec<Job>, usize)> {
        // A job already waiting means a backlog: the run waits out `max_wait` to fill up.
        // Otherwise load is light and it starts as soon as nothing more is on its way.
        let (first, backlog) = match self.rx.try_recv() {
            Ok(job) => (job, true),
            Err(TryRecvError::Empty) => (self.rx.recv().ok()?, false),
            Err(TryRecvError::Disconnected) => return None,
        };
        let start = Instant::now();
        let (deadline, settle) = (start + self.max_wait, start + SETTLE.min(self.max_wait));
        let mut total = first.n;
        let mut jobs = vec![first];
        while total < self.max_batch {
            if let Ok(job) = self.rx.try_recv() {
                total += job.n;
                jobs.push(job);
                continue;
            }
            let now = Instant::now();
            let nothing_coming =
                !backlog && now >= settle && self.preparing.load(Ordering::SeqCst) == 0;
            if now >= deadline || nothing_coming {
                break;
            }
            let until = if backlog {
                deadline
            } else {
                deadline.min(settle.max(now + POLL))
            };
            match self.rx.recv_deadline(until) {
                Ok(job) => {
                    total += job.n;
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Shutting down: run what there is.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        log::debug!(
            "run of {total} images from {} requests after {:.1} ms ({})",
            jobs.len(),
            start.elapsed().as_secs_f64() * 1e3,
            if backlog { "backlog" } else { "idle" }
        );
        Some((jobs, total))
    }
}

fn worker(mut encoder: Box<dyn Encoder>, queue: Queue, metrics: Arc<Metrics>, health: Arc<Health>) {
    while let Some((jobs, total)) = queue.next_run() {
        metrics.queue_depth.fetch_sub(total, Ordering::SeqCst);
        let run = Run {
            max_batch: queue.max_batch,
            metrics: &metrics,
            health: &health,
        };
        run.batch(encoder.as_mut(), jobs, total);
    }
}

/// What a model run reports to.
struct Run<'a> {
    max_batch: usize,
    metrics: &'a Metrics,
    health: &'a Health,
}

impl Run<'_> {
    /// One model run over the jobs' images (in chunks of `max_batch`), rows sent back per
    /// job. A run fails as a whole when the model errs or returns anything but finite unit
    /// vectors; either way [`Health`] learns the outcome.
    fn batch(&self, encoder: &mut dyn Encoder, jobs: Vec<Job>, total: usize) {
        let started = Instant::now();
        let per_image = jobs[0].images.len() / jobs[0].n.max(1);
        let dim = encoder.dim();
        let mut input = Vec::with_capacity(total * per_image);
        for job in &jobs {
            input.extend_from_slice(&job.images);
        }
        let mut output = Vec::with_capacity(total * dim);
        let mut failure = None;
        for start in (0..total).step_by(self.max_batch) {
            let n = self.max_batch.min(total - start);
            let t = Instant::now();
            let chunk = &input[start * per_image..(start + n) * per_image];
            match encoder.embed(chunk, n) {
                Ok(rows) if health::rows_are_unit_vectors(&rows, dim) => {
                    output.extend_from_slice(&rows)
                }
                Ok(_) => {
                    failure = Some(
                        "the model returned embeddings that are not finite unit vectors".into(),
                    );
                    break;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
            self.metrics.record_stage(Stage::Inference, t.elapsed());
            self.metrics.record_batch(n);
        }
        match &failure {
            Some(message) => {
                log::error!("model run of {total} images failed: {message}");
                self.health.run_failed(message);
            }
            None => self.health.run_succeeded(),
        }
        let inference = started.elapsed();
        let mut offset = 0;
        for job in jobs {
            let result = match &failure {
                Some(message) => Err(EmbedError::Model(message.clone())),
                None => Ok(Served {
                    rows: output[offset * dim..(offset + job.n) * dim].to_vec(),
                    queue: started.saturating_duration_since(job.queued),
                    inference,
                }),
            };
            offset += job.n;
            // The requester may have gone (timeout, disconnect): nothing to do then.
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simsiam::runtime::RuntimeError;
    use std::sync::Mutex;

    /// Returns, for each image, the unit vector `[v/100, √(1 − (v/100)²)]` of its first
    /// value `v` (so [`first`] reads `v` back), and records batch sizes. Images whose first
    /// value is negative make the whole run fail, as a broken model would.
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
            let firsts: Vec<f32> = (0..n).map(|i| images[i * self.per_image]).collect();
            if firsts.iter().any(|v| *v < 0.0) {
                return Err(RuntimeError::NoOutput);
            }
            Ok(firsts
                .iter()
                .flat_map(|v| [v / 100.0, (1.0 - (v / 100.0).powi(2)).sqrt()])
                .collect())
        }
    }

    /// The value each row of `rows` encodes (see [`Echo`]).
    fn first(rows: &[f32]) -> Vec<f32> {
        rows.chunks(2).map(|r| (r[0] * 100.0).round()).collect()
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
            Batcher::start(
                vec![Box::new(echo)],
                &cfg,
                Arc::new(Metrics::default()),
                Arc::new(Health::default()),
            )
            .expect("start"),
            runs,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_run_waits_for_announced_images_and_each_gets_its_own_rows() {
        let (b, runs) = batcher(8, 2000, 64, 0);
        let b = Arc::new(b);
        // Six requests announce their images at once, then finish decoding 10 ms apart.
        let tickets: Vec<Ticket> = (0..6).map(|_| b.ticket()).collect();
        let mut handles = Vec::new();
        for (r, ticket) in tickets.into_iter().enumerate() {
            let b = b.clone();
            handles.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * r as u64)).await;
                b.embed(vec![r as f32; 3], 1, ticket).await
            }));
        }
        for (r, h) in handles.into_iter().enumerate() {
            let rows = h.await.expect("join").expect("embed");
            assert_eq!(first(&rows), [r as f32]);
        }
        assert_eq!(*runs.lock().unwrap(), vec![6], "one run for all six");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_nothing_on_its_way_a_run_starts_without_waiting_out_max_wait() {
        let (b, runs) = batcher(8, 5000, 64, 0);
        // Let the thread go idle first (see below).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let start = Instant::now();
        b.embed(vec![1.0; 3], 1, b.ticket()).await.expect("lone");
        // A request whose decoding fails drops its ticket: the run stops waiting for it.
        let doomed = b.ticket();
        let waiting = b.ticket();
        let b = Arc::new(b);
        let h = {
            let b = b.clone();
            tokio::spawn(async move {
                // Arrive once the thread is idle again: a job already queued when a run ends
                // counts as a backlog, which waits out max_wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.embed(vec![2.0; 3], 1, waiting).await
            })
        };
        tokio::time::sleep(Duration::from_millis(80)).await;
        drop(doomed);
        h.await.expect("join").expect("second");
        // max_wait is 5 s; both answers came far sooner.
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(*runs.lock().unwrap(), vec![1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_request_is_split_into_max_batch_chunks() {
        let (b, runs) = batcher(4, 1, 64, 0);
        let images: Vec<f32> = (0..10).flat_map(|i| vec![i as f32; 3]).collect();
        let rows = b.embed(images, 10, b.ticket()).await.expect("embed");
        assert_eq!(first(&rows), (0..10).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(*runs.lock().unwrap(), vec![4, 4, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_growing() {
        let (b, _) = batcher(1, 0, 4, 300);
        let b = Arc::new(b);
        // The first job occupies the model for 300 ms; the next fill the queue.
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.embed(vec![0.0; 3], 1, b.ticket()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.embed(vec![0.0; 12], 4, b.ticket()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = b.embed(vec![0.0; 3], 1, b.ticket()).await.unwrap_err();
        assert!(matches!(err, EmbedError::Overloaded { .. }), "{err}");
        // Readiness's canary still gets through: a busy server is not a broken one.
        let canary = b.embed(vec![0.0; 3], 1, b.canary_ticket()).await;
        assert_eq!(canary.expect("the canary is admitted").len(), 2);
        first.await.expect("join").expect("first");
        waiting.await.expect("join").expect("waiting");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_run_fails_its_requests_and_is_known_to_readiness() {
        let health = Arc::new(Health::default());
        let echo = Echo {
            dim: 2,
            per_image: 3,
            runs: Arc::new(Mutex::new(Vec::new())),
            delay: Duration::ZERO,
        };
        let cfg = BatchingConfig {
            max_batch: 8,
            max_wait_ms: 1,
            queue_capacity: 64,
        };
        let b = Batcher::start(
            vec![Box::new(echo)],
            &cfg,
            Arc::new(Metrics::default()),
            health.clone(),
        )
        .expect("start");
        let err = b.embed(vec![-1.0; 3], 1, b.ticket()).await.unwrap_err();
        assert!(matches!(err, EmbedError::Model(_)), "{err}");
        assert!(matches!(
            health.model(),
            crate::health::ModelState::Failed(_)
        ));
        b.embed(vec![3.0; 3], 1, b.ticket())
            .await
            .expect("a good run");
        assert_eq!(health.model(), crate::health::ModelState::Serving);
    }
}
