//! Whole model bundles from seeded random weights, for tests and demos that need a real
//! bundle but neither libtorch nor a training run.
//!
//! [`write_bundle`] writes what `trainer export` and `trainer gallery` write: an encoder
//! exported by this crate (random convolutions, random batch-norm statistics, so folding
//! is exercised), a probe, a manifest with every file's sha256, and a seed gallery of the
//! given images embedded through ONNX Runtime with the bundle's own preprocessing. Only
//! the weights are made up; every file is produced by the code the real path uses.
//! [`stripe_image`] draws the synthetic, class-dependent pictures the test suites share.
//!
//! ```no_run
//! use simsiam_onnx::fixture::{self, FixtureSpec};
//! let images = fixture::write_image_folder(std::path::Path::new("/tmp/data"), 3, 12)?;
//! let spec = FixtureSpec::new(vec!["class_0".into(), "class_1".into(), "class_2".into()]);
//! let manifest = fixture::write_bundle(std::path::Path::new("/tmp/bundle"), &spec, &images)?;
//! assert_eq!(manifest.embedding.dim, 512);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{export_encoder_with_info, EncoderSpec, OnnxError, INPUT_NAME, OUTPUT_NAME};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simsiam::arch::{layout, Backbone};
use simsiam::bundle::{self, BundleError, Manifest, SeedGallery, SeedGalleryMeta};
use simsiam::decode::{self, DecodeError};
use simsiam::preprocess::EvalTransform;
use simsiam::probe::{LinearProbe, ProbeError};
use simsiam::runtime::{self, RuntimeError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Variable name → (shape, row-major values), as [`crate::WeightFn`] reads them.
pub type Weights = HashMap<String, (Vec<i64>, Vec<f32>)>;

/// Why a fixture bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: {source}")]
    Image { path: PathBuf, source: DecodeError },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gallery image {path} has class {class}, but the bundle has {classes} classes")]
    Class {
        path: PathBuf,
        class: usize,
        classes: usize,
    },
}

/// He-uniform convolutions and random, non-trivial batch-norm parameters and statistics
/// for every variable of the backbone, from `seed`.
pub fn random_weights(backbone: Backbone, small_stem: bool, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    };
    layout(backbone, small_stem)
        .variables()
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product::<i64>() as usize;
            let values = if name.ends_with("running_var") {
                uniform(n, 0.5, 2.0)
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                uniform(n, -0.2, 0.2)
            } else if shape.len() == 1 {
                uniform(n, 0.5, 1.5)
            } else {
                let fan_in = (shape[1] * shape[2] * shape[3]) as f32;
                let a = (6.0 / fan_in).sqrt();
                uniform(n, -a, a)
            };
            (name, (shape, values))
        })
        .collect()
}

/// What kind of bundle [`write_bundle`] makes.
#[derive(Clone, Debug)]
pub struct FixtureSpec {
    /// Class (folder) names in label order.
    pub classes: Vec<String>,
    pub backbone: Backbone,
    /// Model input side; images are resized to `5/4` of it, then centre-cropped.
    pub image_size: u32,
    /// Seed of the encoder's and the probe's weights.
    pub seed: u64,
    /// The manifest's model name.
    pub name: String,
}

impl FixtureSpec {
    /// A ResNet-18 at 32 px, seed 7, named `fixture`.
    pub fn new(classes: Vec<String>) -> Self {
        Self {
            classes,
            backbone: Backbone::Resnet18,
            image_size: 32,
            seed: 7,
            name: "fixture".into(),
        }
    }
}

/// One image of the seed gallery: its file (id = path relative to `root`, without the
/// extension, as `trainer gallery` names them) and its class index.
#[derive(Clone, Debug)]
pub struct GalleryImage {
    pub root: PathBuf,
    pub path: PathBuf,
    pub class: usize,
}

