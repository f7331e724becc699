//! `trainer finetune`: the supervised stage after SimSiam. The whole encoder plus a linear
//! breed head learn with cross-entropy from the training split's labels, starting from a
//! pretraining run's encoder (`--run`) or from random weights (`--init random`, the
//! supervised-from-scratch baseline).
//!
//! The head is the server's probe in trainable form: l2-normalise the features, scale
//! them by [`HEAD_SCALE`] (the probe's standardisation with mean 0 and std 1/8), then one
//! linear layer. So the trained head can ship as `probe.json` unchanged (see [`head_probe`]), and
//! `trainer eval` picks it or a probe refitted on the frozen features, whichever is better
//! on validation. Training on l2-normalised features also shapes the embedding for the
//! cosine similarity that the gallery's search uses.
//!
//! Writes into the run directory, as `pretrain` does: `config.json`, `labelled.json` (the
//! images fine-tuned on and the validation slice), `metrics.jsonl`, `finetune.png` (loss and
//! accuracy curves), `checkpoint-last.*` every epoch and `checkpoint-best.*` at the best
//! validation top-1. `--resume` continues from `checkpoint-last`.

use crate::commands::pretrain::{epoch_bar, eval_transform, load_data, write_json, RunData};
use crate::config::TrainConfig;
use crate::engine::augment::{self, AugmentConfig};
use crate::engine::checkpoint::{self, CheckpointMeta, Stage, BEST, LAST};
use crate::engine::history::{self, FinetuneMetrics, MetricsWriter};
use crate::engine::labelled::{self, LabelledSplit};
use crate::engine::loader::{batches, epoch_order, EpochLoader, MakeBatch};
use crate::engine::schedule::lr_at_progress;
use crate::engine::session::{self, Session};
use crate::engine::sgd::Sgd;
use crate::TrainError;
use image::RgbImage;
use simsiam::bundle::StageSummary;
use simsiam::probe::LinearProbe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

/// Variables of the breed head live under this prefix (`head.fc.*`).
pub const HEAD_PREFIX: &str = "head.";

/// The head's fixed scale of the l2-normalised features (the probe's std is its inverse).
///
/// Measured on 20 breeds from random weights, 4 epochs (validation top-1, and the
/// epochs' training loss against chance, ln 20 = 3.0). At backbone/head lr 0.025/0.05
/// without zoom-out or label smoothing: scale √512 ≈ 22.6, 12.5% with the loss up to 3.8
/// (logits too large: confidently wrong); scale 8, 15.5% with the loss at most 2.99 and
/// falling; a plain linear layer on the raw features (which the server, holding only
/// l2-normalised embeddings, could not run) 17.0%. A batch norm in place of the scale (an
/// exact standardisation), at lr 0.05/0.1 with zoom-outs and smoothing: 15.5%, loss up to 5.0.
pub const HEAD_SCALE: f64 = 8.0;

/// l2-normalise → scale by [`HEAD_SCALE`] → linear: the probe, trainable, with a fixed
/// standardisation (mean 0, std 1/[`HEAD_SCALE`]).
#[derive(Debug)]
pub struct BreedHead {
    fc: nn::Linear,
}

impl BreedHead {
    pub fn new(p: &nn::Path, dim: i64, classes: i64) -> Self {
        Self {
            fc: crate::engine::model::torch_linear(&(p / "fc"), dim, classes, true),
        }
    }

    /// Class logits of backbone features.
    pub fn forward_t(&self, features: &Tensor, _train: bool) -> Tensor {
        let unit = features / features.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        (unit * HEAD_SCALE).apply(&self.fc)
    }
}

/// Where the encoder's weights come from.
#[derive(Clone, Debug)]
pub enum Init {
    /// Checkpoint `tag` of a pretraining (or fine-tuning) run.
    Run { dir: PathBuf, tag: String },
    /// Seeded random weights: the supervised-from-scratch baseline.
    Random,
}

