//! `trainer eval`: how good are the frozen features? Weighted kNN (k = 20 and 200) and a
//! linear probe on backbone features, for the trained encoder and for a randomly
//! initialised one of the same architecture, so every figure has its baseline beside it.
//!
//! The probe is fitted on, and the kNN bank holds, the labelled training images: all but
//! the validation slice, or `--labels-per-breed N` of each breed (see [`crate::engine::labelled`]).
//! On a fine-tuned run, the fine-tuning head and a refitted probe are compared on the
//! validation slice and the better one ships.
//!
//! Writes into the run directory: `eval.json`, `eval.md`, `confusion.png`,
//! `knn_curve.png` (pretraining runs) and `probe.json` (the breed classifier the bundle
//! ships); with `--zoom-out F`, only `eval-zoom<F>.json` and `.md`, measured on test images
//! zoomed out. Features are cached in `features-<encoder>.safetensors`, keyed by
//! checkpoint and data settings, so a second evaluation does not embed the images again.

use crate::commands::pretrain::{eval_transform, load_data, RunData};
use crate::config::TrainConfig;
use crate::engine::checkpoint::{self, CheckpointMeta, Stage};
use crate::engine::knn;
use crate::engine::labelled::{self, LabelledSplit};
use crate::engine::probe_fit::{self, ProbeFitConfig};
use crate::engine::report::{self, ClassRow, ClassifierChoice, EncoderScores, EvalReport};
use crate::engine::session::{self, Session};
use crate::TrainError;
use serde::{Deserialize, Serialize};
use simsiam::probe::LinearProbe;
use std::path::Path;
use tch::{Device, Tensor};

/// Frozen features of both splits.
pub struct Features {
    pub dim: usize,
    pub train: Vec<f32>,
    pub test: Vec<f32>,
}

/// What a cached feature file was computed from; a mismatch means recompute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheKey {
    encoder: String,
    step: usize,
    seed: u64,
    root: String,
    breeds: Option<usize>,
    max_per_breed: Option<usize>,
    image_size: u32,
    resize: u32,
    n_train: usize,
    n_test: usize,
    #[serde(default)]
    zoom_out: Option<f32>,
}

/// Options of one evaluation that are not part of the run's configuration.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Labelled images per breed for the probe and the kNN bank (default: the run's
    /// fine-tuning setting, else all but the validation slice).
    pub labels_per_breed: Option<usize>,
    /// Measure on test images zoomed out to this fraction of the frame's width.
    pub zoom_out: Option<f32>,
}

/// The grey of a zoomed-out test image's canvas: the ImageNet mean colour.
const ZOOM_FILL: image::Rgb<u8> = image::Rgb([124, 116, 104]);

fn cached_features(
    run: &Path,
    key: &CacheKey,
    session: &Session,
    cfg: &TrainConfig,
    data: &RunData,
) -> Result<Features, TrainError> {
    let file = run.join(format!("features-{}.safetensors", key.encoder));
    let key_file = file.with_extension("json");
    let dim = session.model.backbone.feature_dim as usize;
    let stored: Option<CacheKey> = std::fs::read_to_string(&key_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if stored.as_ref() == Some(key) {
        if let Ok(tensors) = Tensor::read_safetensors(&file) {
            let get = |name: &str| {
                tensors
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, t)| Vec::<f32>::try_from(&t.view([-1])).ok())
            };
            if let (Some(train), Some(test)) = (get("train"), get("test")) {
                if train.len() == key.n_train * dim && test.len() == key.n_test * dim {
                    log::info!("{} features: cached in {}", key.encoder, file.display());
                    return Ok(Features { dim, train, test });
                }
            }
        }
    }
    let t = eval_transform(cfg);
    let batch = cfg.optim.batch.max(64);
    let train = session.features(
        &data.train.images,
        &t,
        batch,
        &format!("{} features (train)", key.encoder),
    )?;
    let test = session.features(
        &data.test.images,
        &t,
        batch,
        &format!("{} features (test)", key.encoder),
    )?;
    let as_tensor = |v: &[f32]| Tensor::from_slice(v).view([-1, dim as i64]);
    Tensor::write_safetensors(
        &[("train", as_tensor(&train)), ("test", as_tensor(&test))],
        &file,
    )?;
    let text = serde_json::to_string_pretty(key).map_err(TrainError::json(&key_file))?;
    std::fs::write(&key_file, text).map_err(TrainError::io(&key_file))?;
    Ok(Features { dim, train, test })
}

