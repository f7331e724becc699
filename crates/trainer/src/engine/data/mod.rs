//! Datasets on disk: where the images are, which class each belongs to, and how they split.
//!
//! [`open`] understands two layouts. The Stanford Dogs layout is used as published, with its
//! official `lists/*.mat` train/test split (so results are comparable with other work) and,
//! optionally, its bounding boxes. Any other folder with one subfolder per class is read as an
//! "ImageFolder" tree and split with a seeded, stratified shuffle, so users can bring their own
//! photos. Only paths and labels are listed here; [`decode_samples`] turns them into pixels.

pub mod annotation;
pub mod cache;
mod folder;
pub mod mat;
mod stanford;

pub use cache::{decode_samples, DecodedImages, Skipped};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a dataset could not be opened. Each variant names the offending path or key.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset root {} does not exist or is not a directory", .0.display())]
    MissingRoot(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no class folders (with images) found in {}", .0.display())]
    NoClasses(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Mat {
        path: PathBuf,
        source: mat::MatError,
    },
    #[error("{}: variable `{name}` is missing or is not {expected}", path.display())]
    MatVariable {
        path: PathBuf,
        name: &'static str,
        expected: &'static str,
    },
    #[error("{}: `file_list` has {files} entries but `{other}` has {count}", path.display())]
    ListLengthMismatch {
        path: PathBuf,
        files: usize,
        other: &'static str,
        count: usize,
    },
    #[error("{}: entry {index} ({file}) has label {label}, not a whole number in 1..={classes}", path.display())]
    BadLabel {
        path: PathBuf,
        index: usize,
        file: String,
        label: f64,
        classes: usize,
    },
    #[error("{}: entry {index} ({file}) has label {label}, which is class `{expected}`, but the file is not in that folder", path.display())]
    LabelMismatch {
        path: PathBuf,
        index: usize,
        file: String,
        label: usize,
        expected: String,
    },
    #[error("{}: entry {index} ({file}) is not a plain relative path inside the dataset", path.display())]
    UnsafeEntry {
        path: PathBuf,
        index: usize,
        file: String,
    },
    #[error("bad annotation {}: {source}", path.display())]
    Annotation {
        path: PathBuf,
        source: annotation::AnnotationError,
    },
    #[error("invalid dataset option `{option}`: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
}

/// A bounding box in pixels of the original image; `xmax`/`ymax` are exclusive when cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    pub xmin: u32,
    pub ymin: u32,
    pub xmax: u32,
    pub ymax: u32,
}

/// One image of a split.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// 0-based index into [`Dataset::classes`].
    pub label: usize,
    /// Crop box, set only when bounding-box crops were requested and an annotation exists.
    pub bbox: Option<BBox>,
}

/// Which on-disk layout a dataset was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DatasetLayout {
    /// `Images/`, `lists/*.mat` and optionally `Annotation/`: the official split.
    StanfordDogs,
    /// One subfolder per class; the split is computed.
    ImageFolder,
}

/// An opened dataset: class names (label order) and the two splits.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: DatasetLayout,
    /// Folder names in label order (e.g. `n02085620-Chihuahua`); see [`simsiam::classes::display_name`].
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub test: Vec<Sample>,
}

/// What a layout loader found: class names in label order and both splits.
struct Listing {
    classes: Vec<String>,
    train: Vec<Sample>,
    test: Vec<Sample>,
}

/// How much of a dataset to use and how to split it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetOptions {
    /// Keep only the first N classes (labels 0..N), for quick experiments.
    pub breeds: Option<usize>,
    /// At most M images per class in each split: the first M in list order (deterministic).
    pub max_per_breed: Option<usize>,
    /// Stanford layout: crop to the first object's box from `Annotation/` where one exists.
    pub bbox_crop: bool,
    /// ImageFolder layout: fraction of each class that goes to the test split.
    pub test_fraction: f64,
    /// ImageFolder layout: seed of the stratified split.
    pub seed: u64,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self {
            breeds: None,
            max_per_breed: None,
            bbox_crop: false,
            test_fraction: 0.2,
            seed: 0,
        }
    }
}

/// Opens the dataset at `root`, detecting its layout (see the module docs).
pub fn open(root: &Path, opts: &DatasetOptions) -> Result<Dataset, DataError> {
    validate(opts)?;
    if !root.is_dir() {
        return Err(DataError::MissingRoot(root.to_path_buf()));
    }
    let (layout, listing) =
        if root.join("lists/train_list.mat").is_file() && root.join("Images").is_dir() {
            (DatasetLayout::StanfordDogs, stanford::load(root, opts)?)
        } else {
            (DatasetLayout::ImageFolder, folder::load(root, opts)?)
        };
    Ok(Dataset {
        root: root.to_path_buf(),
        layout,
        classes: listing.classes,
        train: listing.train,
        test: listing.test,
    })
}

fn validate(opts: &DatasetOptions) -> Result<(), DataError> {
    if opts.breeds == Some(0) {
        return Err(DataError::InvalidOption {
            option: "breeds",
            reason: "must be at least 1".into(),
        });
    }
    if opts.max_per_breed == Some(0) {
        return Err(DataError::InvalidOption {
            option: "max_per_breed",
            reason: "must be at least 1".into(),
        });
    }
    if !(0.0..=1.0).contains(&opts.test_fraction) {
        return Err(DataError::InvalidOption {
            option: "test_fraction",
            reason: format!("{} is not in [0, 1]", opts.test_fraction),
        });
    }
    Ok(())
}

/// Sorted names of the visible subdirectories of `dir` (hidden ones are tool litter).
fn sorted_subdirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Keeps items of classes `0..breeds` and at most `max_per_breed` per class, in order.
fn subset<T>(items: Vec<T>, label: impl Fn(&T) -> usize, opts: &DatasetOptions) -> Vec<T> {
    let breeds = opts.breeds.unwrap_or(usize::MAX);
    let max = opts.max_per_breed.unwrap_or(usize::MAX);
    let mut seen: std::collections::HashMap<usize, usize> = Default::default();
    items
        .into_iter()
        .filter(|item| {
            let l = label(item);
            let n = seen.entry(l).or_default();
            *n += 1;
            l < breeds && *n <= max
        })
        .collect()
}

/// The shared copy of the real data beside the project (`../shared/data`), which tests
/// that need real files read, skipping with a message when it is absent.
#[cfg(test)]
pub(crate) const SHARED_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

#[cfg(test)]
mod tests;
