//! The ImageFolder layout: `root/<class>/**/<image>.{jpg,jpeg,png}`.
//!
//! There is no official split, so each class is shuffled with its own seeded stream and cut at
//! `test_fraction`. Stratifying keeps rare classes in both splits; a per-class stream (rather
//! than one shared RNG) means the split of a class does not change when `breeds` drops other
//! classes, so quick subset runs see exactly the images of the full run.

use super::{sorted_subdirs, DataError, DatasetOptions, Listing, Sample};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Returns the classes (sorted folders holding images) and the train and test samples,
/// each ordered by label, then path.
pub(super) fn load(root: &Path, opts: &DatasetOptions) -> Result<Listing, DataError> {
    let limit = opts.breeds.unwrap_or(usize::MAX);
    let (mut classes, mut train, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for name in sorted_subdirs(root)? {
        if classes.len() >= limit {
            break;
        }
        let dir = root.join(&name);
        let mut files = image_files(&dir)?;
        if files.is_empty() {
            // Labels are positions among the class folders, so an empty folder (a stray
            // `thumbnails/`, say) must not take one.
            log::warn!("ignoring {}: no jpg/jpeg/png files", dir.display());
            continue;
        }
        let label = classes.len();
        classes.push(name);
        files.sort();
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(label as u64);
        files.shuffle(&mut rng);
        let n_test = test_count(files.len(), opts.test_fraction);
        let rest = files.split_off(n_test);
        for (split, mut paths) in [(&mut test, files), (&mut train, rest)] {
            paths.truncate(opts.max_per_breed.unwrap_or(usize::MAX));
            paths.sort();
            split.extend(paths.into_iter().map(|path| Sample {
                path,
                label,
                bbox: None,
            }));
        }
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses(root.to_path_buf()));
    }
    Ok(Listing {
        classes,
        train,
        test,
    })
}

/// `round(n × fraction)` test images, leaving at least one for training when `n ≥ 2`
/// (and a lone image always in train: a class the model never trains on is useless).
fn test_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1))
}

/// Image files under `dir`, recursively; hidden entries are skipped and symlinked
/// directories are not followed (they could loop).
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let io = |source| DataError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type().map_err(io)?.is_dir() {
                pending.push(path);
            } else if is_image_name(&path) && path.is_file() {
                out.push(path);
            }
        }
    }
    Ok(out)
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_count_rounds_and_keeps_a_training_image() {
        assert_eq!(test_count(10, 0.2), 2);
        assert_eq!(test_count(7, 0.2), 1); // 1.4
        assert_eq!(test_count(8, 0.2), 2); // 1.6
        assert_eq!(test_count(2, 0.9), 1);
        assert_eq!(test_count(1, 0.9), 0);
        assert_eq!(test_count(5, 1.0), 4);
        assert_eq!(test_count(5, 0.0), 0);
    }

    #[test]
    fn recognises_image_extensions_case_insensitively() {
        for name in ["a.jpg", "b.JPEG", "c.Png"] {
            assert!(is_image_name(Path::new(name)), "{name}");
        }
        for name in ["d.gif", "e", "f.jpg.txt"] {
            assert!(!is_image_name(Path::new(name)), "{name}");
        }
    }
}
