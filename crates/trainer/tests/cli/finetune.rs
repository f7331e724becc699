//! `trainer finetune` on generated images (2 breeds, 32 px, 2 epochs): the run it writes,
//! resume, the labelled subset, the rest of the pipeline on a fine-tuned run, and the
//! errors a user can make.

use super::{args, image_folder, metrics, ok, tiny, trainer};
use serde_json::Value;
use simsiam_trainer::engine::data::{self, DatasetOptions};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("json")
}

/// A one-epoch pretraining run on `data`, at `dir/pre`.
fn pretrained(data: &Path, dir: &Path) -> PathBuf {
    let run = dir.join("pre");
    let mut a = tiny(data, &run);
    a.extend(["--epochs".into(), "1".into()]);
    ok(&trainer(&args(&a), &[]));
    run
}

/// `trainer finetune` with the tests' small settings and `extra` flags.
fn finetune(extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "finetune",
        "--batch",
        "8",
        "--threads",
        "2",
        "--epochs",
        "2",
    ];
    a.extend_from_slice(extra);
    trainer(&a, &[])
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// The files `labelled.json` lists, and the test split's files of `data` (whose
/// image-folder split is seeded by the run's seed).
fn labelled_and_test(
    run: &Path,
    data: &Path,
    seed: u64,
) -> (Vec<String>, Vec<String>, HashSet<String>) {
    let l = json(&run.join("labelled.json"));
    let list = |k: &str| -> Vec<String> {
        l[k].as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a path").to_string())
            .collect()
    };
    let opts = DatasetOptions {
        seed,
        ..Default::default()
    };
    let ds = data::open(data, &opts).expect("dataset");
    let test = ds
        .test
        .iter()
        .map(|t| t.path.display().to_string())
        .collect();
    (list("train"), list("val"), test)
}

