//! Batches of two augmented views, prepared on worker threads ahead of the training step.
//!
//! Images are decoded once per run and kept in memory (at the reduced cache size); every
//! epoch only crops and colours them. Worker `w` prepares batches `w, w + W, ...` into its
//! own bounded channel and the consumer reads the channels in turn, so batches arrive in
//! order, at most `prefetch` are held in memory, and compute never waits while workers
//! keep up. Views depend only on (seed, epoch, image index), never on thread timing.

use crate::engine::augment::{self, AugmentConfig};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Two views of `len` images, each `len × 3 × size × size` f32 in CHW order.
pub struct ViewBatch {
    pub x1: Vec<f32>,
    pub x2: Vec<f32>,
    pub len: usize,
}

/// The shuffled order of `n` images in `epoch` (0-based), from the run seed alone.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ 0x5eed_0000_0000 ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

/// Splits an order into full batches; the last partial batch is dropped, as batch norm
/// and the reference implementation (`drop_last=True`) expect.
pub fn batches(order: &[usize], batch: usize) -> Vec<Vec<usize>> {
    order.chunks_exact(batch).map(<[usize]>::to_vec).collect()
}

/// Augments two views of each listed image.
pub fn make_batch(
    images: &[RgbImage],
    indices: &[usize],
    aug: &AugmentConfig,
    seed: u64,
    epoch: usize,
) -> ViewBatch {
    let per = 3 * (aug.size as usize).pow(2);
    let mut x1 = vec![0.0f32; per * indices.len()];
    let mut x2 = vec![0.0f32; per * indices.len()];
    for (j, &i) in indices.iter().enumerate() {
        for (v, buf) in [&mut x1, &mut x2].into_iter().enumerate() {
            let mut rng = augment::view_rng(seed, epoch as u64, i as u64, v as u32);
            augment::view(&images[i], aug, &mut rng, &mut buf[j * per..(j + 1) * per]);
        }
    }
    ViewBatch {
        x1,
        x2,
        len: indices.len(),
    }
}

/// Iterator over one epoch's batches (two-view batches unless another `B` is made),
/// fed by worker threads.
pub struct EpochLoader<B = ViewBatch> {
    receivers: Vec<Receiver<B>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

/// What a worker runs on each batch's image indices.
pub type MakeBatch<B> = Arc<dyn Fn(&[usize]) -> B + Send + Sync>;

impl EpochLoader<ViewBatch> {
    /// SimSiam's loader: two augmented views of every image of each batch.
    pub fn spawn(
        images: Arc<Vec<RgbImage>>,
        batches: Vec<Vec<usize>>,
        aug: Arc<AugmentConfig>,
        seed: u64,
        epoch: usize,
        workers: usize,
        prefetch: usize,
    ) -> std::io::Result<Self> {
        let make: MakeBatch<ViewBatch> =
            Arc::new(move |b: &[usize]| make_batch(&images, b, &aug, seed, epoch));
        Self::spawn_with(batches, make, workers, prefetch)
    }
}

impl<B: Send + 'static> EpochLoader<B> {
    /// `workers` threads run `make` on the listed batches, at most `prefetch` ahead.
    pub fn spawn_with(
        batches: Vec<Vec<usize>>,
        make: MakeBatch<B>,
        workers: usize,
        prefetch: usize,
    ) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let per_worker = prefetch.div_ceil(workers).max(1);
        let total = batches.len();
        let batches = Arc::new(batches);
        let (receivers, handles) = (0..workers)
            .map(|w| {
                let (tx, rx) = sync_channel(per_worker);
                let (batches, make) = (batches.clone(), make.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("augment-{w}"))
                    .spawn(move || {
                        for b in batches.iter().skip(w).step_by(workers) {
                            if tx.send(make(b)).is_err() {
                                return; // consumer stopped early
                            }
                        }
                    })?;
                Ok((rx, handle))
            })
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok(Self {
            receivers,
            workers: handles,
            next: 0,
            total,
        })
    }

    /// Batches this epoch yields in all.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl<B> Iterator for EpochLoader<B> {
    type Item = B;

    fn next(&mut self) -> Option<B> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        rx.recv().ok()
    }
}

impl<B> Drop for EpochLoader<B> {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> Arc<Vec<RgbImage>> {
        Arc::new(
            (0..n)
                .map(|i| {
                    RgbImage::from_fn(20, 24, |x, y| {
                        image::Rgb([(x * 9) as u8, (y * 7 + i as u32) as u8, (i * 30) as u8])
                    })
                })
                .collect(),
        )
    }

    #[test]
    fn batches_arrive_in_order_whatever_the_worker_count() {
        let imgs = images(10);
        let aug = Arc::new(AugmentConfig::simsiam(16, false));
        let order = epoch_order(10, 3, 1);
        let bs = batches(&order, 3);
        assert_eq!(bs.len(), 3, "partial last batch dropped");
        let one: Vec<_> = EpochLoader::spawn(imgs.clone(), bs.clone(), aug.clone(), 3, 1, 1, 2)
            .expect("spawn")
            .map(|b| b.x1)
            .collect();
        let three: Vec<_> = EpochLoader::spawn(imgs.clone(), bs.clone(), aug.clone(), 3, 1, 3, 2)
            .expect("spawn")
            .map(|b| b.x1)
            .collect();
        assert_eq!(one.len(), 3);
        assert_eq!(one, three);
        assert_eq!(one[0].len(), 3 * 3 * 16 * 16);
        let direct = make_batch(&imgs, &bs[2], &aug, 3, 1);
        assert_eq!(direct.x1, one[2]);
        assert_ne!(direct.x1, direct.x2, "two views differ");
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(50, 1, 2), epoch_order(50, 1, 2));
        assert_ne!(epoch_order(50, 1, 2), epoch_order(50, 1, 3));
        assert_ne!(epoch_order(50, 1, 2), epoch_order(50, 2, 2));
        let mut o = epoch_order(50, 1, 2);
        o.sort_unstable();
        assert_eq!(o, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_early_stops_the_workers() {
        let imgs = images(40);
        let aug = Arc::new(AugmentConfig::simsiam(16, false));
        let mut l = EpochLoader::spawn(imgs, batches(&epoch_order(40, 0, 0), 2), aug, 0, 0, 2, 2)
            .expect("spawn");
        assert!(l.next().is_some());
        drop(l); // must not hang
    }
}
