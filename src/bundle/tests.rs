use super::*;
use crate::preprocess::EvalTransform;

fn manifest() -> Manifest {
    Manifest {
        format_version: 1,
        name: "test".into(),
        version: "0.1.0".into(),
        created: "2026-01-01T00:00:00Z".into(),
        backbone: "resnet18".into(),
        small_stem: false,
        input: Manifest::input_spec(&EvalTransform::for_crop(64)),
        embedding: EmbeddingSpec {
            dim: 2,
            normalization: "l2".into(),
            input_name: "images".into(),
            output_name: "embedding".into(),
        },
        onnx: OnnxSpec {
            opset: 17,
            ir_version: 8,
            fp16_weights: false,
            nodes: 1,
            parity_max_abs_diff: 0.0,
        },
        classes: vec!["a".into(), "b".into()],
        training: TrainingSummary::default(),
        files: BTreeMap::new(),
    }
}

fn probe() -> LinearProbe {
    LinearProbe {
        classes: vec!["a".into(), "b".into()],
        feature_dim: 2,
        mean: vec![0.0; 2],
        std: vec![1.0; 2],
        weight: vec![1.0, 0.0, 0.0, 1.0],
        bias: vec![0.0; 2],
        weight_decay: 0.0,
        epochs: 1,
    }
}

fn bundle_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(ENCODER), b"not really onnx").expect("write");
    probe().save(&dir.path().join(PROBE)).expect("probe");
    write_manifest(dir.path(), &mut manifest(), &[ENCODER, PROBE]).expect("manifest");
    dir
}

#[test]
fn opens_a_consistent_bundle() {
    let dir = bundle_dir();
    let b = Bundle::open(dir.path()).expect("valid bundle");
    assert_eq!(b.manifest.files[ENCODER].bytes, 15);
    assert_eq!(b.manifest.files[ENCODER].sha256.len(), 64);
    assert_eq!(b.probe().expect("probe"), probe());
    assert_eq!(b.manifest.eval_transform(), EvalTransform::for_crop(64));
    assert!(b.seed_gallery().expect("no gallery").is_none());
    assert!(
        !dir.path().join("manifest.json.tmp").exists(),
        "atomic write leaves no temporary file"
    );
}

#[test]
fn a_tampered_file_is_refused_by_name() {
    let dir = bundle_dir();
    std::fs::write(dir.path().join(ENCODER), b"not really onnx!").expect("tamper");
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, BundleError::HashMismatch { file, .. } if file == ENCODER),
        "{err}"
    );
    assert!(err.to_string().contains("encoder.onnx"));

    let dir = bundle_dir();
    std::fs::remove_file(dir.path().join(PROBE)).expect("remove");
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("probe.json"), "{err}");
}

#[test]
fn gallery_round_trips_and_is_verified() {
    let dir = bundle_dir();
    let g = SeedGallery {
        meta: SeedGalleryMeta {
            dim: 2,
            ids: vec!["x".into(), "y".into(), "z".into()],
            labels: vec![0, 1, 1],
            paths: vec!["p/x.jpg".into(), "p/y.jpg".into(), "p/z.jpg".into()],
        },
        vectors: vec![1.0, 0.0, 0.0, 1.0, -0.5, f32::MIN_POSITIVE],
    };
    g.save(dir.path()).expect("save");
    write_manifest(
        dir.path(),
        &mut manifest(),
        &[ENCODER, PROBE, GALLERY_META, GALLERY_VECTORS],
    )
    .expect("manifest");
    let b = Bundle::open(dir.path()).expect("valid");
    assert_eq!(
        b.seed_gallery().expect("load").expect("present"),
        g,
        "same ids, labels, paths and bit-identical vectors"
    );
    std::fs::write(dir.path().join(GALLERY_VECTORS), [0u8; 24]).expect("tamper");
    assert!(Bundle::open(dir.path())
        .unwrap_err()
        .to_string()
        .contains("gallery.f32"));
    let bad = SeedGallery {
        vectors: vec![1.0],
        ..g
    };
    assert!(
        bad.save(dir.path()).is_err(),
        "inconsistent lengths are refused"
    );
}

/// A change to the test probe, and the message that must name it.
type ProbeCase = (fn(&mut LinearProbe), &'static str);

#[test]
fn a_probe_that_disagrees_with_the_manifest_is_refused_naming_both_values() {
    let cases: [ProbeCase; 3] = [
        (
            |p| {
                p.classes.push("c".into());
                p.bias.push(0.0);
                p.weight.extend([0.0; 2]);
            },
            "the probe has 3 classes, the manifest 2",
        ),
        (
            |p| p.classes.swap(0, 1),
            "class 0 is \"b\" in the probe but \"a\" in the manifest",
        ),
        (
            |p| {
                p.feature_dim = 1;
                p.mean.truncate(1);
                p.std.truncate(1);
                p.weight.truncate(2);
            },
            "the probe takes 1-d features, but the manifest's embeddings are 2-d",
        ),
    ];
    for (change, message) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(ENCODER), b"not really onnx").expect("write");
        let mut p = probe();
        change(&mut p);
        p.save(&dir.path().join(PROBE)).expect("probe");
        write_manifest(dir.path(), &mut manifest(), &[ENCODER, PROBE]).expect("manifest");
        let b = Bundle::open(dir.path()).expect("hashes match");
        let err = b.probe().unwrap_err().to_string();
        assert!(err.contains(message) && err.contains("probe.json"), "{err}");
    }
}
