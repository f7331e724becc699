//! End-to-end tests of the `trainer` binary on images the tests generate, and the one
//! test where trainer and server meet: the server's embedding pipeline must reproduce
//! libtorch's embeddings of the exported checkpoint.
//!
//! One integration-test binary (as ripgrep does): each test runs the real executable in a
//! temporary folder and checks what it writes.

mod finetune;

use serde_json::Value;
use simsiam_onnx::fixture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");
/// The project folder: the trainer runs there, as users run it, so it reads
/// `config/trainer.toml`.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// `classes` folders of `per_class` 48×40 JPEGs with class-specific stripes and per-image
/// noise (the same pictures the server's tests use).
fn image_folder(dir: &Path, classes: usize, per_class: usize) -> PathBuf {
    let root = dir.join("images");
    fixture::write_image_folder(&root, classes, per_class).expect("write images");
    root
}

/// Trainer runs use both cores; running them one at a time keeps each fast and avoids
/// thrashing libtorch's OpenMP threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn trainer(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new(TRAINER);
    cmd.current_dir(ROOT)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SIMSIAM_OPTIM__EPOCHS");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run trainer")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "trainer failed: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Small, fast settings shared by the tests: 32 px, batch 8, ResNet-18, 2 threads.
fn tiny(data: &Path, run: &Path) -> Vec<String> {
    let s = |v: &str| v.to_string();
    vec![
        s("pretrain"),
        s("--data"),
        data.display().to_string(),
        s("--out"),
        run.display().to_string(),
        s("--image-size"),
        s("32"),
        s("--batch"),
        s("8"),
        s("--threads"),
        s("2"),
        s("--knn-every"),
        s("1"),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn two_epoch_run_evaluates_exports_builds_a_gallery_and_is_served_as_trained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 3, 12);
    let run = dir.path().join("run");
    let mut a = tiny(&data, &run);
    a.extend(["--epochs".into(), "2".into()]);
    let stderr = ok(&trainer(&args(&a), &[]));
    for f in [
        "checkpoint-last.json",
        "checkpoint-best.json",
        "metrics.jsonl",
        "training.png",
        "config.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing; stderr:\n{stderr}");
    }
    // The checkpoints' JSON names their tensor files; only named ones are kept.
    let named = |tag: &str| -> Vec<String> {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(format!("{tag}.json"))).expect("meta"),
        )
        .expect("json");
        let files = &meta["files"];
        vec![
            files["weights"].as_str().expect("weights").to_string(),
            files["optimizer"].as_str().expect("optimizer").to_string(),
        ]
    };
    let mut expected: Vec<String> = named("checkpoint-last");
    expected.extend(named("checkpoint-best"));
    expected.sort();
    expected.dedup();
    for f in &expected {
        assert!(run.join(f).is_file(), "{f} named but missing");
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&run)
        .expect("run dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors") && n.starts_with("checkpoint"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, expected, "stale tensor files are removed");
    let m = metrics(&run);
    assert_eq!(m.len(), 2);
    for (i, rec) in m.iter().enumerate() {
        assert_eq!(rec["epoch"], i + 1);
        assert!(rec["loss"].as_f64().expect("loss").is_finite());
        let knn = rec["knn_top1"].as_f64().expect("knn every epoch");
        assert!((0.0..=1.0).contains(&knn));
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(cfg["data"]["image_size"], 32);
    assert_eq!(cfg["optim"]["epochs"], 2);
    let png = image::open(run.join("training.png")).expect("valid png");
    assert!(png.width() > 500);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint-last.json")).expect("meta"),
    )
    .expect("json");
    assert_eq!(meta["epoch"], 2);
    assert_eq!(meta["classes"].as_array().map(Vec::len), Some(3));

    // Evaluation of that run: report files, every key, and a feature cache on the second call.
    let run_s = run.to_str().expect("utf8");
    let stderr = ok(&trainer(&["eval", "--run", run_s, "--threads", "2"], &[]));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).expect("eval.json"))
            .expect("json");
    for key in ["knn_top1", "knn_top5", "probe_top1", "probe_top5"] {
        for v in [&report[key], &report["random_init"][key]] {
            let v = v
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {report}"));
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
    }
    assert_eq!(report["per_class"].as_array().map(Vec::len), Some(3));
    for f in ["eval.md", "confusion.png", "knn_curve.png", "probe.json"] {
        assert!(run.join(f).is_file(), "{f} missing; stderr:\n{stderr}");
    }
    let probe: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("probe.json")).expect("probe"))
            .expect("json");
    assert_eq!(probe["classes"].as_array().map(Vec::len), Some(3));
    assert!(
        !stderr.contains("features: cached"),
        "first evaluation embeds the images"
    );
    let stderr = ok(&trainer(&["eval", "--run", run_s, "--threads", "2"], &[]));
    assert!(
        stderr.contains("trained features: cached") && stderr.contains("random features: cached"),
        "{stderr}"
    );

    // Export: ONNX parity with tch within 1e-4 on real preprocessed images (batches 1 and 7).
    let bundle_dir = dir.path().join("bundle");
    let b = bundle_dir.to_str().expect("utf8");
    ok(&trainer(&["export", "--run", run_s, "--out", b], &[]));
    let bundle = simsiam::bundle::Bundle::open(&bundle_dir).expect("a valid bundle");
    let m = &bundle.manifest;
    assert!(
        m.onnx.parity_max_abs_diff <= 1e-4,
        "parity {}",
        m.onnx.parity_max_abs_diff
    );
    assert_eq!(
        (m.onnx.opset, m.onnx.ir_version, m.embedding.dim),
        (17, 8, 512)
    );
    assert_eq!(m.classes.len(), 3);
    assert_eq!(m.input.size, 32);
    assert!(m.training.probe_top1.is_some() && m.training.knn_top1.is_some());

    // Gallery: every image embedded through ONNX Runtime, stored, verified on load.
    ok(&trainer(
        &[
            "gallery",
            "--model",
            b,
            "--data",
            data.to_str().expect("utf8"),
            "--split",
            "all",
        ],
        &[],
    ));
    let bundle = simsiam::bundle::Bundle::open(&bundle_dir).expect("valid after gallery");
    let g = bundle.seed_gallery().expect("readable").expect("present");
    assert_eq!(g.meta.ids.len(), 36);
    assert_eq!(g.vectors.len(), 36 * 512);
    let norm: f32 = g.vectors[..512].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "embeddings are l2-normalised: {norm}"
    );

    // The server's pipeline on the bundle reproduces libtorch on the checkpoint.
    let files: Vec<PathBuf> = ["class_0/0.jpg", "class_1/5.jpg", "class_2/11.jpg"]
        .iter()
        .map(|f| data.join(f))
        .collect();
    let served = served_embeddings(&bundle_dir, &dir.path().join("gallery"), &files);
    let trained = trainer_embeddings(&run, &files);
    assert_eq!((served.len(), trained.len()), (3, 3));
    for (s, t) in served.iter().zip(&trained) {
        assert_eq!(s.len(), t.len());
        let worst = s
            .iter()
            .zip(t)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "server vs trainer max |diff| {worst:e}");
    }

    // A tampered file is refused, by name.
    let onnx = bundle_dir.join("encoder.onnx");
    let mut bytes = std::fs::read(&onnx).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&onnx, bytes).expect("tamper");
    let out = trainer(
        &[
            "gallery",
            "--model",
            b,
            "--data",
            data.to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("encoder.onnx"), "{stderr}");
}

