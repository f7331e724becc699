//! Tests of [`open`] on generated ImageFolder and Stanford trees, and on the real Stanford
//! Dogs copy when `../shared/data` is present.

use super::mat::tests::{cell_column, double_column, mat_file};
use super::*;
use std::collections::HashSet;
use tempfile::TempDir;

fn touch(path: &Path) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, b"not decoded by open()").unwrap();
}

/// cats: 10 images, dogs: 7 (mixed-case extensions, one nested), n01-x: 3, plus litter.
fn image_folder() -> TempDir {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    (0..10).for_each(|i| touch(&root.join(format!("cats/c{i}.jpg"))));
    (0..5).for_each(|i| touch(&root.join(format!("dogs/d{i}.JPEG"))));
    touch(&root.join("dogs/d5.Png"));
    touch(&root.join("dogs/nested/d6.jpg"));
    touch(&root.join("dogs/notes.txt"));
    (0..3).for_each(|i| touch(&root.join(format!("n01-x/x{i}.png"))));
    touch(&root.join("empty/readme.txt"));
    touch(&root.join(".cache/c.jpg"));
    touch(&root.join("stray.jpg"));
    dir
}

fn names(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| s.path.to_string_lossy().into_owned())
        .collect()
}

fn count(samples: &[Sample], label: usize) -> usize {
    samples.iter().filter(|s| s.label == label).count()
}

