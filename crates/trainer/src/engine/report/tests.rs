use super::plots::{Geometry, KNN_CURVE_SIZE, REFERENCE_COLOR};
use super::*;
use crate::engine::history::EpochMetrics;

fn scores(base: f64) -> EncoderScores {
    EncoderScores {
        knn_top1: base,
        knn_top5: base + 0.2,
        knn200_top1: base - 0.01,
        knn200_top5: base + 0.19,
        probe_top1: base + 0.05,
        probe_top5: base + 0.25,
        probe_weight_decay: 1e-4,
        probe_epochs: 30,
        probe_val_top1: base + 0.04,
    }
}

fn report() -> EvalReport {
    let classes: Vec<String> = [
        "n02085620-Chihuahua",
        "n02085782-Japanese_spaniel",
        "n02113799-standard_poodle",
    ]
    .map(String::from)
    .to_vec();
    let per_class = classes
        .iter()
        .zip([0.40, 0.90, 0.65])
        .map(|(breed, probe_acc)| ClassRow {
            breed: breed.clone(),
            n_test: 50,
            probe_acc,
            knn_acc: probe_acc - 0.1,
            random_probe_acc: 0.05,
        })
        .collect();
    EvalReport {
        run: "dogs-r18".into(),
        checkpoint: "runs/dogs-r18/checkpoint-100.ot".into(),
        epoch: 100,
        backbone: "resnet18".into(),
        image_size: 224,
        n_train: 12000,
        n_test: 8580,
        classes,
        knn_temperature: 0.07,
        trained: scores(0.45),
        random_init: scores(0.05),
        per_class,
        labels_per_breed: None,
        zoom_out: None,
        classifier: None,
    }
}

#[test]
fn json_has_every_key_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eval.json");
    let r = report();
    write_json(&r, &path).expect("write json");
    let text = std::fs::read_to_string(&path).expect("read back");
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    let headline = [
        "knn_top1",
        "knn_top5",
        "knn200_top1",
        "knn200_top5",
        "probe_top1",
        "probe_top5",
        "probe_weight_decay",
        "probe_epochs",
        "probe_val_top1",
    ];
    for key in headline {
        assert!(value[key].is_number(), "top-level {key} missing");
        assert!(
            value["random_init"][key].is_number(),
            "random_init.{key} missing"
        );
    }
    assert_eq!(value["knn_top1"], 0.45);
    assert_eq!(value["random_init"]["knn_top1"], 0.05);
    assert_eq!(value["per_class"].as_array().map(Vec::len), Some(3));
    assert_eq!(value["per_class"][1]["breed"], "n02085782-Japanese_spaniel");
    for key in ["run", "checkpoint", "epoch", "backbone", "image_size"] {
        assert!(!value[key].is_null(), "{key} missing");
    }
    assert!(
        value.get("trained").is_none(),
        "trained scores are flattened"
    );
    let back: EvalReport = serde_json::from_str(&text).expect("parse report");
    assert_eq!(back, r);
}

#[test]
fn writing_into_a_missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent").join("eval.json");
    let err = write_json(&report(), &path).expect_err("no directory");
    assert!(matches!(err, ReportError::Io { .. }), "{err}");
    assert!(err.to_string().contains("eval.json"));
}

#[test]
fn markdown_has_summary_table_and_every_breed_sorted_by_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eval.md");
    write_markdown(&report(), &path).expect("write markdown");
    let md = std::fs::read_to_string(&path).expect("read back");
    assert!(md.contains("| metric | trained | random init | difference |"));
    assert!(md.contains("| kNN k=20 top-1 | 45.0% | 5.0% | +40.0 pp |"));
    assert!(md.contains("| kNN k=20 top-5 | 65.0% | 25.0% | +40.0 pp |"));
    assert!(md.contains("| kNN k=200 top-1 | 44.0% | 4.0% | +40.0 pp |"));
    assert!(md.contains("| linear probe top-1 | 50.0% | 10.0% | +40.0 pp |"));
    assert!(md.contains("| linear probe top-5 | 70.0% | 30.0% | +40.0 pp |"));
    assert!(md.contains("weight decay 1e-4, 30 epochs"));
    assert!(md.contains("checkpoint-100.ot") && md.contains("resnet18"));
    assert!(md.contains("(confusion.png)") && md.contains("(knn_curve.png)"));
    // Display names, without the WordNet ids, best probe accuracy first.
    assert!(!md.contains("n02085620"));
    let at = |name: &str| md.find(&format!("| {name} |")).expect(name);
    assert!(at("Japanese_spaniel") < at("standard_poodle"));
    assert!(at("standard_poodle") < at("Chihuahua"));
    assert!(md.contains("| Japanese_spaniel | 50 | 90.0% | 80.0% | 5.0% |"));
}