#[test]
fn finetune_writes_a_run_that_resumes_evaluates_and_exports_both_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 16);
    let pre = pretrained(&data, dir.path());
    let ft = dir.path().join("ft");
    let common = [
        "--run",
        s(&pre),
        "--out",
        s(&ft),
        "--head-lr",
        "0.2",
        "--backbone-lr",
        "0.02",
    ];
    let mut first = common.to_vec();
    first.extend(["--stop-after", "1"]);
    let stderr = ok(&finetune(&first));
    assert!(stderr.contains("fine-tuning the encoder of"), "{stderr}");
    assert_eq!(metrics(&ft).len(), 1, "stopped after one epoch");
    let mut again = common.to_vec();
    again.push("--resume");
    let stderr = ok(&finetune(&again));
    assert!(stderr.contains("resuming after epoch 1"), "{stderr}");
    let m = metrics(&ft);
    assert_eq!(m.len(), 2);
    for (i, rec) in m.iter().enumerate() {
        assert_eq!(rec["epoch"], i + 1);
        assert_eq!(rec["step"], (i + 1) * 3, "24 labelled images, batches of 8");
        assert!(rec["loss"].as_f64().expect("loss").is_finite());
        for k in ["train_top1", "val_top1"] {
            let v = rec[k].as_f64().expect(k);
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
        let (b, h) = (
            rec["backbone_lr"].as_f64().expect("lr"),
            rec["head_lr"].as_f64().expect("lr"),
        );
        assert!(
            (h - 10.0 * b).abs() < 1e-12,
            "each group follows its own lr: {b} {h}"
        );
    }
    assert_eq!(
        m[0]["backbone_lr"], 0.02,
        "the warm-up's last step reaches the peak"
    );
    assert!(
        m[1]["backbone_lr"].as_f64().expect("lr") < 1e-9,
        "the cosine ends at 0"
    );
    for f in [
        "checkpoint-last.json",
        "checkpoint-best.json",
        "config.json",
        "labelled.json",
        "finetune.png",
    ] {
        assert!(ft.join(f).is_file(), "{f} missing");
    }
    let png = image::open(ft.join("finetune.png")).expect("valid png");
    assert_eq!((png.width(), png.height()), (1000, 450));
    let (train, val, test) = labelled_and_test(&ft, &data, 0);
    assert_eq!((train.len(), val.len()), (24, 2));
    assert!(train.iter().chain(&val).all(|p| !test.contains(p)));

    // The rest of the pipeline takes the fine-tuned run unchanged.
    let stderr = ok(&trainer(&["eval", "--run", s(&ft), "--threads", "2"], &[]));
    let report = json(&ft.join("eval.json"));
    let choice = &report["classifier"];
    let shipped = choice["shipped"].as_str().expect("a choice");
    assert!(
        ["fine-tuning head", "refitted probe"].contains(&shipped),
        "{choice}"
    );
    assert!(stderr.contains("shipping the"), "{stderr}");
    let (head, refit) = (
        choice["head_val_top1"].as_f64().expect("head"),
        choice["refit_val_top1"].as_f64().expect("refit"),
    );
    assert_eq!(shipped == "fine-tuning head", head > refit, "{choice}");
    assert_eq!(
        report["n_train"], 24,
        "probe and kNN bank: the labelled images"
    );
    let bundle = dir.path().join("bundle");
    ok(&trainer(
        &["export", "--run", s(&ft), "--out", s(&bundle)],
        &[],
    ));
    let manifest = json(&bundle.join("manifest.json"));
    let stages = manifest["training"]["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["pretrain", "finetune"]);
    assert_eq!(
        (stages[0]["epochs"].clone(), stages[1]["epochs"].clone()),
        (1.into(), 2.into())
    );
    assert!(stages[1]["recipe"]
        .as_str()
        .expect("recipe")
        .contains("head lr 0.2"));
    assert!(stages
        .iter()
        .all(|s| s["wall_seconds"].as_f64().expect("time") > 0.0));
    assert!(manifest["training"]["classifier"]
        .as_str()
        .expect("classifier")
        .contains(shipped));

    // Zoomed-out test images: their own report, the shipped probe untouched.
    let probe = std::fs::read(ft.join("probe.json")).expect("probe");
    ok(&trainer(
        &["eval", "--run", s(&ft), "--zoom-out", "0.5"],
        &[],
    ));
    assert_eq!(json(&ft.join("eval-zoom50.json"))["zoom_out"], 0.5);
    assert_eq!(std::fs::read(ft.join("probe.json")).expect("probe"), probe);
}

#[test]
fn the_labelled_subset_is_seeded_and_random_init_is_the_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 2, 16);
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        ok(&finetune(&[
            "--init",
            "random",
            "--data",
            s(&data),
            "--image-size",
            "32",
            "--out",
            s(&out),
            "--labels-per-breed",
            "4",
            "--seed",
            seed,
        ]));
        out
    };
    let (a, b, c) = (run("a", "1"), run("b", "1"), run("c", "2"));
    let (ta, va, test) = labelled_and_test(&a, &data, 1);
    let (tb, vb, _) = labelled_and_test(&b, &data, 1);
    let (tc, _, test_c) = labelled_and_test(&c, &data, 2);
    assert_eq!((ta.clone(), va), (tb, vb), "same seed, same subset");
    assert_ne!(ta, tc, "another seed, another subset");
    assert_eq!(ta.len(), 8, "4 per breed");
    for class in ["class_0", "class_1"] {
        assert_eq!(
            ta.iter().filter(|p| p.contains(class)).count(),
            4,
            "{class}"
        );
    }
    assert!(ta.iter().all(|p| !test.contains(p)), "never the test split");
    assert!(
        tc.iter().all(|p| !test_c.contains(p)),
        "never the test split"
    );
    let meta = json(&a.join("checkpoint-last.json"));
    assert_eq!(meta["stage"], "finetune");
    assert_eq!(
        meta["stages"].as_array().map(Vec::len),
        Some(0),
        "no pretraining"
    );
}

#[test]
fn finetune_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = image_folder(dir.path(), 3, 16);
    let err = |out: std::process::Output| {
        assert!(!out.status.success(), "must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A directory without a checkpoint.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let e = err(finetune(&[
        "--run",
        s(&empty),
        "--out",
        s(&dir.path().join("x")),
    ]));
    assert!(
        e.contains("no encoder to fine-tune") && e.contains("--init random"),
        "{e}"
    );
    // Neither a run nor --init.
    let e = err(finetune(&["--data", s(&data)]));
    assert!(e.contains("--run"), "{e}");
    let pre = pretrained(&data, dir.path());
    let out = dir.path().join("ft");
    // Data with other classes than the encoder was pretrained on.
    let e = err(finetune(&[
        "--run",
        s(&pre),
        "--out",
        s(&out),
        "--breeds",
        "2",
    ]));
    assert!(
        e.contains("3 classes") && e.contains("2 (class_0, class_1)"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written for a refused run");
    // More labels per breed than a breed has, and none.
    let e = err(finetune(&[
        "--run",
        s(&pre),
        "--out",
        s(&out),
        "--labels-per-breed",
        "50",
    ]));
    assert!(
        e.contains("--labels-per-breed 50") && e.contains("has only 12"),
        "{e}"
    );
    let e = err(finetune(&[
        "--run",
        s(&pre),
        "--out",
        s(&out),
        "--labels-per-breed",
        "0",
    ]));
    assert!(
        e.contains("labels_per_breed") && e.contains("at least 1"),
        "{e}"
    );
    // Fine-tuning into the pretraining run itself.
    let e = err(finetune(&["--run", s(&pre), "--out", s(&pre)]));
    assert!(e.contains("write the fine-tuned run elsewhere"), "{e}");
}
