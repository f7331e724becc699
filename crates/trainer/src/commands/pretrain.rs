//! `trainer pretrain`: SimSiam on a dataset, with monitoring, checkpoints and resume.
//!
//! Writes into the run directory: `config.json` (the resolved configuration),
//! `metrics.jsonl` (one line per epoch), `training.png` (loss, std, kNN curves),
//! `checkpoint-last.*` every epoch and `checkpoint-best.*` at the best kNN top-1.

use crate::config::TrainConfig;
use crate::engine::augment::AugmentConfig;
use crate::engine::checkpoint::{self, CheckpointMeta, BEST, LAST};
use crate::engine::data::{self, DecodedImages};
use crate::engine::history::{self, EpochMetrics, MetricsWriter};
use crate::engine::knn;
use crate::engine::loader::{batches, epoch_order, EpochLoader};
use crate::engine::loss::healthy_std;
use crate::engine::schedule::lr_at;
use crate::engine::session::{self, Session};
use crate::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use simsiam::preprocess::EvalTransform;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of one invocation that are not part of the run's configuration.
#[derive(Clone, Debug, Default)]
pub struct PretrainOptions {
    /// Continue from `checkpoint-last` in the run directory.
    pub resume: bool,
    /// Stop after this many epochs of this invocation (resume later with `--resume`).
    pub stop_after: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct PretrainSummary {
    pub out: PathBuf,
    pub epochs_done: usize,
    pub loss: f64,
    pub z_std: f64,
    pub knn_top1: Option<f64>,
    pub best_knn_top1: Option<f64>,
    pub img_per_s: f64,
    pub collapse_alarm: bool,
}

/// The decoded training and evaluation images of a run.
pub struct RunData {
    pub classes: Vec<String>,
    pub train: DecodedImages,
    pub test: DecodedImages,
}

/// Opens the dataset of `cfg` and decodes both splits once, at the cache size.
pub fn load_data(cfg: &TrainConfig) -> Result<RunData, TrainError> {
    let root = cfg.data.root.as_deref().ok_or(TrainError::NoDataRoot)?;
    let opts = cfg.dataset_options();
    let ds = data::open(root, &opts)?;
    log::info!(
        "dataset {} ({:?}): {} classes, {} train, {} test images",
        root.display(),
        ds.layout,
        ds.classes.len(),
        ds.train.len(),
        ds.test.len()
    );
    let side = Some(cfg.cache_side());
    let train = data::decode_samples(&ds.train, side, "decode train");
    let test = data::decode_samples(&ds.test, side, "decode test");
    Ok(RunData {
        classes: ds.classes,
        train,
        test,
    })
}

/// The evaluation transform of a run: images are cached at the resize side already.
pub fn eval_transform(cfg: &TrainConfig) -> EvalTransform {
    EvalTransform {
        resize: cfg.cache_side(),
        ..EvalTransform::for_crop(cfg.data.image_size)
    }
}

/// Weighted-kNN top-1 of the session's backbone: the training images `bank` (whose labels
/// are `data.train.labels`) as the bank, the test split as queries.
pub fn knn_monitor(
    session: &Session,
    cfg: &TrainConfig,
    bank: &[image::RgbImage],
    data: &RunData,
) -> Result<f64, TrainError> {
    let t = eval_transform(cfg);
    let batch = cfg.optim.batch.max(64);
    let bank = session.features(bank, &t, batch, "kNN bank")?;
    let queries = session.features(&data.test.images, &t, batch, "kNN queries")?;
    let dim = session.model.backbone.feature_dim as usize;
    let acc = knn::knn_accuracy(
        &bank,
        &data.train.labels,
        &queries,
        &data.test.labels,
        dim,
        data.classes.len(),
        cfg.monitor.knn_k,
        cfg.monitor.knn_temperature as f32,
    );
    Ok(acc.top1)
}

pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(TrainError::json(path))?;
    std::fs::write(path, text).map_err(TrainError::io(path))
}

pub(crate) fn epoch_bar(epoch: usize, epochs: usize, len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let style =
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

/// Runs (or resumes) SimSiam pretraining as configured.
pub fn pretrain(cfg: &TrainConfig, opts: &PretrainOptions) -> Result<PretrainSummary, TrainError> {
    let mut run = Run::start(cfg, opts)?;
    let mut last = None;
    for epoch in run.start..run.stop_at {
        let means = run.train_epoch(epoch)?;
        let m = run.record_epoch(epoch, means)?;
        if m.collapse_alarm && cfg.monitor.stop_on_collapse {
            return Err(TrainError::Collapsed {
                epoch: m.epoch,
                std: m.z_std,
                rank: m.z_rank,
            });
        }
        last = Some(m);
    }
    Ok(run.summary(last))
}

/// The state of a pretraining run between epochs.
struct Run<'c> {
    cfg: &'c TrainConfig,
    out: PathBuf,
    session: Session,
    /// Classes and the test split; the training images live in `images`.
    data: RunData,
    /// Shared by the augmentation workers and the kNN bank: decoded once, never copied.
    images: Arc<Vec<image::RgbImage>>,
    aug: Arc<AugmentConfig>,
    history: Vec<EpochMetrics>,
    writer: MetricsWriter,
    /// First epoch of this invocation, and the epoch it stops before.
    start: usize,
    stop_at: usize,
    step: usize,
    best: Option<f64>,
    /// The device and its name, recorded in checkpoints and, from there, bundles.
    device: String,
}