/// Writes a complete bundle to `dir` (created if needed) and returns its manifest.
pub fn write_bundle(
    dir: &Path,
    spec: &FixtureSpec,
    gallery: &[GalleryImage],
) -> Result<Manifest, FixtureError> {
    std::fs::create_dir_all(dir).map_err(|source| FixtureError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let weights = random_weights(spec.backbone, false, spec.seed);
    let encoder = EncoderSpec::new(spec.backbone, spec.image_size);
    let (onnx, info) = export_encoder_with_info(&encoder, &|name| weights.get(name).cloned())?;
    simsiam::files::write_atomic(&dir.join(bundle::ENCODER), &onnx)
        .map_err(bundle::BundleError::from)?;
    random_probe(spec, info.output_dim).save(&dir.join(bundle::PROBE))?;
    let t = EvalTransform::for_crop(spec.image_size);
    let mut manifest = manifest(spec, &t, &info);
    let mut files = vec![bundle::ENCODER, bundle::PROBE];
    if !gallery.is_empty() {
        seed_gallery(&onnx, &t, info.output_dim, spec, gallery)?.save(dir)?;
        files.extend([bundle::GALLERY_META, bundle::GALLERY_VECTORS]);
    }
    bundle::write_manifest(dir, &mut manifest, &files)?;
    Ok(manifest)
}

/// A probe with seeded random weights: valid, with nothing learnt.
fn random_probe(spec: &FixtureSpec, dim: usize) -> LinearProbe {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x9e37_79b9);
    let scale = 1.0 / (dim as f32).sqrt();
    let n = spec.classes.len();
    LinearProbe {
        classes: spec.classes.clone(),
        feature_dim: dim,
        mean: vec![0.0; dim],
        std: vec![scale; dim],
        weight: (0..n * dim)
            .map(|_| rng.random_range(-scale..scale))
            .collect(),
        bias: vec![0.0; n],
        weight_decay: 0.0,
        epochs: 0,
    }
}

fn manifest(spec: &FixtureSpec, t: &EvalTransform, info: &crate::ExportInfo) -> Manifest {
    Manifest {
        format_version: 1,
        name: spec.name.clone(),
        version: "0.0.0".into(),
        // Fixed, so that two fixtures of the same spec are byte-identical.
        created: "2026-01-01T00:00:00Z".into(),
        backbone: spec.backbone.name().into(),
        small_stem: false,
        input: Manifest::input_spec(t),
        embedding: bundle::EmbeddingSpec {
            dim: info.output_dim,
            normalization: "l2".into(),
            input_name: INPUT_NAME.into(),
            output_name: OUTPUT_NAME.into(),
        },
        onnx: bundle::OnnxSpec {
            opset: info.opset,
            ir_version: info.ir_version,
            fp16_weights: false,
            nodes: info.nodes,
            // No libtorch model to compare with: the weights never left this process.
            parity_max_abs_diff: 0.0,
        },
        classes: spec.classes.clone(),
        training: bundle::TrainingSummary {
            dataset: "synthetic (random weights, no training)".into(),
            ..Default::default()
        },
        files: Default::default(),
    }
}

/// The gallery images embedded by ONNX Runtime, as `trainer gallery` embeds a dataset.
fn seed_gallery(
    onnx: &[u8],
    t: &EvalTransform,
    dim: usize,
    spec: &FixtureSpec,
    images: &[GalleryImage],
) -> Result<SeedGallery, FixtureError> {
    let mut input = Vec::with_capacity(images.len() * t.tensor_len());
    let mut meta = SeedGalleryMeta {
        dim,
        ids: Vec::new(),
        labels: Vec::new(),
        paths: Vec::new(),
    };
    for g in images {
        if g.class >= spec.classes.len() {
            return Err(FixtureError::Class {
                path: g.path.clone(),
                class: g.class,
                classes: spec.classes.len(),
            });
        }
        let img = decode::load_rgb(&g.path).map_err(|source| FixtureError::Image {
            path: g.path.clone(),
            source,
        })?;
        input.extend(t.to_vec(&img));
        let rel = g.path.strip_prefix(&g.root).unwrap_or(&g.path);
        meta.ids
            .push(rel.with_extension("").to_string_lossy().into_owned());
        meta.labels.push(g.class);
        meta.paths.push(rel.to_string_lossy().into_owned());
    }
    let mut session = runtime::cpu_session(onnx, 0)?;
    let side = t.crop as usize;
    let (_, vectors) = runtime::run_f32(&mut session, &input, [images.len(), 3, side, side])?;
    Ok(SeedGallery { meta, vectors })
}

