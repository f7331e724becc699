//! Fitting the linear probe: multinomial logistic regression on frozen features, by
//! full-batch Adam with an explicit L2 penalty, the weight decay and the number of epochs
//! chosen on a validation slice held out of the training split.
//!
//! Full-batch optimisation of a convex loss is deterministic and, on cached features, cheap
//! (a 12,000 × 512 → 120 pass is one matrix product), so no mini-batching or lr tuning
//! is needed, unlike SGD on SimSiam features, which trains slowly at small lr.

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use simsiam::probe::LinearProbe;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct ProbeFitConfig {
    /// Candidate L2 penalties.
    pub weight_decays: Vec<f64>,
    /// Full-batch epochs at most; the best epoch count is chosen on validation.
    pub max_epochs: usize,
    /// Validation accuracy is checked every this many epochs.
    pub eval_every: usize,
    /// Fraction of each class of the training split held out for validation.
    pub val_fraction: f64,
    pub lr: f64,
    pub seed: u64,
}

impl Default for ProbeFitConfig {
    fn default() -> Self {
        Self {
            weight_decays: vec![0.0, 1e-4, 1e-3, 1e-2, 1e-1],
            max_epochs: 300,
            eval_every: 10,
            val_fraction: 0.1,
            lr: 0.01,
            seed: 0,
        }
    }
}

/// What model selection found.
#[derive(Clone, Debug)]
pub struct ProbeFit {
    pub probe: LinearProbe,
    pub val_top1: f64,
}

/// Standardised inputs on the device: l2-normalise rows, then `(x − mean) / std`.
fn prepare(x: &[f32], dim: usize, mean: &Tensor, std: &Tensor, device: Device) -> Tensor {
    let t = Tensor::from_slice(x)
        .view([-1, dim as i64])
        .to_device(device);
    let t = &t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    (t - mean) / std
}

fn labels(y: &[usize], device: Device) -> Tensor {
    Tensor::from_slice(&y.iter().map(|&v| v as i64).collect::<Vec<_>>()).to_device(device)
}

fn accuracy(w: &Tensor, b: &Tensor, x: &Tensor, y: &Tensor) -> f64 {
    tch::no_grad(|| {
        (x.matmul(&w.tr()) + b)
            .argmax(1, false)
            .eq_tensor(y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    })
}

/// Trains for `epochs` with L2 penalty `wd`, calling `check(epoch, w, b)` every
/// `cfg.eval_every` epochs.
fn train(
    x: &Tensor,
    y: &Tensor,
    classes: usize,
    wd: f64,
    epochs: usize,
    cfg: &ProbeFitConfig,
    mut check: impl FnMut(usize, &Tensor, &Tensor),
) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(x.device());
    let dim = x.size()[1];
    let w = vs.root().zeros("weight", &[classes as i64, dim]);
    let b = vs.root().zeros("bias", &[classes as i64]);
    let mut opt = nn::Adam::default()
        .build(&vs, cfg.lr)
        .expect("adam on a fresh var store");
    for epoch in 1..=epochs {
        let logits = x.matmul(&w.tr()) + &b;
        let loss = logits.cross_entropy_for_logits(y) + w.square().sum(Kind::Float) * (0.5 * wd);
        opt.backward_step(&loss);
        if epoch % cfg.eval_every == 0 || epoch == epochs {
            check(epoch, &w, &b);
        }
    }
    (w.detach(), b.detach())
}

/// Fits a probe on `(x, y)` (`x`: rows of `dim` floats), choosing weight decay and epochs
/// on a stratified validation slice, then refitting on the whole training split.
pub fn fit(
    x: &[f32],
    y: &[usize],
    dim: usize,
    classes: &[String],
    cfg: &ProbeFitConfig,
    device: Device,
) -> ProbeFit {
    let bar = ProgressBar::new((cfg.weight_decays.len() * cfg.max_epochs + cfg.max_epochs) as u64)
        .with_message("linear probe");
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} epochs ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let data = Features { x, y, dim, device };
    let (val_top1, wd, epochs) = select(&data, classes.len(), cfg, &bar);
    log::info!(
        "probe: weight decay {wd}, {epochs} epochs (validation top-1 {:.2}%)",
        val_top1 * 100.0
    );
    // Refit on the whole training split with the chosen settings.
    let (mean, std) = data.stats(x);
    let (xa, ya) = (prepare(x, dim, &mean, &std, device), labels(y, device));
    let (w, b) = train(&xa, &ya, classes.len(), wd, epochs, cfg, |_, _, _| {
        bar.inc(cfg.eval_every as u64)
    });
    bar.finish_and_clear();
    let to_vec = |t: &Tensor| {
        Vec::<f32>::try_from(&t.to_device(Device::Cpu).contiguous().view([-1])).expect("f32 tensor")
    };
    let probe = LinearProbe {
        classes: classes.to_vec(),
        feature_dim: dim,
        mean: to_vec(&mean),
        std: to_vec(&std),
        weight: to_vec(&w),
        bias: to_vec(&b),
        weight_decay: wd,
        epochs,
    };
    ProbeFit { probe, val_top1 }
}