#[test]
fn a_loss_against_the_baseline_shows_a_minus_sign() {
    let mut r = report();
    r.trained.probe_top1 = 0.02;
    assert!(markdown(&r).contains("| linear probe top-1 | 2.0% | 10.0% | -8.0 pp |"));
}

fn is_permutation(order: &[usize], n: usize) -> bool {
    let mut sorted = order.to_vec();
    sorted.sort_unstable();
    sorted == (0..n).collect::<Vec<_>>()
}

/// Six classes in three pairs; each class is confused only with its partner. The labels
/// are shuffled so the partners are not neighbours in label order.
fn paired_confusion() -> (Vec<Vec<u32>>, [(usize, usize); 3]) {
    let shuffle = [3, 0, 5, 1, 4, 2]; // block position -> label
    let mut confusion = vec![vec![0u32; 6]; 6];
    for block in 0..3 {
        let (a, b) = (shuffle[2 * block], shuffle[2 * block + 1]);
        confusion[a][a] = 30;
        confusion[b][b] = 25;
        confusion[a][b] = 10;
        confusion[b][a] = 5;
    }
    let pairs = [(3, 0), (5, 1), (4, 2)];
    (confusion, pairs)
}

#[test]
fn cluster_order_puts_confused_pairs_side_by_side() {
    let (confusion, pairs) = paired_confusion();
    let order = cluster_order(&confusion);
    assert!(is_permutation(&order, 6), "{order:?}");
    let pos = |class: usize| order.iter().position(|&c| c == class).expect("present");
    for (a, b) in pairs {
        assert_eq!(pos(a).abs_diff(pos(b)), 1, "{a} and {b} apart in {order:?}");
    }
}

#[test]
fn cluster_order_chains_a_group_by_similarity() {
    // 0 is confused with 2, 2 with 1, 1 with nothing else; 3 with nobody.
    let confusion = vec![
        vec![50, 0, 10, 0],
        vec![0, 50, 20, 0],
        vec![10, 20, 50, 0],
        vec![0, 0, 0, 50],
    ];
    let order = cluster_order(&confusion);
    assert!(is_permutation(&order, 4), "{order:?}");
    let pos = |class: usize| order.iter().position(|&c| c == class).expect("present");
    assert_eq!(pos(1).abs_diff(pos(2)), 1, "{order:?}");
    assert_eq!(pos(0).abs_diff(pos(2)), 1, "{order:?}");
}

#[test]
fn cluster_order_is_a_permutation_in_edge_cases() {
    assert!(cluster_order(&[]).is_empty());
    assert_eq!(cluster_order(&[vec![7]]), vec![0]);
    // Never confused: label order is kept.
    let diagonal: Vec<Vec<u32>> = (0..5)
        .map(|i| (0..5).map(|j| u32::from(i == j) * 9).collect())
        .collect();
    assert_eq!(cluster_order(&diagonal), vec![0, 1, 2, 3, 4]);
    // Dense pseudo-random counts, including an empty row.
    let mut confusion: Vec<Vec<u32>> = (0..37)
        .map(|i| (0..37).map(|j| ((i * 31 + j * 17) % 11) as u32).collect())
        .collect();
    confusion[5] = vec![0; 37];
    assert!(is_permutation(&cluster_order(&confusion), 37));
}

fn non_white(img: &image::RgbImage) -> usize {
    img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
}

/// Stanford Dogs-like names: a WordNet id and breed names of realistic lengths.
fn breed_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("n0{:07}-breed_{i}", 2085620 + i),
            1 => format!("n0{:07}-German_short-haired_pointer_{i}", 2085620 + i),
            2 => format!(
                "n0{:07}-Greater_Swiss_Mountain_dog_with_long_name_{i}",
                2085620 + i
            ),
            _ => format!("n0{:07}-pug_{i}", 2085620 + i),
        })
        .collect()
}

