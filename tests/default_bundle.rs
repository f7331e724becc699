//! The core crate against the model it ships: `models/default`, opened, verified and run
//! through the same functions the server and `trainer gallery` use (decoding, the
//! evaluation transform, ONNX Runtime, the probe).
//!
//! Also the README's layout table against the tree: every path and file it names exists.
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

/// Every file or folder under `dir` (relative, `/`-separated), skipping build output.
fn tree(dir: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if ["target", "node_modules", "dist", ".venv", ".git"].contains(&name.as_str()) {
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .map_or(name.clone(), |r| r.to_string_lossy().replace('\\', "/"));
            let is_dir = path.is_dir();
            if is_dir {
                stack.push(path);
            }
            out.push((rel, is_dir));
        }
    }
    out
}

/// The layout table's rows: the path in the first column, and the backticked names in the
/// second that are files or folders (`x.rs`, `name/`; crate names and prose are not).
#[test]
fn the_readme_layout_names_only_what_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let layout = readme
        .split("\n## Layout")
        .nth(1)
        .expect("a Layout section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let (mut rows, mut missing) = (0, Vec::new());
    for line in layout.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(path) = ticked(cells[0]).into_iter().next() else {
            continue;
        };
        rows += 1;
        let base = root.join(&path);
        if !base.exists() {
            missing.push(path.clone());
            continue;
        }
        let files = tree(&base);
        for name in ticked(cells.get(1).copied().unwrap_or_default()) {
            let wants_dir = name.ends_with('/');
            let bare = name.trim_end_matches('/');
            if !(wants_dir || bare.contains('.')) || bare.contains(' ') {
                continue;
            }
            let found = files.iter().any(|(rel, is_dir)| {
                (rel == bare || rel.ends_with(&format!("/{bare}"))) && (!wants_dir || *is_dir)
            });
            if !found {
                missing.push(format!("{path} … {name}"));
            }
        }
    }
    assert!(rows >= 10, "the layout table was not found ({rows} rows)");
    assert!(
        missing.is_empty(),
        "README.md's layout names what is not in the tree: {missing:?}"
    );
}
