//! The Stanford Dogs layout: `Images/<wnid>-<breed>/…`, `lists/{train,test}_list.mat` and an
//! optional `Annotation/` folder.
//!
//! The split comes from the official lists rather than a fresh shuffle so that numbers are
//! comparable with published results. The lists' 1-based labels are checked against each
//! file's folder, because a list from another copy of the dataset (or a re-sorted class
//! order) would otherwise silently train on wrong labels.

use super::mat::{read_mat, MatValue};
use super::{annotation, sorted_subdirs, subset, DataError, DatasetOptions, Listing, Sample};
use std::collections::HashMap;
use std::path::{Component, Path};

/// Returns the classes (sorted `Images/` folders) and the train and test samples.
pub(super) fn load(root: &Path, opts: &DatasetOptions) -> Result<Listing, DataError> {
    let images = root.join("Images");
    let mut classes = sorted_subdirs(&images)?;
    if classes.is_empty() {
        return Err(DataError::NoClasses(images));
    }
    let lists = root.join("lists");
    let train = read_list(root, &lists.join("train_list.mat"), &classes, opts)?;
    let test_list = lists.join("test_list.mat");
    let test = if test_list.is_file() {
        read_list(root, &test_list, &classes, opts)?
    } else {
        log::warn!(
            "{} is missing: the test split is empty",
            test_list.display()
        );
        Vec::new()
    };
    if let Some(n) = opts.breeds {
        classes.truncate(n);
    }
    Ok(Listing {
        classes,
        train,
        test,
    })
}

/// Reads one split list, validating every label against its file's folder.
fn read_list(
    root: &Path,
    list: &Path,
    classes: &[String],
    opts: &DatasetOptions,
) -> Result<Vec<Sample>, DataError> {
    let vars = read_mat(list).map_err(|source| DataError::Mat {
        path: list.to_path_buf(),
        source,
    })?;
    let files = strings(&vars, list, "file_list")?;
    let labels = vars
        .get("labels")
        .and_then(MatValue::as_f64)
        .ok_or_else(|| missing(list, "labels", "a numeric array"))?;
    check_len(list, files.len(), "labels", labels.len())?;
    // The annotation list is optional: the name can be derived from the image's.
    let annotations = match vars.get("annotation_list") {
        Some(v) => {
            let a = v
                .as_strings()
                .ok_or_else(|| missing(list, "annotation_list", "a cell array of strings"))?;
            check_len(list, files.len(), "annotation_list", a.len())?;
            Some(a)
        }
        None => None,
    };

    let mut entries = Vec::with_capacity(files.len());
    for (index, (file, &raw)) in files.iter().zip(labels).enumerate() {
        let label = class_of(list, index, file, raw, classes)?;
        let sample = Sample {
            path: root.join("Images").join(file),
            label,
            bbox: None,
        };
        entries.push((sample, index));
    }
    // Subset first so that only the annotations of kept images are read.
    let mut kept = Vec::with_capacity(entries.len());
    for (mut sample, index) in subset(entries, |e| e.0.label, opts) {
        if opts.bbox_crop {
            let rel = match &annotations {
                Some(a) => a[index].clone(),
                None => files[index].trim_end_matches(".jpg").to_string(),
            };
            sample.bbox = annotation::first_bbox(&root.join("Annotation").join(rel))?;
        }
        kept.push(sample);
    }
    Ok(kept)
}

/// Turns a 1-based list label into a 0-based class, checking it names the file's folder.
fn class_of(
    list: &Path,
    index: usize,
    file: &str,
    raw: f64,
    classes: &[String],
) -> Result<usize, DataError> {
    let in_range = raw.fract() == 0.0 && raw >= 1.0 && raw <= classes.len() as f64;
    if !in_range {
        return Err(DataError::BadLabel {
            path: list.to_path_buf(),
            index,
            file: file.to_string(),
            label: raw,
            classes: classes.len(),
        });
    }
    // A list is data, not trusted code: `..` or an absolute path must not reach outside.
    let plain = Path::new(file)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(DataError::UnsafeEntry {
            path: list.to_path_buf(),
            index,
            file: file.to_string(),
        });
    }
    let label = raw as usize - 1;
    let folder = file.split(['/', '\\']).next().unwrap_or_default();
    if folder != classes[label] {
        return Err(DataError::LabelMismatch {
            path: list.to_path_buf(),
            index,
            file: file.to_string(),
            label: label + 1,
            expected: classes[label].clone(),
        });
    }
    Ok(label)
}

fn strings(
    vars: &HashMap<String, MatValue>,
    list: &Path,
    name: &'static str,
) -> Result<Vec<String>, DataError> {
    vars.get(name)
        .and_then(MatValue::as_strings)
        .ok_or_else(|| missing(list, name, "a cell array of strings"))
}

fn missing(list: &Path, name: &'static str, expected: &'static str) -> DataError {
    DataError::MatVariable {
        path: list.to_path_buf(),
        name,
        expected,
    }
}

fn check_len(
    list: &Path,
    files: usize,
    other: &'static str,
    count: usize,
) -> Result<(), DataError> {
    if files == count {
        Ok(())
    } else {
        Err(DataError::ListLengthMismatch {
            path: list.to_path_buf(),
            files,
            other,
            count,
        })
    }
}
