//! The evaluation report of `trainer eval`: `eval.json`, `eval.md` and two PNGs.
//!
//! Evaluation measures a pretrained encoder's frozen features (weighted kNN at k = 20 and
//! k = 200, and a linear probe) next to a randomly initialised encoder of the same
//! architecture. The random encoder is the baseline that says how much of the accuracy
//! pretraining earned; every number is therefore written beside it.
//!
//! - `eval.json` is for tools: the trained encoder's scores sit at the top level
//!   (`knn_top1`, `probe_top1`, ...) and the baseline's under `random_init`.
//! - `eval.md` is for people: a summary table with the difference, then one row per breed.
//! - [`confusion_png`] and [`knn_curve_png`] draw the linear probe's confusions and the kNN
//!   accuracy over training.

mod cluster;
mod plots;
#[cfg(test)]
mod tests;

pub use cluster::cluster_order;
pub use plots::{confusion_png, knn_curve_png};

use serde::{Deserialize, Serialize};
use simsiam::classes::display_name as class_display_name;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Accuracies of one encoder's frozen features, as fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderScores {
    /// Weighted kNN with k = 20.
    pub knn_top1: f64,
    pub knn_top5: f64,
    /// Weighted kNN with k = 200, which smooths over more neighbours.
    pub knn200_top1: f64,
    pub knn200_top5: f64,
    /// Linear probe on the test split.
    pub probe_top1: f64,
    pub probe_top5: f64,
    /// Probe weight decay and epochs, chosen on a validation slice of the training split
    /// so that the test split plays no part in choosing them.
    pub probe_weight_decay: f64,
    pub probe_epochs: usize,
    /// The probe's top-1 on that validation slice with the chosen settings.
    pub probe_val_top1: f64,
}

/// Test accuracies of one breed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    /// Class folder name (`n02085620-Chihuahua`) or display name; shown as the latter.
    pub breed: String,
    pub n_test: usize,
    /// Linear probe on the trained encoder.
    pub probe_acc: f64,
    /// Weighted kNN on the trained encoder.
    pub knn_acc: f64,
    /// Linear probe on the random-init encoder.
    pub random_probe_acc: f64,
}

/// A fine-tuned run's two classifiers, side by side: the head trained with the encoder,
/// and a probe refitted on the frozen fine-tuned features. The one with the better
/// validation top-1 ships as `probe.json`; the test figures are only reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierChoice {
    pub head_val_top1: f64,
    pub refit_val_top1: f64,
    pub head_test_top1: f64,
    pub head_test_top5: f64,
    pub refit_test_top1: f64,
    pub refit_test_top5: f64,
    /// `fine-tuning head` or `refitted probe`.
    pub shipped: String,
}

/// Everything `trainer eval` measured, as written to `eval.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Run name (directory of the training run).
    pub run: String,
    /// Path of the evaluated checkpoint.
    pub checkpoint: String,
    /// Training epoch the checkpoint was saved at.
    pub epoch: usize,
    pub backbone: String,
    pub image_size: u32,
    pub n_train: usize,
    pub n_test: usize,
    /// Class folder names in label order.
    pub classes: Vec<String>,
    pub knn_temperature: f64,
    /// Flattened so the headline keys (`knn_top1`, `probe_top1`, ...) are top-level.
    #[serde(flatten)]
    pub trained: EncoderScores,
    pub random_init: EncoderScores,
    pub per_class: Vec<ClassRow>,
    /// Labelled training images per breed for the probe and the kNN bank (absent: all
    /// but the validation slice).
    #[serde(default)]
    pub labels_per_breed: Option<usize>,
    /// Test images shown zoomed out: the dog at this fraction of the frame's width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom_out: Option<f32>,
    /// Fine-tuned runs: the head against a refitted probe, and which one shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierChoice>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot serialise the report: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    /// The confusion matrix is not square or does not match the class names.
    #[error("{path}: {message}")]
    Shape { path: PathBuf, message: String },
}

/// Writes the report as pretty-printed JSON (the machine-readable record of the run).
pub fn write_json(report: &EvalReport, path: &Path) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(report).map_err(|source| ReportError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_file(path, &text)
}