/// Embeddings of `files` by the server's own pipeline (decode, preprocess, batcher,
/// ONNX Runtime on the bundle), run in this process as the server binary runs it.
fn served_embeddings(bundle: &Path, gallery: &Path, files: &[PathBuf]) -> Vec<Vec<f32>> {
    use simsiam_server::config::ServerConfig;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let cfg = ServerConfig::load(
        None,
        vec![
            ("model.dir", path(bundle).into()),
            ("gallery.dir", path(gallery).into()),
            ("http.request_priority", "normal".into()),
        ],
    )
    .expect("server settings");
    let state = simsiam_server::state::AppState::start(cfg).expect("server state");
    let images: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("image"))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let flat = runtime
        .block_on(state.embed(images, state.ticket()))
        .expect("embed");
    let dim = flat.len() / files.len();
    flat.chunks(dim).map(<[f32]>::to_vec).collect()
}

/// `trainer embed`: libtorch on the run's last checkpoint.
fn trainer_embeddings(run: &Path, files: &[PathBuf]) -> Vec<Vec<f32>> {
    let mut cmd = vec![
        "embed".to_string(),
        "--run".into(),
        run.display().to_string(),
    ];
    cmd.extend(files.iter().map(|f| f.display().to_string()));
    let out = trainer(&args(&cmd), &[]);
    ok(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            serde_json::from_value(v["embedding"].clone()).expect("vector")
        })
        .collect()
}

