//! `trainer export`: a trained run becomes a self-describing bundle (see
//! [`simsiam::bundle`]) that the server loads through ONNX Runtime, without libtorch.
//!
//! Every export checks itself: the written ONNX file runs through ONNX Runtime and the
//! same weights through tch on real preprocessed images, for batch sizes 1 and 7, and the
//! export fails when the largest absolute difference exceeds the tolerance.

use crate::commands::pretrain::eval_transform;
use crate::config::TrainConfig;
use crate::engine::checkpoint::{self, CheckpointMeta};
use crate::engine::data;
use crate::engine::report::EvalReport;
use crate::engine::session::{self, Session};
use crate::TrainError;
use simsiam::bundle::{self, EmbeddingSpec, Manifest, OnnxSpec, TrainingSummary};
use simsiam::preprocess::EvalTransform;
use simsiam::probe::LinearProbe;
use simsiam::runtime;
use simsiam_onnx::{EncoderSpec, ExportInfo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// Largest |ONNX Runtime − tch| an fp32 export may show.
pub const PARITY_TOLERANCE: f64 = 1e-4;
/// Float16 weights round every folded weight: compare against a looser bound.
pub const PARITY_TOLERANCE_FP16: f64 = 5e-3;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub tag: String,
    pub name: String,
    pub version: String,
    pub fp16: bool,
}