/// Means over an epoch's steps.
struct EpochMeans {
    /// Share of the epoch's wall time spent waiting for the next batch of views.
    data_wait: f64,
    loss: f64,
    z_std: f64,
    z_rank: f64,
    lr: f64,
    img_per_s: f64,
    seconds: f64,
}

impl<'c> Run<'c> {
    /// Creates the run directory, decodes the data, builds the model and, with `--resume`,
    /// restores the last checkpoint and truncates the history to it.
    fn start(cfg: &'c TrainConfig, opts: &PretrainOptions) -> Result<Self, TrainError> {
        let device = session::device(cfg)?;
        let device_name = session::device_name(device);
        log::info!(
            "device {device_name}, {} libtorch threads",
            tch::get_num_threads()
        );
        // The data first: a wrong --data must not leave an empty run directory behind.
        let mut data = load_data(cfg)?;
        if data.train.images.len() < cfg.optim.batch {
            return Err(TrainError::TooFewImages {
                found: data.train.images.len(),
                batch: cfg.optim.batch,
            });
        }
        let out = cfg.run.out.clone();
        std::fs::create_dir_all(&out).map_err(TrainError::io(&out))?;
        write_json(&out.join("config.json"), cfg)?;
        let mut session = Session::new(cfg, device);
        let (start, step, best) = if opts.resume {
            resume(&out, cfg, &mut session)?
        } else {
            (0, 0, None)
        };
        let (history, writer) = history::resume::<EpochMetrics>(&out.join("metrics.jsonl"), start)?;
        let epochs = cfg.optim.epochs;
        Ok(Self {
            cfg,
            session,
            images: Arc::new(std::mem::take(&mut data.train.images)),
            aug: Arc::new(AugmentConfig::simsiam(
                cfg.data.image_size,
                cfg.augment.blur,
            )),
            data,
            history,
            writer,
            start,
            stop_at: opts.stop_after.map_or(epochs, |n| (start + n).min(epochs)),
            step,
            best,
            out,
            device: device_name,
        })
    }

    /// One pass over the training images, with a progress bar.
    fn train_epoch(&mut self, epoch: usize) -> Result<EpochMeans, TrainError> {
        let cfg = self.cfg;
        let (epochs, batch) = (cfg.optim.epochs, cfg.optim.batch);
        let lr = lr_at(cfg.lr(), epoch, epochs, cfg.optim.warmup_epochs);
        let predictor_lr = if cfg.optim.fix_pred_lr { cfg.lr() } else { lr };
        let loader = EpochLoader::spawn(
            self.images.clone(),
            batches(&epoch_order(self.images.len(), cfg.run.seed, epoch), batch),
            self.aug.clone(),
            cfg.run.seed,
            epoch,
            cfg.augment_workers(self.session.device),
            cfg.data.prefetch,
        )
        .map_err(TrainError::Spawn)?;
        let bar = epoch_bar(epoch, epochs, loader.len());
        let started = Instant::now();
        let (mut loss_sum, mut std_sum, mut rank_sum, mut n) = (0.0, 0.0, 0.0, 0usize);
        // Time spent waiting for the augmentation workers' next batch.
        let mut waited = Duration::ZERO;
        let mut batches = loader;
        loop {
            let asked = Instant::now();
            let Some(b) = batches.next() else { break };
            waited += asked.elapsed();
            let s = self.session.step(&b, lr, predictor_lr);
            self.step += 1;
            n += 1;
            loss_sum += s.loss;
            std_sum += s.z_std;
            rank_sum += s.z_rank;
            let elapsed = started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} std {:.4} {:.1} img/s, data wait {:.0}%",
                loss_sum / n as f64,
                std_sum / n as f64,
                (n * batch) as f64 / elapsed,
                100.0 * waited.as_secs_f64() / elapsed
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let per = |sum: f64| sum / n.max(1) as f64;
        Ok(EpochMeans {
            data_wait: waited.as_secs_f64() / seconds.max(f64::MIN_POSITIVE),
            loss: per(loss_sum),
            z_std: per(std_sum),
            z_rank: per(rank_sum),
            lr,
            img_per_s: (n * batch) as f64 / seconds,
            seconds,
        })
    }

