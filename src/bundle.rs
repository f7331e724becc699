//! The model bundle: what `trainer export` writes and the server loads, without libtorch.
//!
//! ```text
//! bundle/
//!   manifest.json   model, preprocessing, classes, training summary, sha256 of every file
//!   encoder.onnx    backbone + global pooling + l2 normalisation, BN folded
//!   probe.json      linear-probe breed classifier (crate::probe)
//!   gallery.json    optional: ids, labels, source paths of embedded images
//!   gallery.f32     optional: their embeddings, little-endian f32, row-major
//! ```
//! Every file is listed in the manifest with its sha256; [`Bundle::open`] refuses a bundle
//! whose files do not match, naming the file, so a corrupted or hand-edited bundle never
//! serves wrong answers silently.

use crate::files::{write_atomic, FileError};
use crate::preprocess::EvalTransform;
use crate::probe::{LinearProbe, ProbeError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
pub const ENCODER: &str = "encoder.onnx";
pub const PROBE: &str = "probe.json";
pub const GALLERY_META: &str = "gallery.json";
pub const GALLERY_VECTORS: &str = "gallery.f32";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("{path}: not valid JSON for this file: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// Well-formed, but inconsistent: a required file not listed, lengths that disagree.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("bundle file {file} does not match its sha256 in the manifest (expected {expected}, found {found}): the bundle is corrupt or was modified")]
    HashMismatch {
        file: String,
        expected: String,
        found: String,
    },
    #[error("bundle file {file} is listed in the manifest but missing from {dir}")]
    MissingFile { file: String, dir: PathBuf },
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

fn json(path: &Path) -> impl FnOnce(serde_json::Error) -> BundleError + '_ {
    move |source| BundleError::Json {
        path: path.to_path_buf(),
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| FileError::at(path)(source).into()
}

/// How request pixels become model input; mirrors [`EvalTransform`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Model input side (the centre crop).
    pub size: u32,
    /// The shorter side is resized to this before the crop (bilinear).
    pub resize: u32,
    pub policy: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingSpec {
    pub dim: usize,
    /// "l2": embeddings have unit length, so the dot product is the cosine similarity.
    pub normalization: String,
    pub input_name: String,
    pub output_name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnnxSpec {
    pub opset: i64,
    pub ir_version: i64,
    pub fp16_weights: bool,
    pub nodes: usize,
    /// Largest |ONNX Runtime − tch| over real preprocessed images, checked at export.
    pub parity_max_abs_diff: f64,
}

/// Training and evaluation figures of the run the bundle was exported from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub dataset: String,
    pub epochs: usize,
    pub steps: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub knn_top1: Option<f64>,
    pub knn_top5: Option<f64>,
    pub probe_top1: Option<f64>,
    pub probe_top5: Option<f64>,
    pub random_init_knn_top1: Option<f64>,
    pub random_init_probe_top1: Option<f64>,
    /// Absent from bundles written before these figures were recorded.
    #[serde(default)]
    pub random_init_knn_top5: Option<f64>,
    #[serde(default)]
    pub random_init_probe_top5: Option<f64>,
    /// Where and how fast it trained, e.g. `cuda:0 (NVIDIA H200)`; absent from bundles
    /// written before these were recorded.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub image_size: Option<u32>,
    /// Training time summed over epochs and stages (all invocations of resumed runs).
    #[serde(default)]
    pub wall_seconds: Option<f64>,
    /// Mean training throughput of the last stage, images per second.
    #[serde(default)]
    pub img_per_s: Option<f64>,
    /// Every stage that made the encoder, in order: SimSiam pretraining, then supervised
    /// fine-tuning when there was one. Absent from bundles written before fine-tuning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSummary>,
    /// Which classifier ships as `probe.json` and why (fine-tuned runs: the fine-tuning
    /// head or a probe refitted on the frozen features, the better on validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<String>,
}

/// One training stage of a bundle's encoder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSummary {
    /// `pretrain` (SimSiam, no labels) or `finetune` (cross-entropy on labels).
    pub stage: String,
    /// The recipe in one line: backbone, size, batch, learning rates, regularisation.
    pub recipe: String,
    /// Epochs completed.
    pub epochs: usize,
    /// Training time summed over epochs (all invocations of a resumed run).
    pub wall_seconds: f64,
    /// Mean training throughput, images per second.
    pub img_per_s: f64,
    /// Where it trained, e.g. `cpu: AMD EPYC, 2 threads`.
    pub device: String,
    pub image_size: u32,
    /// Fine-tuning: labelled images per breed (absent: all but the validation slice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_per_breed: Option<usize>,
    /// Fine-tuning: where the encoder's weights came from (`pretrained encoder`, `random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub backbone: String,
    pub small_stem: bool,
    pub input: InputSpec,
    pub embedding: EmbeddingSpec,
    pub onnx: OnnxSpec,
    /// Class (breed folder) names in label order.
    pub classes: Vec<String>,
    pub training: TrainingSummary,
    /// sha256 and size of every other file of the bundle.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The preprocessing the encoder expects, as the shared transform.
    pub fn eval_transform(&self) -> EvalTransform {
        EvalTransform {
            resize: self.input.resize,
            crop: self.input.size,
            mean: self.input.mean,
            std: self.input.std,
        }
    }

    /// The [`InputSpec`] describing `t`.
    pub fn input_spec(t: &EvalTransform) -> InputSpec {
        InputSpec {
            size: t.crop,
            resize: t.resize,
            policy: format!("resize the shorter side to {} px (bilinear), centre-crop {}x{}, RGB, (x/255 - mean) / std", t.resize, t.crop, t.crop),
            mean: t.mean,
            std: t.std,
            layout: "NCHW float32".into(),
        }
    }
}

/// sha256 of a file, lowercase hex, and its size.
pub fn hash_file(path: &Path) -> Result<FileEntry, BundleError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(FileEntry {
        sha256: hex(&Sha256::digest(&bytes)),
        bytes: bytes.len() as u64,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (Re)computes the hashes of `files` in `dir` and writes the manifest atomically.
pub fn write_manifest(
    dir: &Path,
    manifest: &mut Manifest,
    files: &[&str],
) -> Result<(), BundleError> {
    manifest.files.clear();
    for f in files {
        manifest
            .files
            .insert((*f).to_string(), hash_file(&dir.join(f))?);
    }
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(manifest).map_err(json(&path))?;
    Ok(write_atomic(&path, text.as_bytes())?)
}

/// A verified bundle on disk.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads the manifest and checks every listed file against its sha256.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(json(&path))?;
        for required in [ENCODER, PROBE] {
            if !manifest.files.contains_key(required) {
                return Err(BundleError::Invalid {
                    path: path.clone(),
                    message: format!("the manifest does not list {required}"),
                });
            }
        }
        for (file, entry) in &manifest.files {
            let p = dir.join(file);
            if !p.exists() {
                return Err(BundleError::MissingFile {
                    file: file.clone(),
                    dir: dir.to_path_buf(),
                });
            }
            let found = hash_file(&p)?;
            if found.sha256 != entry.sha256 {
                return Err(BundleError::HashMismatch {
                    file: file.clone(),
                    expected: entry.sha256.clone(),
                    found: found.sha256,
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn encoder_bytes(&self) -> Result<Vec<u8>, BundleError> {
        let p = self.dir.join(ENCODER);
        std::fs::read(&p).map_err(io(&p))
    }

    /// The breed classifier, checked against the manifest: the same classes in the same
    /// order, and features as wide as the encoder's embeddings.
    pub fn probe(&self) -> Result<LinearProbe, BundleError> {
        let probe = LinearProbe::load(&self.dir.join(PROBE))?;
        let m = &self.manifest;
        let mismatch = |message: String| BundleError::Invalid {
            path: self.dir.join(PROBE),
            message,
        };
        if probe.feature_dim != m.embedding.dim {
            return Err(mismatch(format!(
                "the probe takes {}-d features, but the manifest's embeddings are {}-d",
                probe.feature_dim, m.embedding.dim
            )));
        }
        if probe.classes.len() != m.classes.len() {
            return Err(mismatch(format!(
                "the probe has {} classes, the manifest {}",
                probe.classes.len(),
                m.classes.len()
            )));
        }
        if let Some(i) = (0..m.classes.len()).find(|&i| probe.classes[i] != m.classes[i]) {
            return Err(mismatch(format!(
                "class {i} is {:?} in the probe but {:?} in the manifest",
                probe.classes[i], m.classes[i]
            )));
        }
        Ok(probe)
    }

    /// The gallery the bundle ships, which seeds a server's gallery on its first start.
    pub fn seed_gallery(&self) -> Result<Option<SeedGallery>, BundleError> {
        if self.manifest.files.contains_key(GALLERY_META) {
            SeedGallery::load(&self.dir).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Ids, labels and source paths of the images a bundle ships embedded (`gallery.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedGalleryMeta {
    pub dim: usize,
    pub ids: Vec<String>,
    pub labels: Vec<usize>,
    pub paths: Vec<String>,
}

/// The embedded reference images a bundle ships (`trainer gallery` writes them): a new
/// server's gallery starts as a copy of them, then lives on in its own directory.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedGallery {
    pub meta: SeedGalleryMeta,
    /// Row-major `ids.len() × dim`.
    pub vectors: Vec<f32>,
}

impl SeedGallery {
    /// Writes `gallery.json` and `gallery.f32` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        let n = self.meta.ids.len();
        if self.meta.labels.len() != n
            || self.meta.paths.len() != n
            || self.vectors.len() != n * self.meta.dim
        {
            return Err(BundleError::Invalid {
                path: dir.join(GALLERY_META),
                message: "ids, labels, paths and vectors disagree in length".into(),
            });
        }
        let bytes: Vec<u8> = self.vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(&dir.join(GALLERY_VECTORS), &bytes)?;
        let path = dir.join(GALLERY_META);
        let text = serde_json::to_string(&self.meta).map_err(json(&path))?;
        Ok(write_atomic(&path, text.as_bytes())?)
    }

    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(GALLERY_META);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let meta: SeedGalleryMeta = serde_json::from_str(&text).map_err(json(&path))?;
        let vpath = dir.join(GALLERY_VECTORS);
        let bytes = std::fs::read(&vpath).map_err(io(&vpath))?;
        let n = meta.ids.len();
        if bytes.len() != n * meta.dim * 4 || meta.labels.len() != n || meta.paths.len() != n {
            return Err(BundleError::Invalid {
                path: vpath,
                message: format!("expected {n} vectors of {} floats", meta.dim),
            });
        }
        let vectors = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { meta, vectors })
    }
}

#[cfg(test)]
mod tests;
