//! `trainer gallery`: embeds a dataset through a bundle's ONNX encoder, with the bundle's
//! own preprocessing (the path the server takes), and stores it in the bundle as the
//! seed gallery a server starts from.

use crate::engine::data::{self, Dataset, DatasetOptions, Sample};
use crate::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use simsiam::bundle::{self, Bundle, SeedGallery, SeedGalleryMeta};
use simsiam::runtime;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Which split(s) `trainer gallery` embeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
    All,
}

/// Images per model run.
const CHUNK: usize = 128;

/// Embeds `split` of the dataset at `root` and stores it in the bundle `model` (its
/// manifest is rewritten with the new files' hashes). Returns (images, seconds).
pub fn gallery(
    model: &Path,
    root: &Path,
    split: Split,
    opts: &DatasetOptions,
    threads: usize,
) -> Result<(usize, f64), TrainError> {
    let started = Instant::now();
    let b = Bundle::open(model)?;
    let ds = data::open(root, opts)?;
    let samples = split_samples(&ds, split);
    let labels = bundle_labels(&b, &ds, root)?;
    let mut embedder = Embedder::new(&b, threads)?;
    let bar = progress(samples.len());
    let mut g = SeedGallery {
        meta: SeedGalleryMeta {
            dim: b.manifest.embedding.dim,
            ids: Vec::new(),
            labels: Vec::new(),
            paths: Vec::new(),
        },
        vectors: Vec::new(),
    };
    let mut skipped = 0;
    for chunk in samples.chunks(CHUNK) {
        // Decoding is parallel (rayon) inside decode_samples; the batch then runs at once.
        let decoded = data::decode_samples(chunk, None, "decode");
        skipped += decoded.skipped.len();
        g.vectors.extend(embedder.embed(&decoded.images)?);
        for (path, label) in decoded.paths.iter().zip(&decoded.labels) {
            add_entry(&mut g.meta, root, path, labels[*label]);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if skipped > 0 {
        log::warn!("{skipped} images could not be decoded and are not in the gallery");
    }
    store(model, &b, &g)?;
    Ok((g.meta.ids.len(), started.elapsed().as_secs_f64()))
}

/// The samples of `split`, training images first for `All`.
pub fn split_samples(ds: &Dataset, split: Split) -> Vec<Sample> {
    match split {
        Split::Train => ds.train.clone(),
        Split::Test => ds.test.clone(),
        Split::All => ds.train.iter().chain(&ds.test).cloned().collect(),
    }
}

/// The bundle's label of each dataset class, matched by name.
fn bundle_labels(b: &Bundle, ds: &Dataset, root: &Path) -> Result<Vec<usize>, TrainError> {
    let label_of: HashMap<&str, usize> = b
        .manifest
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    ds.classes
        .iter()
        .map(|class| {
            label_of
                .get(class.as_str())
                .copied()
                .ok_or_else(|| TrainError::UnknownClass {
                    root: root.to_path_buf(),
                    class: class.clone(),
                })
        })
        .collect()
}

/// The image's id is its path under `root` without extension (and without `Images/`,
/// Stanford Dogs' top folder), e.g. `n02085620-Chihuahua/n02085620_10074`.
fn add_entry(meta: &mut SeedGalleryMeta, root: &Path, path: &Path, label: usize) {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let id = rel
        .with_extension("")
        .to_string_lossy()
        .replace("Images/", "");
    meta.ids.push(id);
    meta.labels.push(label);
    meta.paths.push(rel.to_string_lossy().into_owned());
}

/// An ONNX Runtime session over the bundle's encoder with its preprocessing.
struct Embedder {
    session: runtime::Session,
    transform: simsiam::preprocess::EvalTransform,
}

impl Embedder {
    fn new(b: &Bundle, threads: usize) -> Result<Self, TrainError> {
        let session = runtime::cpu_session(&b.encoder_bytes()?, threads)?;
        Ok(Self {
            session,
            transform: b.manifest.eval_transform(),
        })
    }

    /// `images.len() × dim` unit vectors.
    fn embed(&mut self, images: &[image::RgbImage]) -> Result<Vec<f32>, TrainError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let t = &self.transform;
        let input: Vec<f32> = images.iter().flat_map(|img| t.to_vec(img)).collect();
        let side = t.crop as usize;
        let shape = [images.len(), 3, side, side];
        Ok(runtime::run_f32(&mut self.session, &input, shape)?.1)
    }
}

fn progress(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64).with_message("gallery");
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Writes the gallery files and the manifest that now lists them.
fn store(model: &Path, b: &Bundle, g: &SeedGallery) -> Result<(), TrainError> {
    g.save(model)?;
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
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn ids_drop_the_extension_and_the_images_folder() {
        let mut meta = SeedGalleryMeta {
            dim: 2,
            ids: vec![],
            labels: vec![],
            paths: vec![],
        };
        let root = PathBuf::from("/data/dogs");
        add_entry(&mut meta, &root, &root.join("Images/n1-Pug/p_1.jpg"), 3);
        add_entry(&mut meta, &root, Path::new("/elsewhere/x.png"), 0);
        assert_eq!(meta.ids, ["n1-Pug/p_1", "/elsewhere/x"]);
        assert_eq!(meta.paths, ["Images/n1-Pug/p_1.jpg", "/elsewhere/x.png"]);
        assert_eq!(meta.labels, [3, 0]);
    }
}
