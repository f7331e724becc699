//! The core crate against the model it ships: `models/default`, opened, verified and run
//! through the same functions the server and `trainer gallery` use (decoding, the
//! evaluation transform, ONNX Runtime, the probe).
//!
//! One integration-test binary for the core crate; the trainer's and the server's live
//! in their crates (`crates/trainer/tests`, `crates/server/tests`).

use simsiam::bundle::Bundle;
use simsiam::{arch, classes, decode, runtime};
use std::path::Path;

fn default_bundle() -> Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    Bundle::open(&dir).unwrap_or_else(|e| panic!("models/default must open and verify: {e}"))
}

/// A 200×150 photo-like JPEG: smooth gradients and a bright disc.
fn photo() -> Vec<u8> {
    let img = image::RgbImage::from_fn(200, 150, |x, y| {
        let d = ((x as i32 - 120).pow(2) + (y as i32 - 70).pow(2)) as f32;
        let disc = if d < 1600.0 { 90 } else { 0 };
        image::Rgb([
            (x as u8 / 2).saturating_add(disc),
            (y as u8).saturating_add(disc),
            ((x + y) as u8 / 3).saturating_add(disc),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

#[test]
fn the_default_bundle_is_self_consistent() {
    let b = default_bundle();
    let m = &b.manifest;
    let probe = b.probe().expect("probe");
    assert_eq!(
        probe.classes, m.classes,
        "probe and manifest list the same classes"
    );
    assert_eq!(m.classes.len(), 120, "all Stanford Dogs breeds");
    let backbone = match m.backbone.as_str() {
        "resnet18" => arch::Backbone::Resnet18,
        "resnet50" => arch::Backbone::Resnet50,
        other => panic!("unknown backbone {other}"),
    };
    assert_eq!(m.embedding.dim, backbone.feature_dim());
    assert_eq!(probe.feature_dim, m.embedding.dim);
    let g = b
        .seed_gallery()
        .expect("readable")
        .expect("the default model ships a gallery");
    assert_eq!(g.meta.dim, m.embedding.dim);
    assert!(g.meta.labels.iter().all(|&l| l < m.classes.len()));
    let breeds: Vec<String> = m.classes.iter().map(|c| classes::breed_name(c)).collect();
    assert!(
        breeds.contains(&"Japanese spaniel".to_string()),
        "{breeds:?}"
    );
}

#[test]
fn the_default_encoder_embeds_and_classifies_a_photo() {
    runtime::init().unwrap_or_else(|e| panic!("this test needs ONNX Runtime: {e}"));
    let b = default_bundle();
    let t = b.manifest.eval_transform();
    let side = t.crop as usize;
    let dim = b.manifest.embedding.dim;
    let img = decode::decode_bytes_min_side(&photo(), None, t.resize).expect("decode");
    let one = t.to_vec(&img);
    let mut session = runtime::cpu_session(&b.encoder_bytes().expect("onnx"), 1).expect("session");
    let (shape, e) = runtime::run_f32(&mut session, &one, [1, 3, side, side]).expect("run");
    assert_eq!(shape, [1, dim]);
    let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");

    // The same image inside a batch of three gives the same row.
    let mut three = vec![0.0f32; one.len()];
    three.extend_from_slice(&one);
    three.extend(vec![0.5f32; one.len()]);
    let (_, rows) = runtime::run_f32(&mut session, &three, [3, 3, side, side]).expect("batch");
    let worst = rows[dim..2 * dim]
        .iter()
        .zip(&e)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "batch row differs by {worst}");

    let probe = b.probe().expect("probe");
    let p = probe.probabilities(&e).expect("classify");
    assert_eq!(p.len(), 120);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    let top = probe.top_k(&e, 5).expect("top 5");
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
}