/// A `w`×`h` picture of class `class`: stripes whose direction and colour depend on the
/// class (horizontal red, vertical green, diagonal blue, repeating), over noise that
/// depends on `index`, so every image differs and classes are told apart by structure.
pub fn stripe_image(class: usize, index: usize, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let stripe = match class % 3 {
            0 => (y / 4) % 2,
            1 => (x / 4) % 2,
            _ => ((x + y) / 5) % 2,
        } as u8;
        let noise = ((x * 31 + y * 17 + index as u32 * 97) % 23) as u8;
        let mut px = [noise; 3];
        px[class % 3] = px[class % 3].saturating_add(stripe * 200);
        Rgb(px)
    })
}

/// Writes `classes` folders `class_<c>` of `per_class` 48×40 JPEGs ([`stripe_image`])
/// under `root` and returns them as gallery images (class = folder index).
pub fn write_image_folder(
    root: &Path,
    classes: usize,
    per_class: usize,
) -> Result<Vec<GalleryImage>, FixtureError> {
    let mut out = Vec::new();
    for c in 0..classes {
        let class_dir = root.join(format!("class_{c}"));
        let io = |source| FixtureError::Io {
            path: class_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&class_dir).map_err(io)?;
        for i in 0..per_class {
            let path = class_dir.join(format!("{i}.jpg"));
            stripe_image(c, i, 48, 40)
                .save(&path)
                .map_err(|e| FixtureError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
            out.push(GalleryImage {
                root: root.to_path_buf(),
                path,
                class: c,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simsiam::bundle::Bundle;

    #[test]
    fn a_fixture_bundle_opens_verifies_and_embeds_its_gallery() {
        runtime::init().unwrap_or_else(|e| panic!("these tests need ONNX Runtime: {e}"));
        let dir = tempfile::tempdir().expect("tmp");
        let images = write_image_folder(&dir.path().join("data"), 2, 3).expect("images");
        let spec = FixtureSpec::new(vec!["class_0".into(), "class_1".into()]);
        let m = write_bundle(&dir.path().join("b"), &spec, &images).expect("bundle");
        let b = Bundle::open(&dir.path().join("b")).expect("verified");
        assert_eq!(b.manifest, m);
        assert_eq!(m.embedding.dim, 512);
        let g = b.seed_gallery().expect("readable").expect("present");
        assert_eq!(
            g.meta.ids,
            [
                "class_0/0",
                "class_0/1",
                "class_0/2",
                "class_1/0",
                "class_1/1",
                "class_1/2"
            ]
        );
        assert_eq!(g.meta.labels, [0, 0, 0, 1, 1, 1]);
        for row in g.vectors.chunks(512) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
        assert_ne!(g.vectors[..512], g.vectors[512..1024]);
        let p = b.probe().expect("probe");
        let probs = p.probabilities(&g.vectors[..512]).expect("classify");
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // The same spec gives the same bytes: fixtures are reproducible.
        write_bundle(&dir.path().join("c"), &spec, &images).expect("again");
        for f in [bundle::ENCODER, bundle::PROBE, bundle::GALLERY_VECTORS] {
            let a = std::fs::read(dir.path().join("b").join(f)).expect("read");
            assert_eq!(
                a,
                std::fs::read(dir.path().join("c").join(f)).expect("read"),
                "{f}"
            );
        }
    }
}