#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    pub init: Init,
    /// Continue from `checkpoint-last` in the run directory.
    pub resume: bool,
    /// Stop after this many epochs of this invocation.
    pub stop_after: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct FinetuneSummary {
    pub out: PathBuf,
    pub epochs_done: usize,
    pub loss: f64,
    pub train_top1: f64,
    pub val_top1: f64,
    pub best_val_top1: Option<f64>,
    pub img_per_s: f64,
}

/// One augmented view of each listed image, with its label.
pub struct LabelledBatch {
    pub x: Vec<f32>,
    pub labels: Vec<i64>,
    pub len: usize,
}

fn labelled_batch(
    images: &[RgbImage],
    labels: &[usize],
    indices: &[usize],
    aug: &AugmentConfig,
    seed: u64,
    epoch: usize,
) -> LabelledBatch {
    let per = aug.view_len();
    let mut x = vec![0.0f32; per * indices.len()];
    for (j, &i) in indices.iter().enumerate() {
        let mut rng = augment::view_rng(seed, epoch as u64, i as u64, 0);
        augment::view(&images[i], aug, &mut rng, &mut x[j * per..(j + 1) * per]);
    }
    LabelledBatch {
        x,
        labels: indices.iter().map(|&i| labels[i] as i64).collect(),
        len: indices.len(),
    }
}

/// Runs (or resumes) fine-tuning as configured (`cfg.finetune`, output in `cfg.run.out`).
pub fn finetune(cfg: &TrainConfig, opts: &FinetuneOptions) -> Result<FinetuneSummary, TrainError> {
    let mut run = FtRun::start(cfg, opts)?;
    let mut last = None;
    for epoch in run.start..run.stop_at {
        let means = run.train_epoch(epoch)?;
        last = Some(run.record_epoch(epoch, means)?);
    }
    Ok(run.summary(last))
}

/// The state of a fine-tuning run between epochs.
struct FtRun<'c> {
    cfg: &'c TrainConfig,
    out: PathBuf,
    session: Session,
    head: BreedHead,
    data: RunData,
    images: Arc<Vec<RgbImage>>,
    labels: Arc<Vec<usize>>,
    split: LabelledSplit,
    aug: Arc<AugmentConfig>,
    history: Vec<FinetuneMetrics>,
    writer: MetricsWriter,
    start: usize,
    stop_at: usize,
    step: usize,
    best: Option<f64>,
    device: String,
    /// The stages that made the starting encoder (a pretraining run's).
    stages: Vec<StageSummary>,
}

struct EpochMeans {
    loss: f64,
    train_top1: f64,
    backbone_lr: f64,
    head_lr: f64,
    img_per_s: f64,
    seconds: f64,
    data_wait: f64,
}

impl<'c> FtRun<'c> {
    fn start(cfg: &'c TrainConfig, opts: &FinetuneOptions) -> Result<Self, TrainError> {
        let ft = &cfg.finetune;
        let device = session::device(cfg)?;
        let device_name = session::device_name(device);
        // What could be wrong is checked before anything is written.
        let source = match &opts.init {
            Init::Run { dir, tag } => Some((dir, tag, read_source(dir, tag)?)),
            Init::Random => None,
        };
        let mut data = load_data(cfg)?;
        let out = cfg.run.out.clone();
        if let Some((dir, _, meta)) = &source {
            check_source(dir, meta, &data.classes, &out)?;
        }
        let split = labelled::split(
            &data.train.labels,
            &data.classes,
            cfg.run.seed,
            ft.val_fraction,
            ft.labels_per_breed,
        )?;
        if split.train.len() < ft.batch {
            return Err(TrainError::TooFewImages {
                found: split.train.len(),
                batch: ft.batch,
            });
        }
        std::fs::create_dir_all(&out).map_err(TrainError::io(&out))?;
        write_json(&out.join("config.json"), cfg)?;
        write_json(&out.join("labelled.json"), &labelled_files(&data, &split))?;
        let mut session = Session::new(cfg, device);
        let head = BreedHead::new(
            &(session.vs.root() / "head"),
            session.model.backbone.feature_dim,
            data.classes.len() as i64,
        );
        session.opt = Sgd::new(&session.vs, ft.momentum, ft.weight_decay);
        let stages = match &source {
            Some((dir, tag, meta)) => {
                load_encoder(dir, tag, meta, &mut session)?;
                run_stages(dir, meta)
            }
            None => Vec::new(),
        };
        let (start, step, best) = if opts.resume {
            resume(&out, cfg, &mut session)?
        } else {
            (0, 0, None)
        };
        let (history, writer) =
            history::resume::<FinetuneMetrics>(&out.join("metrics.jsonl"), start)?;
        Ok(Self {
            cfg,
            session,
            head,
            images: Arc::new(std::mem::take(&mut data.train.images)),
            labels: Arc::new(data.train.labels.clone()),
            aug: Arc::new(AugmentConfig::finetune(cfg.data.image_size, ft)),
            data,
            split,
            history,
            writer,
            start,
            stop_at: opts
                .stop_after
                .map_or(ft.epochs, |n| (start + n).min(ft.epochs)),
            step,
            best,
            out,
            device: device_name,
            stages,
        })
    }

