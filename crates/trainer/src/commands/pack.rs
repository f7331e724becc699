//! `trainer pack`: a compact copy of a dataset split, to carry training to another machine
//! (a GPU machine that receives at most 64 MiB per call, say).
//!
//! Every image of the split is decoded once, cropped to its box when the configuration
//! asks for it, shrunk so that its shorter side is `side` pixels, and re-encoded as JPEG
//! at `quality`, into the ImageFolder layout `out/<class folder>/<image>.jpg`. The class
//! folders keep their names (`n02085620-Chihuahua`), so a model trained on the pack has the
//! classes, in the same order, of the dataset it came from, and `trainer eval` can then
//! score it on the full dataset here.

use crate::commands::seed_gallery::Split;
use crate::engine::data::{self, DatasetOptions};
use crate::TrainError;
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What `pack` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    pub images: usize,
    pub bytes: u64,
    /// Images that could not be decoded (named in a warning).
    pub skipped: usize,
}

/// Writes `split` of the dataset at `root` into `out` at shorter side `side`.
pub fn pack(
    root: &Path,
    out: &Path,
    split: Split,
    opts: &DatasetOptions,
    side: u32,
    quality: u8,
) -> Result<Packed, TrainError> {
    let ds = data::open(root, opts)?;
    let samples = crate::commands::seed_gallery::split_samples(&ds, split);
    let decoded = data::decode_samples(&samples, Some(side), "pack");
    let files: Vec<PathBuf> = decoded
        .paths
        .iter()
        .zip(&decoded.labels)
        .map(|(path, &label)| {
            let name = path.file_stem().unwrap_or_default();
            out.join(&ds.classes[label])
                .join(name)
                .with_extension("jpg")
        })
        .collect();
    for class in &ds.classes {
        let dir = out.join(class);
        std::fs::create_dir_all(&dir).map_err(TrainError::io(&dir))?;
    }
    let bytes = decoded
        .images
        .par_iter()
        .zip(&files)
        .map(|(img, file)| {
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut jpeg, quality)
                .encode_image(img)
                .map_err(|e| TrainError::io(file)(std::io::Error::other(e)))?;
            std::fs::write(file, &jpeg).map_err(TrainError::io(file))?;
            Ok(jpeg.len() as u64)
        })
        .sum::<Result<u64, TrainError>>()?;
    Ok(Packed {
        images: files.len(),
        bytes,
        skipped: decoded.skipped.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use simsiam_onnx::fixture;

    #[test]
    fn a_pack_is_an_image_folder_with_the_same_classes_at_the_new_size() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("data");
        fixture::write_image_folder(&root, 3, 5).expect("images");
        let opts = DatasetOptions {
            test_fraction: 0.2,
            ..Default::default()
        };
        let out = dir.path().join("pack");
        let p = pack(&root, &out, Split::Train, &opts, 24, 80).expect("pack");
        assert_eq!(
            (p.images, p.skipped),
            (12, 0),
            "4 training images of 3 classes"
        );
        assert!(p.bytes > 0);
        let packed = data::open(
            &out,
            &DatasetOptions {
                test_fraction: 0.0,
                ..Default::default()
            },
        )
        .expect("the pack opens as an image folder");
        let original = data::open(&root, &opts).expect("original");
        assert_eq!(packed.classes, original.classes);
        assert_eq!(packed.train.len(), 12);
        assert!(packed.test.is_empty());
        let img = simsiam::decode::load_rgb(&packed.train[0].path).expect("a JPEG");
        assert_eq!(img.height(), 24, "shorter side 24 (48×40 → 29×24)");
    }
}