/// Training features and labels, and the device the probe trains on.
struct Features<'a> {
    x: &'a [f32],
    y: &'a [usize],
    dim: usize,
    device: Device,
}

impl Features<'_> {
    /// The rows at `idx`, back to back.
    fn rows(&self, idx: &[usize]) -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| self.x[i * self.dim..(i + 1) * self.dim].iter().copied())
            .collect()
    }

    fn labels_at(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().map(|&i| self.y[i]).collect()
    }

    /// Per-dimension mean and std of the l2-normalised rows of `data`: the probe's
    /// standardisation.
    fn stats(&self, data: &[f32]) -> (Tensor, Tensor) {
        let t = Tensor::from_slice(data)
            .view([-1, self.dim as i64])
            .to_device(self.device);
        let t = &t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let mean = t.mean_dim(Some([0i64].as_slice()), true, Kind::Float);
        let std = t
            .std_dim(Some([0i64].as_slice()), false, true)
            .clamp_min(1e-6);
        (mean, std)
    }
}

/// Indices of a stratified split: `fraction` of each class (keeping at least one image
/// for fitting) goes to validation. Returns (fit, validation).
fn stratified_split(
    y: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut fit_idx, mut val_idx) = (Vec::new(), Vec::new());
    for class in 0..classes {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        idx.shuffle(&mut rng);
        let n_val =
            ((idx.len() as f64 * fraction).round() as usize).min(idx.len().saturating_sub(1));
        val_idx.extend_from_slice(&idx[..n_val]);
        fit_idx.extend_from_slice(&idx[n_val..]);
    }
    (fit_idx, val_idx)
}

/// Model selection: every weight decay trained on the fitting slice, scored on the
/// validation slice every `eval_every` epochs. Returns (best top-1, weight decay, epochs).
fn select(
    data: &Features,
    classes: usize,
    cfg: &ProbeFitConfig,
    bar: &ProgressBar,
) -> (f64, f64, usize) {
    let (fit_idx, val_idx) = stratified_split(data.y, classes, cfg.val_fraction, cfg.seed);
    let (mean, std) = data.stats(&data.rows(&fit_idx));
    let prepared = |idx: &[usize]| {
        (
            prepare(&data.rows(idx), data.dim, &mean, &std, data.device),
            labels(&data.labels_at(idx), data.device),
        )
    };
    let ((xf, yf), (xv, yv)) = (prepared(&fit_idx), prepared(&val_idx));
    let mut best = (f64::NEG_INFINITY, 0.0, cfg.max_epochs);
    for &wd in &cfg.weight_decays {
        let _ = train(&xf, &yf, classes, wd, cfg.max_epochs, cfg, |epoch, w, b| {
            let acc = if val_idx.is_empty() {
                0.0
            } else {
                accuracy(w, b, &xv, &yv)
            };
            if acc > best.0 {
                best = (acc, wd, epoch);
            }
            bar.inc(cfg.eval_every as u64);
        });
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_features_are_learned_perfectly() {
        // 4 classes, 16-d features: class k is a noisy copy of a random prototype.
        let (classes, dim, per) = (4, 16, 40);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        use rand::Rng;
        let protos: Vec<Vec<f32>> = (0..classes)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (k, p) in protos.iter().enumerate() {
            for _ in 0..per {
                x.extend(p.iter().map(|v| v + rng.random_range(-0.1..0.1)));
                y.push(k);
            }
        }
        let names: Vec<String> = (0..classes).map(|k| format!("c{k}")).collect();
        let cfg = ProbeFitConfig {
            max_epochs: 100,
            ..Default::default()
        };
        let fit = fit(&x, &y, dim, &names, &cfg, Device::Cpu);
        assert!(fit.val_top1 > 0.99, "validation {}", fit.val_top1);
        let correct = x
            .chunks(dim)
            .zip(&y)
            .filter(|(f, &label)| fit.probe.top_k(f, 1).expect("dims")[0].0 == label)
            .count();
        assert_eq!(
            correct,
            y.len(),
            "training points classified by the saved probe"
        );
        fit.probe.validate().expect("consistent probe");
    }
}