#[test]
fn resume_continues_the_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 12);
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let with = |run: &Path, extra: &[&str]| {
        let mut a = tiny(&data, run);
        a.extend(["--epochs", "3"].iter().chain(extra).map(|s| s.to_string()));
        a
    };
    ok(&trainer(&args(&with(&full, &[])), &[]));
    ok(&trainer(&args(&with(&split, &["--stop-after", "1"])), &[]));
    assert_eq!(metrics(&split).len(), 1, "stopped after one epoch");
    let stderr = ok(&trainer(&args(&with(&split, &["--resume"])), &[]));
    assert!(stderr.contains("resuming after epoch 1"), "{stderr}");
    let (a, b) = (metrics(&full), metrics(&split));
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["epoch"], y["epoch"]);
        assert_eq!(x["step"], y["step"], "step count continues");
        assert_eq!(x["lr"], y["lr"], "lr follows the 3-epoch cosine schedule");
        let (lx, ly) = (
            x["loss"].as_f64().expect("loss"),
            y["loss"].as_f64().expect("loss"),
        );
        assert!(
            (lx - ly).abs() < 1e-3,
            "resumed run diverged from the uninterrupted one: {lx} vs {ly}"
        );
    }
}

#[test]
fn collapse_alarm_fires_without_stop_gradient() {
    // A small projector and a very high lr make the ablation collapse within a few dozen steps.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 30);
    let fast = [
        ("SIMSIAM_OPTIM__BASE_LR", "8"),
        ("SIMSIAM_MODEL__PROJ_DIM", "128"),
        ("SIMSIAM_MODEL__PRED_HIDDEN", "32"),
    ];
    let run_with = |run: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut a: Vec<String> = tiny(&data, run)
            .into_iter()
            .map(|s| if s == "8" { "16".into() } else { s })
            .collect();
        a.extend(
            ["--epochs", "20", "--stop-on-collapse"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
        );
        trainer(&args(&a), env)
    };
    let run = dir.path().join("ablation");
    let out = run_with(&run, &["--debug-no-stop-grad"], &fast);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a collapsing run must stop with an error:\n{stderr}"
    );
    assert!(
        stderr.contains("COLLAPSE ALARM") && stderr.contains("representation collapse"),
        "{stderr}"
    );
    let m = metrics(&run);
    assert_eq!(m.last().expect("an epoch")["collapse_alarm"], true);
    assert!(m.len() < 20, "stopped early");
    assert!(
        m.last().expect("an epoch")["loss"].as_f64().expect("loss") < -0.5,
        "the ablation drives the loss towards -1"
    );

    // With stop-gradient, at the recipe's learning rate, the same run trains on without an
    // alarm. (At the ablation's very high lr even SimSiam slowly loses rank on two classes
    // of synthetic stripes, which is why the control does not reuse it.)
    let run = dir.path().join("simsiam");
    let stderr = ok(&run_with(&run, &[], &fast[1..]));
    assert!(!stderr.contains("COLLAPSE ALARM"), "{stderr}");
    assert!(metrics(&run).iter().all(|m| m["collapse_alarm"] == false));
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 3);
    let run = dir.path().join("run");
    // No --batch flag here, so the environment's value is the one validated.
    let a: Vec<String> = tiny(&data, &run)
        .into_iter()
        .filter(|s| s != "--batch" && s != "8")
        .collect();
    let out = trainer(&args(&a), &[("SIMSIAM_OPTIM__BATCH", "1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("optim.batch"), "{stderr}");
    let out = trainer(&args(&a), &[("SIMSIAM_OPTIM__EPOCHS", "0")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("optim.epochs"));
    let out = trainer(
        &["pretrain", "--data", "/nonexistent/dogs", "--epochs", "1"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dogs"));
}

#[test]
fn bench_prints_all_three_throughputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 10);
    let json = dir.path().join("bench.json");
    let out = trainer(
        &[
            "bench",
            "--data",
            data.to_str().expect("utf8"),
            "--image-size",
            "32",
            "--batch",
            "8",
            "--threads",
            "2",
            "--steps",
            "2",
            "--json",
            json.to_str().expect("utf8"),
        ],
        &[],
    );
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in ["data pipeline alone", "compute only", "end to end"] {
        assert!(stdout.contains(line), "{stdout}");
    }
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
    for key in [
        "pipeline_img_per_s",
        "compute_img_per_s",
        "end_to_end_img_per_s",
    ] {
        assert!(r[key].as_f64().expect(key) > 0.0, "{key}");
    }
}

/// `n` pseudo-random delays in [200, 1500) ms from `seed` (xorshift64).
fn kill_delays(mut seed: u64, n: usize) -> Vec<std::time::Duration> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::time::Duration::from_millis(200 + seed % 1300)
        })
        .collect()
}