#[test]
fn image_folder_split_is_stratified_and_complete() {
    let dir = image_folder();
    let ds = open(dir.path(), &DatasetOptions::default()).unwrap();
    assert_eq!(ds.layout, DatasetLayout::ImageFolder);
    assert_eq!(ds.classes, ["cats", "dogs", "n01-x"]);
    // round(n × 0.2) per class: 10 → 2, 7 → 1, 3 → 1.
    let per_class: Vec<_> = (0..3)
        .map(|l| (count(&ds.train, l), count(&ds.test, l)))
        .collect();
    assert_eq!(per_class, [(8, 2), (6, 1), (2, 1)]);
    let train: HashSet<_> = names(&ds.train).into_iter().collect();
    let test: HashSet<_> = names(&ds.test).into_iter().collect();
    assert!(train.is_disjoint(&test));
    assert_eq!(train.len() + test.len(), 20);
    assert!(train
        .union(&test)
        .any(|p| p.ends_with("dogs/nested/d6.jpg")));
    // Ordered by label, then path.
    let keys: Vec<_> = ds.train.iter().map(|s| (s.label, s.path.clone())).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn image_folder_split_depends_only_on_the_seed() {
    let dir = image_folder();
    let with_seed = |seed| {
        let opts = DatasetOptions {
            seed,
            ..Default::default()
        };
        names(&open(dir.path(), &opts).unwrap().test)
    };
    assert_eq!(with_seed(3), with_seed(3));
    assert_ne!(with_seed(3), with_seed(4));
}

#[test]
fn image_folder_subsets_match_the_full_split() {
    let dir = image_folder();
    let full = open(dir.path(), &DatasetOptions::default()).unwrap();
    let two = DatasetOptions {
        breeds: Some(2),
        ..Default::default()
    };
    let ds = open(dir.path(), &two).unwrap();
    assert_eq!(ds.classes, ["cats", "dogs"]);
    let full_test: Vec<_> = full.test.iter().filter(|s| s.label < 2).cloned().collect();
    assert_eq!(
        ds.test, full_test,
        "dropping classes must not reshuffle the others"
    );

    let capped = DatasetOptions {
        max_per_breed: Some(3),
        ..Default::default()
    };
    let ds = open(dir.path(), &capped).unwrap();
    let per_class: Vec<_> = (0..3)
        .map(|l| (count(&ds.train, l), count(&ds.test, l)))
        .collect();
    assert_eq!(per_class, [(3, 2), (3, 1), (2, 1)]);
    let full_train: HashSet<_> = names(&full.train).into_iter().collect();
    assert!(names(&ds.train).iter().all(|p| full_train.contains(p)));
}

#[test]
fn open_reports_bad_roots_and_options() {
    let dir = TempDir::new().unwrap();
    let absent = dir.path().join("absent");
    assert!(matches!(
        open(&absent, &DatasetOptions::default()),
        Err(DataError::MissingRoot(_))
    ));
    touch(&dir.path().join("only_text/a.txt"));
    assert!(matches!(
        open(dir.path(), &DatasetOptions::default()),
        Err(DataError::NoClasses(_))
    ));
    let bad = DatasetOptions {
        test_fraction: 1.5,
        ..Default::default()
    };
    let err = open(dir.path(), &bad).unwrap_err();
    assert!(err.to_string().contains("test_fraction"), "{err}");
}

const CHI: &str = "n02085620-Chihuahua";
const SPA: &str = "n02085782-Japanese_spaniel";

/// A Stanford tree with two breeds; `labels` are the train list's 1-based labels.
fn stanford_tree(labels: &[f64]) -> TempDir {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    let files = [
        format!("{CHI}/a.jpg"),
        format!("{CHI}/b.jpg"),
        format!("{SPA}/c.jpg"),
    ];
    files
        .iter()
        .for_each(|f| touch(&root.join("Images").join(f)));
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let annotations: Vec<&str> = refs.iter().map(|f| f.trim_end_matches(".jpg")).collect();
    let list = |labels: &[f64]| {
        let vars = [
            cell_column("file_list", &refs),
            cell_column("annotation_list", &annotations),
            double_column("labels", labels, false),
        ];
        mat_file(&vars, true)
    };
    std::fs::create_dir_all(root.join("lists")).unwrap();
    std::fs::write(root.join("lists/train_list.mat"), list(labels)).unwrap();
    std::fs::write(root.join("lists/test_list.mat"), list(&[1.0, 1.0, 2.0])).unwrap();
    let xml = "<annotation><object><name>Chihuahua</name><bndbox><xmin>1</xmin><ymin>2</ymin>\
               <xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>";
    touch(&root.join("Annotation").join(CHI).join("a"));
    std::fs::write(root.join("Annotation").join(CHI).join("a"), xml).unwrap();
    dir
}

#[test]
fn stanford_layout_uses_the_lists_and_boxes() {
    let dir = stanford_tree(&[1.0, 1.0, 2.0]);
    let opts = DatasetOptions {
        bbox_crop: true,
        ..Default::default()
    };
    let ds = open(dir.path(), &opts).unwrap();
    assert_eq!(ds.layout, DatasetLayout::StanfordDogs);
    assert_eq!(ds.classes, [CHI, SPA]);
    assert_eq!(
        ds.train.iter().map(|s| s.label).collect::<Vec<_>>(),
        [0, 0, 1]
    );
    assert_eq!(
        ds.train[2].path,
        dir.path().join("Images").join(SPA).join("c.jpg")
    );
    // Only `a` has an annotation file; the others simply have no box.
    let bbox = BBox {
        xmin: 1,
        ymin: 2,
        xmax: 30,
        ymax: 40,
    };
    assert_eq!(
        ds.train.iter().map(|s| s.bbox).collect::<Vec<_>>(),
        [Some(bbox), None, None]
    );
    assert_eq!(ds.test.len(), 3);

    let ds = open(dir.path(), &DatasetOptions::default()).unwrap();
    assert!(
        ds.train.iter().all(|s| s.bbox.is_none()),
        "boxes only on request"
    );
    let opts = DatasetOptions {
        breeds: Some(1),
        max_per_breed: Some(1),
        ..Default::default()
    };
    let ds = open(dir.path(), &opts).unwrap();
    assert_eq!((ds.classes.len(), ds.train.len(), ds.test.len()), (1, 1, 1));
    assert!(ds.train[0].path.ends_with("a.jpg"));
}

#[test]
fn stanford_labels_are_validated_against_folders() {
    let dir = stanford_tree(&[1.0, 2.0, 2.0]);
    let err = open(dir.path(), &DatasetOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelMismatch {
                index: 1,
                label: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("train_list.mat"), "{err}");
    let dir = stanford_tree(&[1.0, 1.0, 3.0]);
    let err = open(dir.path(), &DatasetOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 2,
                classes: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn stanford_entries_cannot_escape_the_images_folder() {
    let dir = stanford_tree(&[1.0, 1.0, 2.0]);
    let sneaky = [format!("{CHI}/../../../etc/passwd")];
    let refs: Vec<&str> = sneaky.iter().map(String::as_str).collect();
    let vars = [
        cell_column("file_list", &refs),
        double_column("labels", &[1.0], false),
    ];
    std::fs::write(
        dir.path().join("lists/train_list.mat"),
        mat_file(&vars, false),
    )
    .unwrap();
    let err = open(dir.path(), &DatasetOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::UnsafeEntry { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn real_stanford_dogs_when_present() {
    let root = &Path::new(crate::engine::data::SHARED_DATA).join("stanford-dogs");
    if !root.join("lists/train_list.mat").is_file() {
        eprintln!(
            "skipping: the Stanford Dogs copy at {} is absent",
            root.display()
        );
        return;
    }
    let opts = DatasetOptions {
        breeds: Some(10),
        ..Default::default()
    };
    let ds = open(root, &opts).unwrap();
    assert_eq!(ds.layout, DatasetLayout::StanfordDogs);
    assert_eq!(
        (ds.classes.len(), ds.train.len(), ds.test.len()),
        (10, 1_000, 919)
    );
    assert_eq!(simsiam::classes::display_name(&ds.classes[0]), "Chihuahua");
    assert!(ds.train.iter().chain(&ds.test).all(|s| s.label < 10));
    assert!(ds.train[0].path.is_file(), "{}", ds.train[0].path.display());
    let full = open(root, &DatasetOptions::default()).unwrap();
    assert_eq!(
        (full.classes.len(), full.train.len(), full.test.len()),
        (120, 12_000, 8_580)
    );
}

#[test]
#[ignore = "decodes all 20,580 real images (a few seconds); run with --ignored"]
fn every_real_stanford_image_decodes() {
    let root = &Path::new(crate::engine::data::SHARED_DATA).join("stanford-dogs");
    if !root.join("lists/train_list.mat").is_file() {
        eprintln!(
            "skipping: the Stanford Dogs copy at {} is absent",
            root.display()
        );
        return;
    }
    let ds = open(root, &DatasetOptions::default()).unwrap();
    let all: Vec<Sample> = ds.train.into_iter().chain(ds.test).collect();
    let start = std::time::Instant::now();
    let out = decode_samples(&all, Some(80), "all");
    eprintln!(
        "decoded {} images in {:.1?}",
        out.images.len(),
        start.elapsed()
    );
    assert!(
        out.skipped.is_empty(),
        "{:?}",
        &out.skipped[..out.skipped.len().min(5)]
    );
    assert_eq!(out.images.len(), 20_580);
    assert!(out
        .images
        .iter()
        .all(|img| img.width().min(img.height()) == 80));
}