    /// One pass over the labelled images, with a progress bar.
    fn train_epoch(&mut self, epoch: usize) -> Result<EpochMeans, TrainError> {
        let (cfg, ft) = (self.cfg, &self.cfg.finetune);
        let order: Vec<usize> = epoch_order(self.split.train.len(), cfg.run.seed, epoch)
            .into_iter()
            .map(|i| self.split.train[i])
            .collect();
        let (images, labels, aug, seed) = (
            self.images.clone(),
            self.labels.clone(),
            self.aug.clone(),
            cfg.run.seed,
        );
        let make: MakeBatch<LabelledBatch> =
            Arc::new(move |b: &[usize]| labelled_batch(&images, &labels, b, &aug, seed, epoch));
        let loader = EpochLoader::spawn_with(
            batches(&order, ft.batch),
            make,
            cfg.augment_workers(self.session.device),
            cfg.data.prefetch,
        )
        .map_err(TrainError::Spawn)?;
        let steps = loader.len().max(1);
        let bar = epoch_bar(epoch, ft.epochs, steps);
        let mut scale = 0.0;
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen, mut n) = (0.0, 0i64, 0usize, 0usize);
        let mut waited = Duration::ZERO;
        let mut loader = loader;
        loop {
            let asked = Instant::now();
            let Some(b) = loader.next() else { break };
            waited += asked.elapsed();
            let progress = epoch as f64 + (n + 1) as f64 / steps as f64;
            scale = lr_at_progress(1.0, progress, ft.epochs, ft.warmup_epochs);
            let (loss, hits) = self.step(&b, ft.backbone_lr * scale, ft.head_lr * scale);
            self.step += 1;
            n += 1;
            seen += b.len;
            loss_sum += loss;
            correct += hits;
            let elapsed = started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} train top-1 {:.1}% {:.1} img/s, data wait {:.0}%",
                loss_sum / n as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / elapsed,
                100.0 * waited.as_secs_f64() / elapsed
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochMeans {
            loss: loss_sum / n.max(1) as f64,
            train_top1: correct as f64 / seen.max(1) as f64,
            backbone_lr: ft.backbone_lr * scale,
            head_lr: ft.head_lr * scale,
            img_per_s: seen as f64 / seconds,
            seconds,
            data_wait: waited.as_secs_f64() / seconds.max(f64::MIN_POSITIVE),
        })
    }

    /// One update of backbone and head; returns the loss and the batch's correct answers.
    fn step(&mut self, b: &LabelledBatch, backbone_lr: f64, head_lr: f64) -> (f64, i64) {
        let s = &mut self.session;
        let x = s.input(&b.x, b.len);
        let y = Tensor::from_slice(&b.labels).to_device(s.device);
        let logits = s
            .autocast(|| {
                self.head
                    .forward_t(&s.model.backbone.forward_t(&x, true), true)
            })
            .to_kind(Kind::Float);
        let smoothing = self.cfg.finetune.label_smoothing;
        let loss = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, smoothing);
        let hits = logits
            .argmax(-1, false)
            .eq_tensor(&y)
            .sum(Kind::Int64)
            .int64_value(&[]);
        s.backward_and_update(&loss, |opt| {
            opt.step_by_name(|name| {
                if name.starts_with(HEAD_PREFIX) {
                    head_lr
                } else {
                    backbone_lr
                }
            })
        });
        (loss.double_value(&[]), hits)
    }

    /// Loss and top-1 of the head on the validation slice (evaluation transform, eval mode).
    fn validate(&self) -> Result<(f64, f64), TrainError> {
        let images: Vec<RgbImage> = self
            .split
            .val
            .iter()
            .map(|&i| self.images[i].clone())
            .collect();
        if images.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let t = eval_transform(self.cfg);
        let f =
            self.session
                .features(&images, &t, self.cfg.finetune.batch.max(64), "validation")?;
        let dim = self.session.model.backbone.feature_dim;
        let x = Tensor::from_slice(&f)
            .view([-1, dim])
            .to_device(self.session.device);
        let y: Vec<i64> = self
            .split
            .val
            .iter()
            .map(|&i| self.labels[i] as i64)
            .collect();
        let y = Tensor::from_slice(&y).to_device(self.session.device);
        let logits = tch::no_grad(|| self.head.forward_t(&x, false));
        let loss = logits.cross_entropy_for_logits(&y).double_value(&[]);
        let top1 = logits
            .argmax(-1, false)
            .eq_tensor(&y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        Ok((loss, top1))
    }

    /// Validation, metrics line, plot and checkpoints.
    fn record_epoch(&mut self, epoch: usize, e: EpochMeans) -> Result<FinetuneMetrics, TrainError> {
        let (val_loss, val_top1) = self.validate()?;
        let m = FinetuneMetrics {
            epoch: epoch + 1,
            step: self.step,
            loss: e.loss,
            train_top1: e.train_top1,
            val_loss,
            val_top1,
            backbone_lr: e.backbone_lr,
            head_lr: e.head_lr,
            img_per_s: e.img_per_s,
            epoch_seconds: e.seconds,
            data_wait: e.data_wait,
        };
        log::info!(
            "epoch {}/{}: loss {:.4}, train top-1 {:.2}%, validation loss {:.4}, top-1 {:.2}%, lr {:.4} / head {:.4}, {:.1} img/s, data wait {:.1}%",
            m.epoch,
            self.cfg.finetune.epochs,
            m.loss,
            m.train_top1 * 100.0,
            m.val_loss,
            m.val_top1 * 100.0,
            m.backbone_lr,
            m.head_lr,
            m.img_per_s,
            m.data_wait * 100.0
        );
        self.writer.append(&m)?;
        self.history.push(m.clone());
        if let Err(e) =
            crate::engine::plot::finetune_curves(&self.history, &self.out.join("finetune.png"))
        {
            log::warn!("{e}");
        }
        self.checkpoint(&m)?;
        Ok(m)
    }

    /// `checkpoint-last` every epoch; `checkpoint-best` when validation top-1 improved.
    fn checkpoint(&mut self, m: &FinetuneMetrics) -> Result<(), TrainError> {
        let score = Some(m.val_top1).filter(|v| v.is_finite());
        let improved = score.is_some_and(|v| self.best.is_none_or(|b| v > b));
        if improved {
            self.best = score;
        }
        let meta = CheckpointMeta {
            epoch: m.epoch,
            step: self.step,
            seed: self.cfg.run.seed,
            knn_top1: None,
            best_knn_top1: None,
            classes: self.data.classes.clone(),
            config: self.cfg.clone(),
            saved_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            device: self.device.clone(),
            files: None,
            stage: Stage::Finetune,
            stages: self.stages.clone(),
            val_top1: score,
            best_val_top1: self.best,
        };
        checkpoint::save(&self.out, LAST, &self.session, &meta)?;
        if improved || !self.out.join(format!("{BEST}.json")).exists() {
            checkpoint::copy(&self.out, LAST, BEST)?;
        }
        Ok(())
    }

    fn summary(self, last: Option<FinetuneMetrics>) -> FinetuneSummary {
        let last = last.or_else(|| self.history.last().cloned());
        let rate = history::mean_rate(self.history.iter().map(history::Record::rate));
        FinetuneSummary {
            epochs_done: last.as_ref().map_or(self.start, |m| m.epoch),
            loss: last.as_ref().map_or(f64::NAN, |m| m.loss),
            train_top1: last.as_ref().map_or(f64::NAN, |m| m.train_top1),
            val_top1: last.as_ref().map_or(f64::NAN, |m| m.val_top1),
            best_val_top1: self.best,
            img_per_s: rate,
            out: self.out,
        }
    }
}