/// Writes the human-readable report: header, summary table, chosen probe settings,
/// links to the PNGs and the per-breed table.
pub fn write_markdown(report: &EvalReport, path: &Path) -> Result<(), ReportError> {
    write_file(path, &markdown(report))
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A fraction as a percentage with one decimal.
fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// The gain of `trained` over `random` in percentage points, signed so a loss stands out.
fn gain(trained: f64, random: f64) -> String {
    format!("{:+.1} pp", (trained - random) * 100.0)
}

/// Breed names go into table cells, where a `|` would split the cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

// Writing to a String cannot fail, so the results of writeln! are ignored below.
fn markdown(r: &EvalReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation of {}\n", r.run);
    let _ = writeln!(md, "- checkpoint: `{}` (epoch {})", r.checkpoint, r.epoch);
    let _ = writeln!(
        md,
        "- backbone: {}, image size {} px",
        r.backbone, r.image_size
    );
    let _ = writeln!(
        md,
        "- frozen features of {} train and {} test images, {} classes; kNN temperature {}\n",
        r.n_train,
        r.n_test,
        r.classes.len(),
        r.knn_temperature
    );
    let labels = r
        .labels_per_breed
        .map_or("all but the validation slice".to_string(), |n| {
            n.to_string()
        });
    let _ = writeln!(md, "- labelled training images per breed: {labels}");
    if let Some(z) = r.zoom_out {
        let _ = writeln!(
            md,
            "- test images zoomed out: the dog at {:.0}% of the frame's width, on a grey canvas",
            z * 100.0
        );
    }
    let _ = writeln!(md);
    summary_section(&mut md, &r.trained, &r.random_init);
    if let Some(c) = &r.classifier {
        classifier_section(&mut md, c);
    }
    let _ = writeln!(md, "## Plots\n");
    let _ = writeln!(
        md,
        "- [Linear probe confusion matrix](confusion.png): rows are true breeds, \
         columns predictions, ordered so that breeds confused with each other sit together."
    );
    let _ = writeln!(
        md,
        "- [kNN top-1 during training](knn_curve.png), with the random-init encoder as reference.\n"
    );
    per_breed_section(&mut md, &r.per_class);
    md
}

/// Every figure beside its random-init baseline, and the probe settings chosen.
fn summary_section(md: &mut String, t: &EncoderScores, b: &EncoderScores) {
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(md, "| metric | trained | random init | difference |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let rows = [
        ("kNN k=20 top-1", t.knn_top1, b.knn_top1),
        ("kNN k=20 top-5", t.knn_top5, b.knn_top5),
        ("kNN k=200 top-1", t.knn200_top1, b.knn200_top1),
        ("kNN k=200 top-5", t.knn200_top5, b.knn200_top5),
        ("linear probe top-1", t.probe_top1, b.probe_top1),
        ("linear probe top-5", t.probe_top5, b.probe_top5),
    ];
    for (name, trained, random) in rows {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            pct(trained),
            pct(random),
            gain(trained, random)
        );
    }
    let _ = writeln!(
        md,
        "\nLinear probe settings, chosen on a validation slice of the training split: \
         trained encoder weight decay {:e}, {} epochs (validation top-1 {}); \
         random init weight decay {:e}, {} epochs (validation top-1 {}).\n",
        t.probe_weight_decay,
        t.probe_epochs,
        pct(t.probe_val_top1),
        b.probe_weight_decay,
        b.probe_epochs,
        pct(b.probe_val_top1)
    );
}

/// The fine-tuning head beside the refitted probe, and which one ships.
fn classifier_section(md: &mut String, c: &ClassifierChoice) {
    let _ = writeln!(
        md,
        "## Which classifier ships
"
    );
    let _ = writeln!(
        md,
        "| classifier | validation top-1 | test top-1 | test top-5 |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (name, val, t1, t5) in [
        (
            "fine-tuning head",
            c.head_val_top1,
            c.head_test_top1,
            c.head_test_top5,
        ),
        (
            "refitted probe",
            c.refit_val_top1,
            c.refit_test_top1,
            c.refit_test_top5,
        ),
    ] {
        let _ = writeln!(md, "| {name} | {} | {} | {} |", pct(val), pct(t1), pct(t5));
    }
    let _ = writeln!(
        md,
        "\nShipped as `probe.json`: the {}, the better on validation. The summary's probe \
         figures are its.\n",
        c.shipped
    );
}

/// One row per breed, best probe accuracy first.
fn per_breed_section(md: &mut String, rows: &[ClassRow]) {
    let _ = writeln!(md, "## Per breed\n");
    let _ = writeln!(
        md,
        "Sorted by linear probe accuracy, best first. Accuracies are top-1 on the test split.\n"
    );
    let _ = writeln!(
        md,
        "| breed | test images | linear probe | kNN | random-init probe |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let mut sorted: Vec<&ClassRow> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        b.probe_acc
            .total_cmp(&a.probe_acc)
            .then_with(|| a.breed.cmp(&b.breed))
    });
    for row in sorted {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            cell(&class_display_name(&row.breed)),
            row.n_test,
            pct(row.probe_acc),
            pct(row.knn_acc),
            pct(row.random_probe_acc)
        );
    }
}