    /// Collapse watch, kNN monitor when due, metrics line, plot and checkpoints.
    fn record_epoch(&mut self, epoch: usize, e: EpochMeans) -> Result<EpochMetrics, TrainError> {
        let cfg = self.cfg;
        let collapse_alarm = self.collapse_alarm(epoch, &e);
        let knn_due = (cfg.monitor.knn_every > 0
            && (epoch + 1).is_multiple_of(cfg.monitor.knn_every))
            || epoch + 1 == self.stop_at
            || (collapse_alarm && cfg.monitor.stop_on_collapse);
        // A dataset packed without a test split (a GPU run's) has nothing to query.
        let knn_top1 = if knn_due && !self.data.test.images.is_empty() {
            Some(knn_monitor(&self.session, cfg, &self.images, &self.data)?)
        } else {
            None
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            step: self.step,
            loss: e.loss,
            z_std: e.z_std,
            z_std_healthy: healthy_std(cfg.model.proj_dim),
            z_rank: e.z_rank,
            lr: e.lr,
            img_per_s: e.img_per_s,
            epoch_seconds: e.seconds,
            data_wait: e.data_wait,
            knn_top1,
            collapse_alarm,
        };
        log::info!(
            "epoch {}/{}: loss {:.4}, z std {:.4} (healthy {:.4}), z rank {:.1}, lr {:.4}, {:.1} img/s, data wait {:.1}%{}",
            m.epoch,
            cfg.optim.epochs,
            m.loss,
            m.z_std,
            m.z_std_healthy,
            m.z_rank,
            m.lr,
            m.img_per_s,
            m.data_wait * 100.0,
            knn_top1.map(|k| format!(", kNN top-1 {:.2}%", k * 100.0)).unwrap_or_default()
        );
        self.writer.append(&m)?;
        self.history.push(m.clone());
        if let Err(e) =
            crate::engine::plot::training_curves(&self.history, &self.out.join("training.png"))
        {
            log::warn!("{e}");
        }
        self.checkpoint(&m)?;
        Ok(m)
    }

    /// Whether the projector output has collapsed: its std far below 1/√d, or its batch
    /// moving along fewer than `monitor.collapse_rank` directions. Logged when it has.
    fn collapse_alarm(&self, epoch: usize, e: &EpochMeans) -> bool {
        let monitor = &self.cfg.monitor;
        let healthy = healthy_std(self.cfg.model.proj_dim);
        let threshold = monitor.collapse_ratio * healthy;
        let alarm = e.z_std.is_nan() || e.z_std < threshold || e.z_rank < monitor.collapse_rank;
        if alarm {
            log::warn!(
                "COLLAPSE ALARM epoch {}: std of l2-normalised z {:.5} (alarm below {threshold:.5}, healthy 1/sqrt(d) = {healthy:.5}), effective rank {:.2} (alarm below {:.2}), loss {:.4}",
                epoch + 1,
                e.z_std,
                e.z_rank,
                monitor.collapse_rank,
                e.loss
            );
        }
        alarm
    }

    /// `checkpoint-last` every epoch; `checkpoint-best` when the kNN top-1 improved.
    fn checkpoint(&mut self, m: &EpochMetrics) -> Result<(), TrainError> {
        let improved = m.knn_top1.is_some_and(|k| self.best.is_none_or(|b| k > b));
        if improved {
            self.best = m.knn_top1;
        }
        let meta = CheckpointMeta {
            epoch: m.epoch,
            step: self.step,
            seed: self.cfg.run.seed,
            knn_top1: m.knn_top1,
            best_knn_top1: self.best,
            classes: self.data.classes.clone(),
            config: self.cfg.clone(),
            saved_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            device: self.device.clone(),
            files: None,
            stage: crate::engine::checkpoint::Stage::Pretrain,
            stages: Vec::new(),
            val_top1: None,
            best_val_top1: None,
        };
        checkpoint::save(&self.out, LAST, &self.session, &meta)?;
        if improved || !self.out.join(format!("{BEST}.json")).exists() {
            checkpoint::copy(&self.out, LAST, BEST)?;
        }
        Ok(())
    }

    fn summary(self, last: Option<EpochMetrics>) -> PretrainSummary {
        let history = &self.history;
        let last = last.or_else(|| history.last().cloned());
        PretrainSummary {
            epochs_done: last.as_ref().map_or(self.start, |m| m.epoch),
            loss: last.as_ref().map_or(f64::NAN, |m| m.loss),
            z_std: last.as_ref().map_or(f64::NAN, |m| m.z_std),
            knn_top1: history.iter().rev().find_map(|m| m.knn_top1),
            best_knn_top1: self.best,
            img_per_s: mean_rate(history),
            collapse_alarm: history.iter().any(|m| m.collapse_alarm),
            out: self.out,
        }
    }
}

/// Restores `checkpoint-last` of `out` (weights and momentum) into `session`; returns
/// (epochs done, steps done, best kNN top-1). A checkpoint of another model is refused.
fn resume(
    out: &Path,
    cfg: &TrainConfig,
    session: &mut Session,
) -> Result<(usize, usize, Option<f64>), TrainError> {
    let meta = checkpoint::load(out, LAST, session, true)?;
    if meta.config.model != cfg.model {
        return Err(TrainError::Checkpoint {
            path: out.join(LAST),
            message: "its model configuration differs from this run's".into(),
        });
    }
    log::info!("resuming after epoch {} (step {})", meta.epoch, meta.step);
    Ok((meta.epoch, meta.step, meta.best_knn_top1))
}

/// Mean training throughput over the recorded epochs.
pub fn mean_rate(history: &[EpochMetrics]) -> f64 {
    history::mean_rate(history.iter().map(history::Record::rate))
}