/// The checkpoint a fine-tuning starts from, with a clear error when `dir` holds none.
pub fn read_source(dir: &Path, tag: &str) -> Result<CheckpointMeta, TrainError> {
    checkpoint::read_meta(dir, tag).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!(
            "no encoder to fine-tune ({e}): pass the directory of a `trainer pretrain` run, or --init random"
        ),
    })
}

/// Loads the encoder of checkpoint `tag` of `dir` into `session`; only the head (new
/// here) may be missing from it.
fn load_encoder(
    dir: &Path,
    tag: &str,
    meta: &CheckpointMeta,
    session: &mut Session,
) -> Result<(), TrainError> {
    let weights = checkpoint::weights_file(dir, tag, meta);
    let missing = session
        .vs
        .load_partial(&weights)
        .map_err(|source| TrainError::TensorFile {
            path: weights.clone(),
            source,
        })?;
    let not_head: Vec<&String> = missing
        .iter()
        .filter(|n| !n.starts_with(HEAD_PREFIX))
        .collect();
    if let Some(first) = not_head.first() {
        return Err(TrainError::Checkpoint {
            path: weights,
            message: format!(
                "{} of the encoder's variables are missing (first: {first}): not a checkpoint of this model",
                not_head.len()
            ),
        });
    }
    log::info!(
        "fine-tuning the encoder of {} (epoch {})",
        dir.join(tag).display(),
        meta.epoch
    );
    Ok(())
}