/// Exports checkpoint `opts.tag` of `run` (configuration `cfg`) into the bundle `out`.
pub fn export(
    run: &Path,
    out: &Path,
    cfg: &TrainConfig,
    opts: &ExportOptions,
) -> Result<Manifest, TrainError> {
    let probe =
        LinearProbe::load(&run.join(bundle::PROBE)).map_err(|source| TrainError::NoProbe {
            run: run.to_path_buf(),
            source,
        })?;
    let mut s = Session::new(cfg, session::device(cfg)?);
    let meta = checkpoint::load(run, &opts.tag, &mut s, false)?;
    let encoder_dim = s.model.backbone.feature_dim as usize;
    if probe.feature_dim != encoder_dim {
        return Err(TrainError::ProbeWidth {
            path: run.join(bundle::PROBE),
            probe: probe.feature_dim,
            encoder: encoder_dim,
        });
    }
    let t = eval_transform(cfg);
    let metadata = vec![
        ("run".into(), run.display().to_string()),
        ("epoch".into(), meta.epoch.to_string()),
        ("preprocessing".into(), Manifest::input_spec(&t).policy),
    ];
    let started = Instant::now();
    let (bytes, info) = encoder_onnx(&s, cfg, opts.fp16, metadata)?;
    log::info!(
        "ONNX: {} nodes, {:.1} MB, written in {:.2} s",
        info.nodes,
        bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let parity = checked_parity(&s, &bytes, cfg, &t, opts.fp16)?;
    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    simsiam::files::write_atomic(&out.join(bundle::ENCODER), &bytes)
        .map_err(bundle::BundleError::from)?;
    let probe_path = out.join(bundle::PROBE);
    probe
        .save(&probe_path)
        .map_err(|source| TrainError::Probe {
            path: probe_path,
            source,
        })?;
    let written = Written { info, parity };
    let mut manifest = manifest(run, cfg, opts, &meta, &written, &probe);
    bundle::write_manifest(out, &mut manifest, &[bundle::ENCODER, bundle::PROBE])?;
    Ok(manifest)
}

/// Parity on seven real images of the run's dataset, held to the tolerance of the
/// weights' precision; returns the largest difference.
fn checked_parity(
    s: &Session,
    onnx: &[u8],
    cfg: &TrainConfig,
    t: &EvalTransform,
    fp16: bool,
) -> Result<f64, TrainError> {
    let diff = parity(s, onnx, &parity_images(cfg, t, 7)?, t)?;
    let tolerance = if fp16 {
        PARITY_TOLERANCE_FP16
    } else {
        PARITY_TOLERANCE
    };
    log::info!("parity ONNX Runtime vs tch on real images (batches 1 and 7): max |diff| = {diff:.2e} (tolerance {tolerance:.0e})");
    if diff.is_nan() || diff > tolerance {
        return Err(TrainError::Parity { diff, tolerance });
    }
    Ok(diff)
}

/// What was learnt about the encoder while writing and checking it.
struct Written {
    info: ExportInfo,
    /// Largest |ONNX Runtime − tch| on real images.
    parity: f64,
}

/// The manifest of a bundle exported from `run`: model, preprocessing, classes, and the
/// training and evaluation figures (from `eval.json` when `trainer eval` wrote one).
fn manifest(
    run: &Path,
    cfg: &TrainConfig,
    opts: &ExportOptions,
    meta: &CheckpointMeta,
    written: &Written,
    probe: &LinearProbe,
) -> Manifest {
    let eval: Option<EvalReport> = std::fs::read_to_string(run.join("eval.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let info = &written.info;
    Manifest {
        format_version: 1,
        name: opts.name.clone(),
        version: opts.version.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        backbone: cfg.model.backbone.name().into(),
        small_stem: cfg.model.small_stem,
        input: Manifest::input_spec(&eval_transform(cfg)),
        embedding: EmbeddingSpec {
            dim: info.output_dim,
            normalization: "l2".into(),
            input_name: simsiam_onnx::INPUT_NAME.into(),
            output_name: simsiam_onnx::OUTPUT_NAME.into(),
        },
        onnx: OnnxSpec {
            opset: info.opset,
            ir_version: info.ir_version,
            fp16_weights: opts.fp16,
            nodes: info.nodes,
            parity_max_abs_diff: written.parity,
        },
        classes: probe.classes.clone(),
        training: training_summary(run, cfg, meta, eval.as_ref()),
        files: Default::default(),
    }
}

fn training_summary(
    run: &Path,
    cfg: &TrainConfig,
    meta: &CheckpointMeta,
    eval: Option<&EvalReport>,
) -> TrainingSummary {
    // Every stage up to the exported checkpoint (a missing history leaves its figures 0).
    let stages = crate::commands::finetune::run_stages(run, meta);
    TrainingSummary {
        dataset: cfg
            .data
            .root
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        epochs: meta.epoch,
        steps: meta.step,
        n_train: eval.map_or(0, |e| e.n_train),
        n_test: eval.map_or(0, |e| e.n_test),
        knn_top1: eval.map(|e| e.trained.knn_top1).or(meta.knn_top1),
        knn_top5: eval.map(|e| e.trained.knn_top5),
        probe_top1: eval.map(|e| e.trained.probe_top1),
        probe_top5: eval.map(|e| e.trained.probe_top5),
        random_init_knn_top1: eval.map(|e| e.random_init.knn_top1),
        random_init_probe_top1: eval.map(|e| e.random_init.probe_top1),
        random_init_knn_top5: eval.map(|e| e.random_init.knn_top5),
        random_init_probe_top5: eval.map(|e| e.random_init.probe_top5),
        device: Some(meta.device.clone()).filter(|d| !d.is_empty()),
        image_size: Some(cfg.data.image_size),
        wall_seconds: Some(stages.iter().map(|s| s.wall_seconds).sum()),
        img_per_s: stages.last().map(|s| s.img_per_s).filter(|r| *r > 0.0),
        stages,
        classifier: eval.and_then(|e| e.classifier.as_ref()).map(|c| {
            format!(
                "{} (validation top-1: fine-tuning head {:.1}%, refitted probe {:.1}%)",
                c.shipped,
                c.head_val_top1 * 100.0,
                c.refit_val_top1 * 100.0
            )
        }),
    }
}

/// The backbone's variables (names without the `backbone.` prefix) as host f32 arrays.
fn backbone_weights(s: &Session) -> HashMap<String, (Vec<i64>, Vec<f32>)> {
    s.vs.variables()
        .into_iter()
        .filter_map(|(name, t)| {
            let name = name.strip_prefix("backbone.")?.to_string();
            let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let values = Vec::<f32>::try_from(&t.view([-1])).ok()?;
            Some((name, (t.size(), values)))
        })
        .collect()
}

/// The ONNX encoder of a session's backbone (l2-normalised output).
pub fn encoder_onnx(
    s: &Session,
    cfg: &TrainConfig,
    fp16: bool,
    metadata: Vec<(String, String)>,
) -> Result<(Vec<u8>, ExportInfo), TrainError> {
    let weights = backbone_weights(s);
    let lookup = |name: &str| weights.get(name).cloned();
    let mut spec = EncoderSpec::new(cfg.model.backbone, cfg.data.image_size);
    spec.small_stem = cfg.model.small_stem;
    spec.fp16_weights = fp16;
    spec.metadata = metadata;
    Ok(simsiam_onnx::export_encoder_with_info(&spec, &lookup)?)
}

/// `n` real images of the run's dataset, preprocessed.
fn parity_images(cfg: &TrainConfig, t: &EvalTransform, n: usize) -> Result<Vec<f32>, TrainError> {
    let root = cfg.data.root.as_deref().ok_or(TrainError::NoDataRoot)?;
    let ds = data::open(root, &cfg.dataset_options())?;
    // Test images first (spread over classes), then training images if the test split is small.
    let step = (ds.test.len() / n).max(1);
    let picked: Vec<_> = ds
        .test
        .iter()
        .step_by(step)
        .chain(&ds.train)
        .take(n)
        .cloned()
        .collect();
    let decoded = data::decode_samples(&picked, None, "parity images");
    if decoded.images.len() < n {
        return Err(TrainError::ParityImages {
            root: PathBuf::from(root),
            found: decoded.images.len(),
            needed: n,
        });
    }
    Ok(decoded
        .images
        .iter()
        .flat_map(|img| t.to_vec(img))
        .collect())
}

/// Largest |ONNX Runtime − tch| of the l2-normalised backbone output, over batches of 1
/// and 7 of the given preprocessed images (at least 7 of `t.tensor_len()` floats each).
pub fn parity(
    s: &Session,
    onnx_bytes: &[u8],
    images: &[f32],
    t: &EvalTransform,
) -> Result<f64, TrainError> {
    let size = t.crop as usize;
    let per = t.tensor_len();
    let mut ort = runtime::cpu_session(onnx_bytes, 0)?;
    let mut worst = 0.0f64;
    for n in [1usize, 7] {
        let input = images.get(..n * per).ok_or(TrainError::ParityImages {
            root: PathBuf::from("(given images)"),
            found: images.len() / per,
            needed: n,
        })?;
        let (_, got) = runtime::run_f32(&mut ort, input, [n, 3, size, size])?;
        let x = Tensor::from_slice(input)
            .view([n as i64, 3, size as i64, size as i64])
            .to_device(s.device);
        let f = tch::no_grad(|| s.model.backbone.forward_t(&x, false));
        let f = &f / f.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let want = Vec::<f32>::try_from(&f.to_device(Device::Cpu).contiguous().view([-1]))?;
        if want.len() != got.len() {
            return Err(TrainError::ParityShape {
                onnx: got.len(),
                tch: want.len(),
            });
        }
        worst = want
            .iter()
            .zip(&got)
            .fold(worst, |m, (a, b)| m.max((a - b).abs() as f64));
    }
    Ok(worst)
}

/// Default bundle name for a run directory.
pub fn default_name(run: &Path) -> String {
    run.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "simsiam".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backbone, DeviceChoice};

    #[test]
    fn freshly_initialised_resnet18_exports_with_parity() {
        let mut cfg = TrainConfig::default();
        cfg.model.backbone = Backbone::Resnet18;
        cfg.data.image_size = 32;
        cfg.run.device = DeviceChoice::Cpu;
        cfg.run.channels_last = true;
        let s = Session::new(&cfg, Device::Cpu);
        // Non-trivial batch-norm statistics, so folding is exercised.
        tch::no_grad(|| {
            for (name, mut v) in s.vs.variables() {
                if name.ends_with("running_mean") {
                    v.copy_(&(Tensor::randn_like(&v) * 0.1));
                } else if name.ends_with("running_var") {
                    v.copy_(&(Tensor::rand_like(&v) + 0.5));
                }
            }
        });
        let (bytes, info) = encoder_onnx(&s, &cfg, false, vec![]).expect("export");
        assert_eq!(info.output_dim, 512);
        let t = EvalTransform::for_crop(32);
        let images = Vec::<f32>::try_from(&Tensor::randn(
            [7 * t.tensor_len() as i64],
            (Kind::Float, Device::Cpu),
        ))
        .expect("vec");
        let diff = parity(&s, &bytes, &images, &t).expect("parity");
        assert!(diff <= PARITY_TOLERANCE, "max |ONNX - tch| = {diff}");
    }
}
