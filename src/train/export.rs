//! `trainer export` and `trainer gallery`: a trained run becomes a self-describing bundle
//! (see [`simsiam::bundle`]) that the server loads through ONNX Runtime, without libtorch.
//!
//! Every export checks itself: the written ONNX file runs through ONNX Runtime and the
//! same weights through tch on real preprocessed images, for batch sizes 1 and 7, and the
//! export fails when the largest absolute difference exceeds the tolerance.

use super::checkpoint;
use super::session::{self, Session};
use super::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use simsiam::bundle::{
    self, Bundle, EmbeddingSpec, Gallery, GalleryMeta, Manifest, OnnxSpec, TrainingSummary,
};
use simsiam::config::TrainConfig;
use simsiam::data::{self, DatasetOptions};
use simsiam::onnx::{self, EncoderSpec};
use simsiam::preprocess::EvalTransform;
use simsiam::probe::LinearProbe;
use simsiam::runtime;
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

fn bad(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
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

/// `n` real images of the run's dataset, preprocessed.
fn parity_images(cfg: &TrainConfig, t: &EvalTransform, n: usize) -> Result<Vec<f32>, TrainError> {
    let root = cfg.data.root.as_deref().ok_or(TrainError::NoDataRoot)?;
    let opts = cfg.dataset_options();
    let ds = data::open(root, &opts)?;
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
        return Err(bad(
            root,
            format!(
                "only {} decodable images for the parity check, need {n}",
                decoded.images.len()
            ),
        ));
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
    let mut ort = runtime::cpu_session(onnx_bytes, 0)
        .map_err(|e| bad(Path::new(bundle::ENCODER), e.to_string()))?;
    let mut worst = 0.0f64;
    for n in [1usize, 7] {
        let input = images
            .get(..n * per)
            .ok_or_else(|| bad(Path::new(bundle::ENCODER), "too few parity images"))?;
        let (_, got) = runtime::run_f32(&mut ort, input, [n, 3, size, size])
            .map_err(|e| bad(Path::new(bundle::ENCODER), e.to_string()))?;
        let x = Tensor::from_slice(input)
            .view([n as i64, 3, size as i64, size as i64])
            .to_device(s.device);
        let f = tch::no_grad(|| s.model.backbone.forward_t(&x, false));
        let f = &f / f.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let want = Vec::<f32>::try_from(&f.to_device(Device::Cpu).contiguous().view([-1]))?;
        if want.len() != got.len() {
            return Err(bad(
                Path::new(bundle::ENCODER),
                format!("ONNX output has {} values, tch {}", got.len(), want.len()),
            ));
        }
        worst = want
            .iter()
            .zip(&got)
            .fold(worst, |m, (a, b)| m.max((a - b).abs() as f64));
    }
    Ok(worst)
}

/// Unit-length embeddings of image files computed by libtorch from a checkpoint (not
/// from the ONNX file), through the same decoding and evaluation transform the server
/// uses: what the server's answers are checked against.
pub fn embed_files(
    run: &Path,
    tag: &str,
    cfg: &TrainConfig,
    files: &[PathBuf],
) -> Result<Vec<Vec<f32>>, TrainError> {
    let device = session::device(cfg)?;
    let mut s = Session::new(cfg, device);
    checkpoint::load(run, tag, &mut s, false)?;
    let t = super::pretrain::eval_transform(cfg);
    let images = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(TrainError::io(f))?;
            data::decode::decode_bytes_min_side(&bytes, None, t.resize)
                .map_err(|e| bad(f, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut features = s.features(&images, &t, 32, "embedding")?;
    let dim = s.model.backbone.feature_dim as usize;
    simsiam::knn::l2_normalize_rows(&mut features, dim);
    Ok(features.chunks(dim).map(<[f32]>::to_vec).collect())
}

/// The ONNX encoder of a session's backbone (l2-normalised output).
pub fn encoder_onnx(
    s: &Session,
    cfg: &TrainConfig,
    fp16: bool,
    metadata: Vec<(String, String)>,
) -> Result<(Vec<u8>, onnx::ExportInfo), TrainError> {
    let weights = backbone_weights(s);
    let lookup = |name: &str| weights.get(name).cloned();
    let mut spec = EncoderSpec::new(cfg.model.backbone, cfg.data.image_size);
    spec.small_stem = cfg.model.small_stem;
    spec.fp16_weights = fp16;
    spec.metadata = metadata;
    onnx::export_encoder_with_info(&spec, &lookup)
        .map_err(|e| bad(Path::new(bundle::ENCODER), e.to_string()))
}

/// Exports checkpoint `opts.tag` of `run` (configuration `cfg`) into the bundle `out`.
pub fn export(
    run: &Path,
    out: &Path,
    cfg: &TrainConfig,
    opts: &ExportOptions,
) -> Result<Manifest, TrainError> {
    let probe_path = run.join(bundle::PROBE);
    let probe = LinearProbe::load(&probe_path).map_err(|e| {
        bad(
            &probe_path,
            format!("{e}; run `trainer eval --run {}` first", run.display()),
        )
    })?;
    let device = session::device(cfg)?;
    let mut s = Session::new(cfg, device);
    let meta = checkpoint::load(run, &opts.tag, &mut s, false)?;
    if probe.feature_dim != s.model.backbone.feature_dim as usize {
        return Err(bad(
            &probe_path,
            "the probe was fitted on features of another width",
        ));
    }
    let t = super::pretrain::eval_transform(cfg);
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

    let diff = parity(&s, &bytes, &parity_images(cfg, &t, 7)?, &t)?;
    let tolerance = if opts.fp16 {
        PARITY_TOLERANCE_FP16
    } else {
        PARITY_TOLERANCE
    };
    log::info!("parity ONNX Runtime vs tch on real images (batches 1 and 7): max |diff| = {diff:.2e} (tolerance {tolerance:.0e})");
    if diff.is_nan() || diff > tolerance {
        return Err(bad(
            Path::new(bundle::ENCODER),
            format!("parity check failed: max |ONNX − tch| = {diff:.3e} > {tolerance:.0e}"),
        ));
    }

    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    let write_err = |e: bundle::BundleError| bad(out, e.to_string());
    bundle::write_atomic(&out.join(bundle::ENCODER), &bytes).map_err(write_err)?;
    probe
        .save(&out.join(bundle::PROBE))
        .map_err(|e| bad(out, e.to_string()))?;
    let eval: Option<simsiam::report::EvalReport> = std::fs::read_to_string(run.join("eval.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let training = TrainingSummary {
        dataset: cfg
            .data
            .root
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        epochs: meta.epoch,
        steps: meta.step,
        n_train: eval.as_ref().map_or(0, |e| e.n_train),
        n_test: eval.as_ref().map_or(0, |e| e.n_test),
        knn_top1: eval.as_ref().map(|e| e.trained.knn_top1).or(meta.knn_top1),
        knn_top5: eval.as_ref().map(|e| e.trained.knn_top5),
        probe_top1: eval.as_ref().map(|e| e.trained.probe_top1),
        probe_top5: eval.as_ref().map(|e| e.trained.probe_top5),
        random_init_knn_top1: eval.as_ref().map(|e| e.random_init.knn_top1),
        random_init_probe_top1: eval.as_ref().map(|e| e.random_init.probe_top1),
        random_init_knn_top5: eval.as_ref().map(|e| e.random_init.knn_top5),
        random_init_probe_top5: eval.as_ref().map(|e| e.random_init.probe_top5),
    };
    let mut manifest = Manifest {
        format_version: 1,
        name: opts.name.clone(),
        version: opts.version.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        backbone: format!("{:?}", cfg.model.backbone).to_lowercase(),
        small_stem: cfg.model.small_stem,
        input: Manifest::input_spec(&t),
        embedding: EmbeddingSpec {
            dim: info.output_dim,
            normalization: "l2".into(),
            input_name: onnx::INPUT_NAME.into(),
            output_name: onnx::OUTPUT_NAME.into(),
        },
        onnx: OnnxSpec {
            opset: info.opset,
            ir_version: info.ir_version,
            fp16_weights: opts.fp16,
            nodes: info.nodes,
            parity_max_abs_diff: diff,
        },
        classes: probe.classes.clone(),
        training,
        files: Default::default(),
    };
    bundle::write_manifest(out, &mut manifest, &[bundle::ENCODER, bundle::PROBE])
        .map_err(write_err)?;
    Ok(manifest)
}

/// Which split(s) `trainer gallery` embeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
    All,
}

/// Embeds a dataset through ONNX Runtime with the bundle's own preprocessing (the path the
/// server takes) and stores the gallery in the bundle. Returns (images, seconds).
pub fn gallery(
    model: &Path,
    root: &Path,
    split: Split,
    opts: &DatasetOptions,
    threads: usize,
) -> Result<(usize, f64), TrainError> {
    let started = Instant::now();
    let b = Bundle::open(model).map_err(|e| bad(model, e.to_string()))?;
    let ds = data::open(root, opts)?;
    // Labels follow the bundle's class list, matched by name.
    let label_of: HashMap<&str, usize> = b
        .manifest
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let samples: Vec<_> = match split {
        Split::Train => ds.train.clone(),
        Split::Test => ds.test.clone(),
        Split::All => ds.train.iter().chain(&ds.test).cloned().collect(),
    };
    let t = b.manifest.eval_transform();
    let bytes = b.encoder_bytes().map_err(|e| bad(model, e.to_string()))?;
    let mut ort = runtime::cpu_session(&bytes, threads).map_err(|e| bad(model, e.to_string()))?;
    let dim = b.manifest.embedding.dim;
    let (size, per) = (t.crop as usize, t.tensor_len());
    let bar = ProgressBar::new(samples.len() as u64).with_message("gallery");
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut meta = GalleryMeta {
        dim,
        ids: Vec::new(),
        labels: Vec::new(),
        paths: Vec::new(),
    };
    let mut vectors = Vec::new();
    let mut skipped = 0;
    for chunk in samples.chunks(128) {
        // Decoding is parallel (rayon) inside decode_samples; the batch then runs at once.
        let decoded = data::decode_samples(chunk, None, "decode");
        skipped += decoded.skipped.len();
        if decoded.images.is_empty() {
            continue;
        }
        let input: Vec<f32> = decoded
            .images
            .iter()
            .flat_map(|img| t.to_vec(img))
            .collect();
        let n = decoded.images.len();
        let (_, out) = runtime::run_f32(&mut ort, &input[..n * per], [n, 3, size, size])
            .map_err(|e| bad(model, e.to_string()))?;
        vectors.extend_from_slice(&out);
        for (path, label) in decoded.paths.iter().zip(&decoded.labels) {
            let class = &ds.classes[*label];
            let label = *label_of.get(class.as_str()).ok_or_else(|| {
                bad(
                    root,
                    format!("class {class} is not one of the bundle's classes"),
                )
            })?;
            let rel = path.strip_prefix(root).unwrap_or(path);
            meta.ids.push(
                rel.with_extension("")
                    .to_string_lossy()
                    .replace("Images/", ""),
            );
            meta.labels.push(label);
            meta.paths.push(rel.to_string_lossy().into_owned());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if skipped > 0 {
        log::warn!("{skipped} images could not be decoded and are not in the gallery");
    }
    let n = meta.ids.len();
    let g = Gallery { meta, vectors };
    let werr = |e: bundle::BundleError| bad(model, e.to_string());
    g.save(model).map_err(werr)?;
    let mut manifest = b.manifest.clone();
    bundle::write_manifest(
        model,
        &mut manifest,
        &[
            bundle::ENCODER,
            bundle::PROBE,
            bundle::GALLERY_META,
            bundle::GALLERY_VECTORS,
        ],
    )
    .map_err(werr)?;
    Ok((n, started.elapsed().as_secs_f64()))
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
    use simsiam::config::{Backbone, DeviceChoice};

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