#[test]
fn confusion_png_of_120_classes_is_large_and_drawn() {
    let n = 120;
    let confusion: Vec<Vec<u32>> = (0..n)
        .map(|t| {
            (0..n)
                .map(|p| match (t as i64 - p as i64).abs() {
                    0 => 40,
                    1 => 6,
                    d if d % 29 == 0 => 1,
                    _ => 0,
                })
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("confusion.png");
    confusion_png(&confusion, &breed_names(n), "linear probe", &path).expect("plot");
    let img = image::open(&path).expect("valid png").to_rgb8();
    let geometry = Geometry::new(n);
    assert_eq!(geometry.cell, 15);
    assert_eq!((img.width(), img.height()), geometry.canvas(n));
    assert!(img.width() > 1800 && img.height() > 1800);
    assert!(
        non_white(&img) > 50_000,
        "{} coloured pixels",
        non_white(&img)
    );
}

#[test]
fn confusion_png_cells_follow_the_cluster_order() {
    let (confusion, pairs) = paired_confusion();
    let classes = breed_names(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("confusion.png");
    confusion_png(&confusion, &classes, "pairs", &path).expect("plot");
    let img = image::open(&path).expect("valid png").to_rgb8();
    let geometry = Geometry::new(6);
    assert_eq!((img.width(), img.height()), geometry.canvas(6));
    // Read each cell's colour near its corner (the centre may hold a percentage).
    let order = cluster_order(&confusion);
    let coloured = |r: usize, c: usize| {
        let (x, y) = geometry.cell_origin(r, c);
        img.get_pixel(x as u32 + 4, y as u32 + 4).0 != [255, 255, 255]
    };
    for r in 0..6 {
        for c in 0..6 {
            let (t, p) = (order[r], order[c]);
            let confused = t == p
                || pairs
                    .iter()
                    .any(|&(a, b)| (t, p) == (a, b) || (t, p) == (b, a));
            assert_eq!(coloured(r, c), confused, "cell ({r}, {c}) = {t}->{p}");
            // Partners sit next to each other, so colour stays near the diagonal.
            if confused {
                assert!(r.abs_diff(c) <= 1);
            }
        }
    }
}

#[test]
fn confusion_png_rejects_a_mismatched_matrix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("confusion.png");
    let classes = breed_names(3);
    let square_2 = vec![vec![1, 0], vec![0, 1]];
    let ragged = vec![vec![1, 0, 0], vec![0, 1], vec![0, 0, 1]];
    for bad in [square_2, ragged] {
        let err = confusion_png(&bad, &classes, "bad", &path).expect_err("shape");
        assert!(matches!(err, ReportError::Shape { .. }), "{err}");
    }
    assert!(!path.exists());
}

fn epoch(e: usize, knn: Option<f64>) -> EpochMetrics {
    EpochMetrics {
        epoch: e,
        step: e * 10,
        loss: -0.5,
        z_std: 0.02,
        z_std_healthy: 0.022,
        z_rank: 100.0,
        lr: 0.05,
        img_per_s: 30.0,
        epoch_seconds: 1.0,
        data_wait: 0.0,
        knn_top1: knn,
        collapse_alarm: false,
    }
}

#[test]
fn knn_curve_png_draws_the_curve_and_the_reference_when_given() {
    let metrics: Vec<_> = (1..=20)
        .map(|e| epoch(e, (e % 5 == 0).then_some(0.1 + 0.01 * e as f64)))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let reference_pixels = |random: Option<f64>, name: &str| {
        let path = dir.path().join(name);
        knn_curve_png(&metrics, random, &path).expect("plot");
        let img = image::open(&path).expect("valid png").to_rgb8();
        assert_eq!((img.width(), img.height()), KNN_CURVE_SIZE);
        assert!(non_white(&img) > 1000);
        let red = [REFERENCE_COLOR.0, REFERENCE_COLOR.1, REFERENCE_COLOR.2];
        img.pixels().filter(|p| p.0 == red).count()
    };
    assert!(reference_pixels(Some(0.05), "with.png") > 200);
    assert_eq!(reference_pixels(None, "without.png"), 0);
}

#[test]
fn knn_curve_png_copes_with_no_knn_measurements() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("knn.png");
    knn_curve_png(&[epoch(1, None)], None, &path).expect("plot");
    knn_curve_png(&[], Some(0.3), &path).expect("plot");
    let img = image::open(&path).expect("valid png");
    assert_eq!((img.width(), img.height()), KNN_CURVE_SIZE);
}

/// Writes a 120-class confusion PNG to `$REPORT_SAMPLE_DIR` for looking at by eye.
#[test]
#[ignore = "writes a sample file outside the temp dir"]
fn write_sample_confusion_png() {
    let Ok(dir) = std::env::var("REPORT_SAMPLE_DIR") else {
        return;
    };
    let n: usize = 120;
    let confusion: Vec<Vec<u32>> = (0..n)
        .map(|t| {
            (0..n)
                .map(|p| {
                    let (a, b) = (t * 7 % n, p * 7 % n); // hide a band structure
                    match a.abs_diff(b) {
                        0 => 50,
                        1 => 8,
                        2 => 2,
                        _ => u32::from((t + 3 * p) % 37 == 0),
                    }
                })
                .collect()
        })
        .collect();
    let dir = Path::new(&dir);
    let path = dir.join("confusion-120.png");
    confusion_png(&confusion, &breed_names(n), "linear probe (sample)", &path).expect("plot");
    let small: Vec<Vec<u32>> = confusion[..10]
        .iter()
        .map(|row| row[..10].to_vec())
        .collect();
    let path = dir.join("confusion-10.png");
    confusion_png(&small, &breed_names(10), "linear probe (sample)", &path).expect("plot");
    let metrics: Vec<_> = (1..=20)
        .map(|e| epoch(e, (e % 5 == 0).then_some(0.1 + 0.01 * e as f64)))
        .collect();
    knn_curve_png(&metrics, Some(0.05), &dir.join("knn_curve.png")).expect("plot");
}