/// Restores `checkpoint-last` of `out` (weights, head and momentum).
fn resume(
    out: &Path,
    cfg: &TrainConfig,
    session: &mut Session,
) -> Result<(usize, usize, Option<f64>), TrainError> {
    let meta = checkpoint::load(out, LAST, session, true)?;
    if meta.stage != Stage::Finetune || meta.config.model != cfg.model {
        return Err(TrainError::Checkpoint {
            path: out.join(LAST),
            message: "is not a fine-tuning checkpoint of this model".into(),
        });
    }
    log::info!("resuming after epoch {} (step {})", meta.epoch, meta.step);
    Ok((meta.epoch, meta.step, meta.best_val_top1))
}

/// The stages that made checkpoint `meta` of `run`: those before the run, then the run's
/// own epochs (read from its `metrics.jsonl`, up to the checkpoint's epoch).
pub fn run_stages(run: &Path, meta: &CheckpointMeta) -> Vec<StageSummary> {
    let cfg = &meta.config;
    let metrics = run.join("metrics.jsonl");
    let (rate_and_secs, recipe, labels, init): (Vec<(f64, f64)>, String, Option<usize>, _) =
        match meta.stage {
            Stage::Pretrain => (
                history::rates::<history::EpochMetrics>(&metrics, meta.epoch),
                format!(
                    "SimSiam without labels: {} at {} px, batch {}, lr {}, weight decay {}, {}-layer projector, {} epochs planned",
                    cfg.model.backbone.name(),
                    cfg.data.image_size,
                    cfg.optim.batch,
                    cfg.lr(),
                    cfg.optim.weight_decay,
                    cfg.model.proj_layers,
                    cfg.optim.epochs
                ),
                None,
                None,
            ),
            Stage::Finetune => {
                let ft = &cfg.finetune;
                (
                    history::rates::<FinetuneMetrics>(&metrics, meta.epoch),
                    format!(
                        "cross-entropy on labels: {} at {} px, batch {}, backbone lr {}, head lr {}, warm-up {}, weight decay {}, label smoothing {}, zoom-out p {} (to {}), {} epochs planned",
                        cfg.model.backbone.name(),
                        cfg.data.image_size,
                        ft.batch,
                        ft.backbone_lr,
                        ft.head_lr,
                        ft.warmup_epochs,
                        ft.weight_decay,
                        ft.label_smoothing,
                        ft.zoom_out_p,
                        ft.zoom_out_min,
                        ft.epochs
                    ),
                    ft.labels_per_breed,
                    Some(if meta.stages.is_empty() {
                        "random".to_string()
                    } else {
                        "pretrained encoder".to_string()
                    }),
                )
            }
        };
    let mut stages = meta.stages.clone();
    stages.push(StageSummary {
        stage: meta.stage.name().into(),
        recipe,
        epochs: meta.epoch,
        wall_seconds: rate_and_secs.iter().map(|(_, s)| s).sum(),
        img_per_s: history::mean_rate(rate_and_secs.iter().copied()),
        device: meta.device.clone(),
        image_size: cfg.data.image_size,
        labels_per_breed: labels,
        init,
    });
    stages
}