/// Scores of one encoder, with per-class test accuracy and the probe's confusion matrix.
pub struct Scored {
    pub scores: EncoderScores,
    pub probe: LinearProbe,
    pub probe_class_acc: Vec<f64>,
    pub knn_class_acc: Vec<f64>,
    pub confusion: Vec<Vec<u32>>,
}

fn per_class(pred: &[usize], labels: &[usize], classes: usize) -> (Vec<f64>, Vec<Vec<u32>>) {
    let mut confusion = vec![vec![0u32; classes]; classes];
    for (&p, &t) in pred.iter().zip(labels) {
        confusion[t][p] += 1;
    }
    let acc = confusion
        .iter()
        .enumerate()
        .map(|(t, row)| row[t] as f64 / row.iter().sum::<u32>().max(1) as f64)
        .collect();
    (acc, confusion)
}

fn argmax(scores: &[f32]) -> usize {
    scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Rows `idx` of a row-major matrix of width `dim`.
fn rows(x: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// The labelled training features and the test features, with their labels.
pub struct Labelled<'a> {
    pub features: Features,
    pub train_labels: Vec<usize>,
    pub test_labels: &'a [usize],
    pub classes: &'a [String],
}

impl<'a> Labelled<'a> {
    /// The training rows of `split.train` and every test row of `f`.
    fn new(f: &Features, data: &'a RunData, split: &LabelledSplit) -> Self {
        Self {
            features: Features {
                dim: f.dim,
                train: rows(&f.train, f.dim, &split.train),
                test: f.test.clone(),
            },
            train_labels: split.train.iter().map(|&i| data.train.labels[i]).collect(),
            test_labels: &data.test.labels,
            classes: &data.classes,
        }
    }
}

/// kNN (k = 20, 200) and the linear probe on one set of features.
pub fn score(
    l: &Labelled,
    cfg: &TrainConfig,
    fit_cfg: &ProbeFitConfig,
    device: Device,
) -> Result<Scored, TrainError> {
    let f = &l.features;
    let (classes, dim) = (l.classes.len(), f.dim);
    let (ytr, yte) = (&l.train_labels[..], l.test_labels);
    let t = cfg.monitor.knn_temperature as f32;
    let (mut bank, mut queries) = (f.train.clone(), f.test.clone());
    knn::l2_normalize_rows(&mut bank, dim);
    knn::l2_normalize_rows(&mut queries, dim);
    let knn20 = knn::knn_scores(&bank, ytr, &queries, dim, classes, 20, t);
    let knn200 = knn::knn_scores(&bank, ytr, &queries, dim, classes, 200, t);
    let (a20, a200) = (knn::accuracy(&knn20, yte), knn::accuracy(&knn200, yte));
    let knn_pred: Vec<usize> = knn20.iter().map(|s| argmax(s)).collect();
    let (knn_class_acc, _) = per_class(&knn_pred, yte, classes);

    let fit = probe_fit::fit(&f.train, ytr, dim, l.classes, fit_cfg, device);
    let probs = probabilities(&fit.probe, &f.test)?;
    let probe_acc = knn::accuracy(&probs, yte);
    let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    let (probe_class_acc, confusion) = per_class(&pred, yte, classes);
    let scores = EncoderScores {
        knn_top1: a20.top1,
        knn_top5: a20.top5,
        knn200_top1: a200.top1,
        knn200_top5: a200.top5,
        probe_top1: probe_acc.top1,
        probe_top5: probe_acc.top5,
        probe_weight_decay: fit.probe.weight_decay,
        probe_epochs: fit.probe.epochs,
        probe_val_top1: fit.val_top1,
    };
    Ok(Scored {
        scores,
        probe: fit.probe,
        probe_class_acc,
        knn_class_acc,
        confusion,
    })
}

/// Probabilities of `probe` for every row of `features`.
fn probabilities(probe: &LinearProbe, features: &[f32]) -> Result<Vec<Vec<f32>>, TrainError> {
    features
        .chunks(probe.feature_dim.max(1))
        .map(|x| probe.probabilities(x))
        .collect::<Result<_, _>>()
        .map_err(|source| TrainError::Probe {
            path: "the probe being evaluated".into(),
            source,
        })
}

/// Evaluates checkpoint `tag` of the run in `run` (with `cfg`, the run's configuration
/// updated by command-line overrides) and writes the report files.
pub fn evaluate(
    run: &Path,
    tag: &str,
    cfg: &TrainConfig,
    opts: &EvalOptions,
) -> Result<EvalReport, TrainError> {
    let device = session::device(cfg)?;
    let mut data = load_data(cfg)?;
    if let Some(z) = opts.zoom_out {
        for img in &mut data.test.images {
            *img = crate::engine::augment::zoomed_out(img, z, ZOOM_FILL);
        }
    }
    let per_breed = opts.labels_per_breed.or(cfg.finetune.labels_per_breed);
    let split = labelled::split(
        &data.train.labels,
        &data.classes,
        cfg.run.seed,
        cfg.finetune.val_fraction,
        per_breed,
    )?;
    let fit_cfg = ProbeFitConfig {
        seed: cfg.run.seed,
        ..Default::default()
    };
    let mut trained = Session::new(cfg, device);
    let meta = checkpoint::load(run, tag, &mut trained, false)?;
    log::info!(
        "evaluating {} (epoch {}, step {}) against a random initialisation",
        run.join(tag).display(),
        meta.epoch,
        meta.step
    );
    let key = cache_key(cfg, &data, "trained", meta.step, opts.zoom_out);
    let f = cached_features(run, &key, &trained, cfg, &data)?;
    drop(trained);
    let mut ours = score(&Labelled::new(&f, &data, &split), cfg, &fit_cfg, device)?;
    let classifier = match meta.stage {
        Stage::Finetune => Some(choose_classifier(
            run, tag, &meta, &f, &data, &split, &mut ours,
        )?),
        Stage::Pretrain => None,
    };
    let random = Session::new(cfg, device);
    let key = cache_key(cfg, &data, "random", 0, opts.zoom_out);
    let f = cached_features(run, &key, &random, cfg, &data)?;
    let base = score(&Labelled::new(&f, &data, &split), cfg, &fit_cfg, device)?;
    let mut report = eval_report(run, tag, &meta, cfg, &data, &ours, &base);
    report.labels_per_breed = per_breed;
    report.n_train = split.train.len();
    report.zoom_out = opts.zoom_out;
    report.classifier = classifier;
    match opts.zoom_out {
        Some(z) => {
            let stem = run.join(format!("eval-zoom{:.0}", z * 100.0));
            report::write_json(&report, &stem.with_extension("json"))?;
            report::write_markdown(&report, &stem.with_extension("md"))?;
        }
        None => write_reports(run, &report, &meta, &ours, &base, &data)?,
    }
    Ok(report)
}

/// Compares a fine-tuned run's head with the probe refitted on its frozen features, on
/// the validation slice; the better one becomes `ours.probe`, and its test figures the
/// probe's scores. Returns both sets of figures.
fn choose_classifier(
    run: &Path,
    tag: &str,
    meta: &CheckpointMeta,
    f: &Features,
    data: &RunData,
    split: &LabelledSplit,
    ours: &mut Scored,
) -> Result<ClassifierChoice, TrainError> {
    let head = crate::commands::finetune::head_probe(run, tag, meta)?;
    let val_x = rows(&f.train, f.dim, &split.val);
    let val_y: Vec<usize> = split.val.iter().map(|&i| data.train.labels[i]).collect();
    let top1 = |p: &LinearProbe, x: &[f32], y: &[usize]| -> Result<(f64, f64), TrainError> {
        let a = knn::accuracy(&probabilities(p, x)?, y);
        Ok((a.top1, a.top5))
    };
    let (head_val, _) = top1(&head, &val_x, &val_y)?;
    let (refit_val, _) = top1(&ours.probe, &val_x, &val_y)?;
    let (head_t1, head_t5) = top1(&head, &f.test, &data.test.labels)?;
    let choice = ClassifierChoice {
        head_val_top1: head_val,
        refit_val_top1: refit_val,
        head_test_top1: head_t1,
        head_test_top5: head_t5,
        refit_test_top1: ours.scores.probe_top1,
        refit_test_top5: ours.scores.probe_top5,
        shipped: if head_val > refit_val {
            "fine-tuning head"
        } else {
            "refitted probe"
        }
        .into(),
    };
    log::info!(
        "validation top-1: fine-tuning head {:.2}%, refitted probe {:.2}%; shipping the {}",
        head_val * 100.0,
        refit_val * 100.0,
        choice.shipped
    );
    if head_val > refit_val {
        let probs = probabilities(&head, &f.test)?;
        let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
        let (class_acc, confusion) = per_class(&pred, &data.test.labels, data.classes.len());
        ours.scores.probe_top1 = head_t1;
        ours.scores.probe_top5 = head_t5;
        ours.scores.probe_val_top1 = head_val;
        ours.scores.probe_weight_decay = head.weight_decay;
        ours.scores.probe_epochs = head.epochs;
        ours.probe_class_acc = class_acc;
        ours.confusion = confusion;
        ours.probe = head;
    }
    Ok(choice)
}

fn cache_key(
    cfg: &TrainConfig,
    data: &RunData,
    encoder: &str,
    step: usize,
    zoom_out: Option<f32>,
) -> CacheKey {
    CacheKey {
        encoder: encoder.into(),
        step,
        seed: cfg.run.seed,
        root: cfg
            .data
            .root
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        breeds: cfg.data.breeds,
        max_per_breed: cfg.data.max_per_breed,
        image_size: cfg.data.image_size,
        resize: cfg.cache_side(),
        n_train: data.train.images.len(),
        n_test: data.test.images.len(),
        zoom_out,
    }
}

/// The figures of both encoders and the per-breed table, as `eval.json` stores them.
fn eval_report(
    run: &Path,
    tag: &str,
    meta: &CheckpointMeta,
    cfg: &TrainConfig,
    data: &RunData,
    ours: &Scored,
    base: &Scored,
) -> EvalReport {
    let per_class = (0..data.classes.len())
        .map(|c| ClassRow {
            breed: data.classes[c].clone(),
            n_test: data.test.labels.iter().filter(|&&l| l == c).count(),
            probe_acc: ours.probe_class_acc[c],
            knn_acc: ours.knn_class_acc[c],
            random_probe_acc: base.probe_class_acc[c],
        })
        .collect();
    EvalReport {
        run: run.display().to_string(),
        checkpoint: tag.to_string(),
        epoch: meta.epoch,
        backbone: cfg.model.backbone.name().into(),
        image_size: cfg.data.image_size,
        n_train: data.train.images.len(),
        n_test: data.test.images.len(),
        classes: data.classes.clone(),
        knn_temperature: cfg.monitor.knn_temperature,
        trained: ours.scores.clone(),
        random_init: base.scores.clone(),
        per_class,
        labels_per_breed: None,
        zoom_out: None,
        classifier: None,
    }
}

/// `eval.json`, `eval.md`, `confusion.png`, `knn_curve.png` and `probe.json`.
fn write_reports(
    run: &Path,
    report: &EvalReport,
    meta: &CheckpointMeta,
    ours: &Scored,
    base: &Scored,
    data: &RunData,
) -> Result<(), TrainError> {
    report::write_json(report, &run.join("eval.json"))?;
    report::write_markdown(report, &run.join("eval.md"))?;
    report::confusion_png(
        &ours.confusion,
        &data.classes,
        "linear probe: test confusion (row-normalised)",
        &run.join("confusion.png"),
    )?;
    // A fine-tuning run's curves are in finetune.png; it has no kNN monitor.
    if meta.stage == Stage::Pretrain {
        let history = crate::engine::history::read(&run.join("metrics.jsonl"))?;
        report::knn_curve_png(
            &history,
            Some(base.scores.knn_top1),
            &run.join("knn_curve.png"),
        )?;
    }
    let probe = run.join(simsiam::bundle::PROBE);
    ours.probe.save(&probe).map_err(|source| TrainError::Probe {
        path: probe.clone(),
        source,
    })
}