#[test]
fn a_run_killed_at_random_moments_resumes_from_one_consistent_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 12);
    let run = dir.path().join("run");
    let mut a = tiny(&data, &run);
    a.extend(["--epochs".into(), "8".into()]);
    let kills: usize = std::env::var("SIMSIAM_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    eprintln!("kill delays from seed {seed}");
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let with_resume = |a: &[String]| {
        let mut a = a.to_vec();
        if run.join("checkpoint-last.json").exists() {
            a.push("--resume".into());
        }
        a
    };
    let mut killed = 0;
    for delay in kill_delays(seed, kills) {
        let log = std::fs::File::create(dir.path().join("killed.log")).expect("log");
        let mut child = Command::new(TRAINER)
            .current_dir(ROOT)
            .args(with_resume(&a))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start trainer");
        std::thread::sleep(delay);
        match child.try_wait().expect("wait") {
            Some(status) => {
                let log =
                    std::fs::read_to_string(dir.path().join("killed.log")).unwrap_or_default();
                assert!(
                    status.success(),
                    "a resumed run failed after a kill:\n{log}"
                );
                break; // finished before the kill
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
                killed += 1;
            }
        }
    }
    drop(_guard);
    let stderr = ok(&trainer(&args(&with_resume(&a)), &[]));
    eprintln!("{killed} kills");
    let m = metrics(&run);
    let epochs: Vec<u64> = m
        .iter()
        .map(|r| r["epoch"].as_u64().expect("epoch"))
        .collect();
    assert_eq!(epochs, (1..=8).collect::<Vec<_>>(), "{stderr}");
    let steps: Vec<u64> = m
        .iter()
        .map(|r| r["step"].as_u64().expect("step"))
        .collect();
    assert!(
        steps.windows(2).all(|w| w[1] == w[0] + steps[0]),
        "the step count grows by one epoch's steps each time: {steps:?}"
    );
}