/// The trained head of a fine-tuning checkpoint as a linear probe (see the module docs):
/// `mean` 0 and `std` 1/[`HEAD_SCALE`], `weight`/`bias` the linear layer's.
pub fn head_probe(run: &Path, tag: &str, meta: &CheckpointMeta) -> Result<LinearProbe, TrainError> {
    let weights = checkpoint::weights_file(run, tag, meta);
    let tensors = Tensor::read_safetensors(&weights).map_err(|source| TrainError::TensorFile {
        path: weights.clone(),
        source,
    })?;
    let get = |name: &str| -> Result<Vec<f32>, TrainError> {
        let t = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| TrainError::Checkpoint {
                path: weights.clone(),
                message: format!("has no {name}: not a fine-tuning checkpoint"),
            })?;
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        Ok(Vec::<f32>::try_from(&t.view([-1]))?)
    };
    let (weight, bias) = (get("head.fc.weight")?, get("head.fc.bias")?);
    let dim = weight.len() / bias.len().max(1);
    let probe = LinearProbe {
        classes: meta.classes.clone(),
        feature_dim: dim,
        mean: vec![0.0; dim],
        std: vec![(1.0 / HEAD_SCALE) as f32; dim],
        weight,
        bias,
        weight_decay: meta.config.finetune.weight_decay,
        epochs: meta.epoch,
    };
    probe.validate().map_err(|source| TrainError::Probe {
        path: weights,
        source,
    })?;
    Ok(probe)
}

/// The files of the labelled subset and the validation slice, for provenance.
#[derive(serde::Serialize)]
struct LabelledFiles {
    train: Vec<PathBuf>,
    val: Vec<PathBuf>,
}

fn labelled_files(data: &RunData, split: &LabelledSplit) -> LabelledFiles {
    let paths = |idx: &[usize]| idx.iter().map(|&i| data.train.paths[i].clone()).collect();
    LabelledFiles {
        train: paths(&split.train),
        val: paths(&split.val),
    }
}

/// Refuses a source run whose encoder learnt other classes than the data's, or whose
/// directory is the output's: checked before anything is written.
fn check_source(
    dir: &Path,
    meta: &CheckpointMeta,
    classes: &[String],
    out: &Path,
) -> Result<(), TrainError> {
    if meta.classes != classes {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "its encoder was trained on {} classes ({}), the data has {} ({}): fine-tune on the data it was pretrained on",
                meta.classes.len(),
                preview(&meta.classes),
                classes.len(),
                preview(classes)
            ),
        });
    }
    if same_dir(dir, out) {
        return Err(TrainError::Checkpoint {
            path: out.to_path_buf(),
            message: "is the run being fine-tuned: write the fine-tuned run elsewhere (--out)"
                .into(),
        });
    }
    Ok(())
}

