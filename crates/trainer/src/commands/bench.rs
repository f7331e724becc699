//! `trainer bench`: images/s of the data pipeline alone, of training steps on views
//! prepared in advance (compute only), and end to end (workers feeding the steps).
//!
//! All three run in one process on the same decoded images, so the ratio
//! end-to-end / compute-only shows how much the data path costs the training loop.

use crate::commands::pretrain::load_data;
use crate::config::TrainConfig;
use crate::engine::augment::AugmentConfig;
use crate::engine::loader::{batches, epoch_order, make_batch, EpochLoader};
use crate::engine::session::{self, Session};
use crate::TrainError;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub batch: usize,
    pub image_size: u32,
    pub steps: usize,
    pub workers: usize,
    pub torch_threads: i32,
    /// Images decoded (and resized to the cache size) per second, all cores.
    pub decode_img_per_s: f64,
    /// Images (two views each) augmented per second by the worker threads, no training.
    pub pipeline_img_per_s: f64,
    /// Training images per second on views prepared in advance.
    pub compute_img_per_s: f64,
    /// Training images per second with the workers preparing views meanwhile.
    pub end_to_end_img_per_s: f64,
    /// end_to_end / compute.
    pub end_to_end_ratio: f64,
}

/// Measures the three throughputs over `steps` batches each (after one warm-up step).
pub fn run(cfg: &TrainConfig, steps: usize) -> Result<BenchReport, TrainError> {
    let device = session::device(cfg)?;
    let started = Instant::now();
    let data = load_data(cfg)?;
    let decode_img_per_s =
        (data.train.images.len() + data.test.images.len()) as f64 / started.elapsed().as_secs_f64();
    let bench = Bench::new(cfg, Arc::new(data.train.images), steps, device)?;
    log::info!(
        "benchmark: {steps} steps of batch {} at {}px ({} batches per epoch), {} augmentation worker(s)",
        cfg.optim.batch,
        cfg.data.image_size,
        bench.images.len() / cfg.optim.batch,
        bench.workers
    );
    let pipeline_img_per_s = bench.pipeline_only()?;
    log::info!("data pipeline: {pipeline_img_per_s:.1} img/s");
    let compute_img_per_s = bench.compute_only(device);
    log::info!("compute only: {compute_img_per_s:.1} img/s");
    let end_to_end_img_per_s = bench.end_to_end(device)?;
    log::info!("end to end: {end_to_end_img_per_s:.1} img/s");
    Ok(BenchReport {
        batch: cfg.optim.batch,
        image_size: cfg.data.image_size,
        steps,
        workers: bench.workers,
        torch_threads: tch::get_num_threads(),
        decode_img_per_s,
        pipeline_img_per_s,
        compute_img_per_s,
        end_to_end_img_per_s,
        end_to_end_ratio: end_to_end_img_per_s / compute_img_per_s,
    })
}

/// The three measurements over the same images and the same batches.
struct Bench<'c> {
    cfg: &'c TrainConfig,
    images: Arc<Vec<image::RgbImage>>,
    aug: Arc<AugmentConfig>,
    workers: usize,
    /// `steps + 1` batches (epoch, image indices) in training order: a warm-up, then the
    /// measured ones.
    plan: Vec<(usize, Vec<usize>)>,
}

impl<'c> Bench<'c> {
    fn new(
        cfg: &'c TrainConfig,
        images: Arc<Vec<image::RgbImage>>,
        steps: usize,
        device: tch::Device,
    ) -> Result<Self, TrainError> {
        let batch = cfg.optim.batch;
        if images.len() < batch {
            return Err(TrainError::TooFewImages {
                found: images.len(),
                batch,
            });
        }
        let seed = cfg.run.seed;
        let plan = (0..)
            .flat_map(|e| {
                batches(&epoch_order(images.len(), seed, e), batch)
                    .into_iter()
                    .map(move |b| (e, b))
            })
            .take(steps + 1)
            .collect();
        Ok(Self {
            cfg,
            aug: Arc::new(AugmentConfig::simsiam(
                cfg.data.image_size,
                cfg.augment.blur,
            )),
            workers: cfg.augment_workers(device),
            images,
            plan,
        })
    }

    /// Images per second of the measured steps, started at `t`.
    fn rate(&self, t: Instant) -> f64 {
        ((self.plan.len() - 1) * self.cfg.optim.batch) as f64 / t.elapsed().as_secs_f64()
    }

    fn loaders(
        &self,
    ) -> impl Iterator<Item = Result<crate::engine::loader::ViewBatch, TrainError>> + '_ {
        let (seed, prefetch) = (self.cfg.run.seed, self.cfg.data.prefetch);
        plan_loaders(
            &self.images,
            &self.plan[1..],
            &self.aug,
            seed,
            self.workers,
            prefetch,
        )
    }

    /// The worker threads making views, with no training.
    fn pipeline_only(&self) -> Result<f64, TrainError> {
        let t = Instant::now();
        let mut produced = 0;
        for b in self.loaders() {
            produced += b?.len;
        }
        Ok(produced as f64 / t.elapsed().as_secs_f64())
    }

    /// Training steps on views prepared in advance.
    fn compute_only(&self, device: tch::Device) -> f64 {
        let seed = self.cfg.run.seed;
        let prepared: Vec<_> = self
            .plan
            .iter()
            .map(|(e, b)| make_batch(&self.images, b, &self.aug, seed, *e))
            .collect();
        let lr = self.cfg.lr();
        let mut s = Session::new(self.cfg, device);
        s.step(&prepared[0], lr, lr); // warm-up: allocations, kernel selection
        let t = Instant::now();
        for b in &prepared[1..] {
            s.step(b, lr, lr);
        }
        self.rate(t)
    }

    /// A fresh model trained while the workers prepare its views.
    fn end_to_end(&self, device: tch::Device) -> Result<f64, TrainError> {
        let lr = self.cfg.lr();
        let mut s = Session::new(self.cfg, device);
        let (first_epoch, first) = &self.plan[0];
        let warm_up = make_batch(
            &self.images,
            first,
            &self.aug,
            self.cfg.run.seed,
            *first_epoch,
        );
        s.step(&warm_up, lr, lr);
        let t = Instant::now();
        for b in self.loaders() {
            s.step(&b?, lr, lr);
        }
        Ok(self.rate(t))
    }
}

/// Loaders over a plan that may span epochs: one loader per epoch segment, chained.
fn plan_loaders<'a>(
    images: &'a Arc<Vec<image::RgbImage>>,
    plan: &'a [(usize, Vec<usize>)],
    aug: &'a Arc<AugmentConfig>,
    seed: u64,
    workers: usize,
    prefetch: usize,
) -> impl Iterator<Item = Result<crate::engine::loader::ViewBatch, TrainError>> + 'a {
    plan.chunk_by(|a, b| a.0 == b.0).flat_map(move |seg| {
        let bs: Vec<Vec<usize>> = seg.iter().map(|(_, b)| b.clone()).collect();
        let loader = EpochLoader::spawn(
            images.clone(),
            bs,
            aug.clone(),
            seed,
            seg[0].0,
            workers,
            prefetch,
        );
        // A loader, or the error that kept it from starting.
        let (batches, failure) = match loader {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(TrainError::Spawn(e))),
        };
        batches
            .into_iter()
            .flatten()
            .map(Ok)
            .chain(failure.map(Err))
    })
}
