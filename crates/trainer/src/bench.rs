//! `trainer bench`: images/s of the data pipeline alone, of training steps on views
//! prepared in advance (compute only), and end to end (workers feeding the steps).
//!
//! All three run in one process on the same decoded images, so the ratio
//! end-to-end / compute-only shows how much the data path costs the training loop.

use crate::augment::AugmentConfig;
use crate::config::TrainConfig;
use crate::loader::{batches, epoch_order, make_batch, EpochLoader};
use crate::pretrain::load_data;
use crate::session::{self, Session};
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
    let batch = cfg.optim.batch;
    let images = Arc::new(data.train.images);
    if images.len() < batch {
        return Err(TrainError::TooFewImages {
            found: images.len(),
            batch,
        });
    }
    let aug = Arc::new(AugmentConfig::simsiam(
        cfg.data.image_size,
        cfg.augment.blur,
    ));
    let workers = cfg.augment_workers();
    let seed = cfg.run.seed;
    // Enough epochs of batches for `steps + 1` steps, in training order.
    let per_epoch = images.len() / batch;
    let plan: Vec<(usize, Vec<usize>)> = (0..)
        .flat_map(|e| {
            batches(&epoch_order(images.len(), seed, e), batch)
                .into_iter()
                .map(move |b| (e, b))
        })
        .take(steps + 1)
        .collect();
    log::info!("benchmark: {steps} steps of batch {batch} at {}px ({per_epoch} batches per epoch), {workers} augmentation worker(s)", cfg.data.image_size);

    // 1. Data pipeline alone.
    let t = Instant::now();
    let produced: usize = plan_loaders(&images, &plan[1..], &aug, seed, workers, cfg.data.prefetch)
        .map(|b| b.len)
        .sum();
    let pipeline_img_per_s = produced as f64 / t.elapsed().as_secs_f64();
    log::info!("data pipeline: {pipeline_img_per_s:.1} img/s");

    // 2. Compute only: views prepared in advance.
    let prepared: Vec<_> = plan
        .iter()
        .map(|(e, b)| make_batch(&images, b, &aug, seed, *e))
        .collect();
    let lr = cfg.lr();
    let mut s = Session::new(cfg, device);
    s.step(&prepared[0], lr, lr); // warm-up: allocations, kernel selection
    let t = Instant::now();
    for b in &prepared[1..] {
        s.step(b, lr, lr);
    }
    let compute_img_per_s = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    log::info!("compute only: {compute_img_per_s:.1} img/s");
    drop(prepared);

    // 3. End to end: a fresh model, workers preparing views while it trains.
    let mut s = Session::new(cfg, device);
    let (first_epoch, first) = &plan[0];
    s.step(
        &make_batch(&images, first, &aug, seed, *first_epoch),
        lr,
        lr,
    );
    let t = Instant::now();
    for b in plan_loaders(&images, &plan[1..], &aug, seed, workers, cfg.data.prefetch) {
        s.step(&b, lr, lr);
    }
    let end_to_end_img_per_s = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    log::info!("end to end: {end_to_end_img_per_s:.1} img/s");

    Ok(BenchReport {
        batch,
        image_size: cfg.data.image_size,
        steps,
        workers,
        torch_threads: tch::get_num_threads(),
        decode_img_per_s,
        pipeline_img_per_s,
        compute_img_per_s,
        end_to_end_img_per_s,
        end_to_end_ratio: end_to_end_img_per_s / compute_img_per_s,
    })
}

/// Loaders over a plan that may span epochs: one loader per epoch segment, chained.
fn plan_loaders<'a>(
    images: &'a Arc<Vec<image::RgbImage>>,
    plan: &'a [(usize, Vec<usize>)],
    aug: &'a Arc<AugmentConfig>,
    seed: u64,
    workers: usize,
    prefetch: usize,
) -> impl Iterator<Item = crate::loader::ViewBatch> + 'a {
    plan.chunk_by(|a, b| a.0 == b.0).flat_map(move |seg| {
        let bs: Vec<Vec<usize>> = seg.iter().map(|(_, b)| b.clone()).collect();
        EpochLoader::spawn(
            images.clone(),
            bs,
            aug.clone(),
            seed,
            seg[0].0,
            workers,
            prefetch,
        )
    })
}