fn preview(classes: &[String]) -> String {
    let head: Vec<&str> = classes.iter().take(3).map(String::as_str).collect();
    let more = if classes.len() > 3 { ", ..." } else { "" };
    format!("{}{more}", head.join(", "))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceChoice;

    /// A session with a head, as `FtRun::start` builds it.
    fn session_with_head(backbone_lr: f64, head_lr: f64) -> (Session, BreedHead, TrainConfig) {
        let mut cfg = TrainConfig::default();
        cfg.data.image_size = 32;
        cfg.run.device = DeviceChoice::Cpu;
        cfg.finetune.backbone_lr = backbone_lr;
        cfg.finetune.head_lr = head_lr;
        cfg.finetune.weight_decay = 0.0;
        let mut s = Session::new(&cfg, Device::Cpu);
        let head = BreedHead::new(&(s.vs.root() / "head"), 512, 3);
        s.opt = Sgd::new(&s.vs, 0.9, 0.0);
        (s, head, cfg)
    }

    fn snapshot(s: &Session, name: &str) -> Tensor {
        s.vs.variables()[name].detach().copy()
    }

    #[test]
    fn backbone_and_head_get_their_own_learning_rates() {
        for (backbone_lr, head_lr) in [(0.0, 0.1), (0.1, 0.0)] {
            let (mut s, head, _) = session_with_head(backbone_lr, head_lr);
            let names = ["backbone.conv1.weight", "head.fc.weight"];
            let before: Vec<Tensor> = names.iter().map(|n| snapshot(&s, n)).collect();
            let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 1, 2, 0]);
            let logits = head.forward_t(&s.model.backbone.forward_t(&x, true), true);
            let loss = logits.cross_entropy_for_logits(&y);
            s.backward_and_update(&loss, |opt| {
                opt.step_by_name(|n| {
                    if n.starts_with(HEAD_PREFIX) {
                        head_lr
                    } else {
                        backbone_lr
                    }
                })
            });
            let moved: Vec<bool> = names
                .iter()
                .zip(&before)
                .map(|(n, b)| (snapshot(&s, n) - b).abs().max().double_value(&[]) > 0.0)
                .collect();
            assert_eq!(
                moved,
                [backbone_lr > 0.0, head_lr > 0.0],
                "backbone lr {backbone_lr}, head lr {head_lr}"
            );
        }
    }

    #[test]
    fn the_head_is_the_probe_it_ships_as() {
        let (s, head, _) = session_with_head(0.1, 0.1);
        let x = Tensor::randn([16, 512], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = CheckpointMeta {
            epoch: 1,
            step: 1,
            seed: 0,
            knn_top1: None,
            best_knn_top1: None,
            classes: vec!["a".into(), "b".into(), "c".into()],
            config: TrainConfig::default(),
            saved_unix: 0,
            device: String::new(),
            files: None,
            stage: Stage::Finetune,
            stages: Vec::new(),
            val_top1: None,
            best_val_top1: None,
        };
        checkpoint::save(dir.path(), LAST, &s, &meta).expect("save");
        let meta = checkpoint::read_meta(dir.path(), LAST).expect("meta");
        let probe = head_probe(dir.path(), LAST, &meta).expect("probe");
        let want = tch::no_grad(|| head.forward_t(&x, false)).softmax(-1, Kind::Float);
        let feats = Vec::<f32>::try_from(&x.contiguous().view([-1])).expect("vec");
        for (row, f) in feats.chunks(512).enumerate() {
            let got = probe.probabilities(f).expect("probabilities");
            for (c, g) in got.iter().enumerate() {
                let w = want.double_value(&[row as i64, c as i64]);
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "row {row} class {c}: {g} vs {w}"
                );
            }
        }
    }
}
