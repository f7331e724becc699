//! `trainer pretrain`: SimSiam on a dataset, with monitoring, checkpoints and resume.
//!
//! Writes into the run directory: `config.json` (the resolved configuration),
//! `metrics.jsonl` (one line per epoch), `training.png` (loss, std, kNN curves),
//! `checkpoint-last.*` every epoch and `checkpoint-best.*` at the best kNN top-1.

use super::checkpoint::{self, CheckpointMeta, BEST, LAST};
use super::loader::{batches, epoch_order, EpochLoader};
use super::loss::healthy_std;
use super::schedule::lr_at;
use super::session::{self, Session};
use super::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use simsiam::augment::AugmentConfig;
use simsiam::config::TrainConfig;
use simsiam::data::{self, DecodedImages};
use simsiam::knn;
use simsiam::metrics::{self, EpochMetrics, MetricsWriter};
use simsiam::preprocess::EvalTransform;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(TrainError::io(path))
}

fn epoch_bar(epoch: usize, epochs: usize, len: usize) -> ProgressBar {
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
    let out = cfg.run.out.clone();
    std::fs::create_dir_all(&out).map_err(TrainError::io(&out))?;
    let device = session::device(cfg)?;
    log::info!(
        "device {device:?}, {} libtorch threads",
        tch::get_num_threads()
    );
    let mut data = load_data(cfg)?;
    let batch = cfg.optim.batch;
    if data.train.images.len() < batch {
        return Err(TrainError::TooFewImages {
            found: data.train.images.len(),
            batch,
        });
    }
    write_json(&out.join("config.json"), cfg)?;

    let mut session = Session::new(cfg, device);
    let (start, mut step, mut best) = if opts.resume {
        let meta = checkpoint::load(&out, LAST, &mut session, true)?;
        if meta.config.model != cfg.model {
            return Err(TrainError::Checkpoint {
                path: out.join(LAST),
                message: "its model configuration differs from this run's".into(),
            });
        }
        log::info!("resuming after epoch {} (step {})", meta.epoch, meta.step);
        (meta.epoch, meta.step, meta.best_knn_top1)
    } else {
        (0, 0, None)
    };
    let mut history: Vec<EpochMetrics> = metrics::read(&out.join("metrics.jsonl"))?
        .into_iter()
        .filter(|m| m.epoch <= start)
        .collect();
    let mut writer = MetricsWriter::open(
        &out.join("metrics.jsonl"),
        if opts.resume { start } else { 0 },
    )?;

    let epochs = cfg.optim.epochs;
    // Moved, not copied: the augmentation workers and the kNN bank share one decoded set.
    let images = Arc::new(std::mem::take(&mut data.train.images));
    let aug = Arc::new(AugmentConfig::simsiam(
        cfg.data.image_size,
        cfg.augment.blur,
    ));
    let workers = cfg.augment_workers();
    let healthy = healthy_std(cfg.model.proj_dim);
    let threshold = cfg.monitor.collapse_ratio * healthy;
    let stop_at = opts.stop_after.map_or(epochs, |n| (start + n).min(epochs));
    let mut last = None;

    for epoch in start..stop_at {
        let lr = lr_at(cfg.lr(), epoch, epochs, cfg.optim.warmup_epochs);
        let predictor_lr = if cfg.optim.fix_pred_lr { cfg.lr() } else { lr };
        let loader = EpochLoader::spawn(
            images.clone(),
            batches(&epoch_order(images.len(), cfg.run.seed, epoch), batch),
            aug.clone(),
            cfg.run.seed,
            epoch,
            workers,
            cfg.data.prefetch,
        );
        let bar = epoch_bar(epoch, epochs, loader.len());
        let started = Instant::now();
        let (mut loss_sum, mut std_sum, mut rank_sum, mut n) = (0.0, 0.0, 0.0, 0usize);
        for b in loader {
            let s = session.step(&b, lr, predictor_lr);
            step += 1;
            n += 1;
            loss_sum += s.loss;
            std_sum += s.z_std;
            rank_sum += s.z_rank;
            let rate = (n * batch) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} std {:.4} {:.1} img/s",
                loss_sum / n as f64,
                std_sum / n as f64,
                rate
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let per = |sum: f64| sum / n.max(1) as f64;
        let (loss, z_std, z_rank) = (per(loss_sum), per(std_sum), per(rank_sum));
        let collapse_alarm =
            z_std.is_nan() || z_std < threshold || z_rank < cfg.monitor.collapse_rank;
        if collapse_alarm {
            log::warn!(
                "COLLAPSE ALARM epoch {}: std of l2-normalised z {z_std:.5} (alarm below {threshold:.5}, healthy 1/sqrt(d) = {healthy:.5}), effective rank {z_rank:.2} (alarm below {:.2}), loss {loss:.4}",
                epoch + 1,
                cfg.monitor.collapse_rank
            );
        }
        let stopping = collapse_alarm && cfg.monitor.stop_on_collapse;
        let knn_due = (cfg.monitor.knn_every > 0 && (epoch + 1) % cfg.monitor.knn_every == 0)
            || epoch + 1 == stop_at
            || stopping;
        let knn_top1 = if knn_due {
            Some(knn_monitor(&session, cfg, &images, &data)?)
        } else {
            None
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            step,
            loss,
            z_std,
            z_std_healthy: healthy,
            z_rank,
            lr,
            img_per_s: (n * batch) as f64 / seconds,
            epoch_seconds: seconds,
            knn_top1,
            collapse_alarm,
        };
        log::info!(
            "epoch {}/{epochs}: loss {loss:.4}, z std {z_std:.4} (healthy {healthy:.4}), z rank {z_rank:.1}, lr {lr:.4}, {:.1} img/s{}",
            epoch + 1,
            m.img_per_s,
            knn_top1.map(|k| format!(", kNN top-1 {:.2}%", k * 100.0)).unwrap_or_default()
        );
        writer.append(&m)?;
        history.push(m.clone());
        if let Err(e) = simsiam::plot::training_curves(&history, &out.join("training.png")) {
            log::warn!("{e}");
        }
        let improved = knn_top1.is_some_and(|k| best.is_none_or(|b| k > b));
        if improved {
            best = knn_top1;
        }
        let meta = CheckpointMeta {
            epoch: epoch + 1,
            step,
            seed: cfg.run.seed,
            knn_top1,
            best_knn_top1: best,
            classes: data.classes.clone(),
            config: cfg.clone(),
            saved_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        checkpoint::save(&out, LAST, &session, &meta)?;
        if improved || !out.join(format!("{BEST}.json")).exists() {
            checkpoint::copy(&out, LAST, BEST)?;
        }
        last = Some(m);
        if stopping {
            return Err(TrainError::Collapsed {
                epoch: epoch + 1,
                std: z_std,
                rank: z_rank,
            });
        }
    }
    let last = last.or_else(|| history.last().cloned());
    Ok(PretrainSummary {
        out,
        epochs_done: last.as_ref().map_or(start, |m| m.epoch),
        loss: last.as_ref().map_or(f64::NAN, |m| m.loss),
        z_std: last.as_ref().map_or(f64::NAN, |m| m.z_std),
        knn_top1: history.iter().rev().find_map(|m| m.knn_top1),
        best_knn_top1: best,
        img_per_s: mean_rate(&history),
        collapse_alarm: history.iter().any(|m| m.collapse_alarm),
    })
}

/// Mean training throughput over the recorded epochs.
fn mean_rate(history: &[EpochMetrics]) -> f64 {
    let (imgs, secs) = history.iter().fold((0.0, 0.0), |(i, s), m| {
        (i + m.img_per_s * m.epoch_seconds, s + m.epoch_seconds)
    });
    if secs > 0.0 {
        imgs / secs
    } else {
        0.0
    }
}
