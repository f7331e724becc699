//! A run's history: per-epoch training metrics, one JSON object per line in
//! `metrics.jsonl` ([`EpochMetrics`] for pretraining, [`FinetuneMetrics`] for fine-tuning).
//!
//! JSON lines survive a crash mid-run (every line is complete on its own) and are easy
//! to read from any tool; `--resume` truncates the file back to the resumed epoch.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimiser steps done so far.
    pub step: usize,
    pub loss: f64,
    /// Mean over channels of the batch std of the l2-normalised projector output.
    pub z_std: f64,
    /// 1/√d, the std of a healthy (uniformly spread) output.
    pub z_std_healthy: f64,
    /// Effective rank of the batch's normalised outputs (collapse shows as a fall to 1).
    #[serde(default)]
    pub z_rank: f64,
    pub lr: f64,
    /// Training images per second over the epoch (each image gives two views).
    pub img_per_s: f64,
    pub epoch_seconds: f64,
    /// Share of the epoch's wall time the training loop waited for augmented views
    /// (0: the data pipeline kept up; on a GPU, the share the GPU sat idle for data).
    #[serde(default)]
    pub data_wait: f64,
    /// Weighted kNN top-1 on the evaluation split, on the epochs it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_top1: Option<f64>,
    #[serde(default)]
    pub collapse_alarm: bool,
}

/// One epoch of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    pub step: usize,
    /// Mean training cross-entropy (with label smoothing) over the epoch's steps.
    pub loss: f64,
    /// Top-1 on the epoch's augmented training views.
    pub train_top1: f64,
    /// Cross-entropy and top-1 of the head on the validation slice (no augmentation).
    pub val_loss: f64,
    pub val_top1: f64,
    /// Learning rates at the epoch's last step (the schedule moves every step).
    pub backbone_lr: f64,
    pub head_lr: f64,
    pub img_per_s: f64,
    pub epoch_seconds: f64,
    pub data_wait: f64,
}

/// A line of `metrics.jsonl`.
pub trait Record: Serialize + DeserializeOwned {
    fn epoch(&self) -> usize;
    /// `(images/s, seconds)` of the epoch, for [`mean_rate`].
    fn rate(&self) -> (f64, f64);
}

impl Record for EpochMetrics {
    fn epoch(&self) -> usize {
        self.epoch
    }
    fn rate(&self) -> (f64, f64) {
        (self.img_per_s, self.epoch_seconds)
    }
}

impl Record for FinetuneMetrics {
    fn epoch(&self) -> usize {
        self.epoch
    }
    fn rate(&self) -> (f64, f64) {
        (self.img_per_s, self.epoch_seconds)
    }
}

/// The records of epochs `<= through` in `path` (a missing or damaged file: none), as
/// `(images/s, seconds)` pairs: what a stage's summary needs.
pub fn rates<R: Record>(path: &Path, through: usize) -> Vec<(f64, f64)> {
    read::<R>(path)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.epoch() <= through)
        .map(|m| m.rate())
        .collect()
}

/// A resumed (or new) run's history: the records of epochs `<= start` kept in memory and
/// in the file, which is opened for appending the epochs to come.
pub fn resume<R: Record>(
    path: &Path,
    start: usize,
) -> Result<(Vec<R>, MetricsWriter), HistoryError> {
    let kept = read::<R>(path)?
        .into_iter()
        .filter(|m| m.epoch() <= start)
        .collect();
    Ok((kept, MetricsWriter::open::<R>(path, start)?))
}

/// Images per second over epochs given as `(images/s, seconds)`, weighted by time.
pub fn mean_rate(epochs: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let (imgs, secs) = epochs.into_iter().fold((0.0, 0.0), |(i, s), (rate, secs)| {
        (i + rate * secs, s + secs)
    });
    if secs > 0.0 {
        imgs / secs
    } else {
        0.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads all records of a metrics file (an absent file has none).
///
/// A last line without its newline is what a process killed mid-append leaves: when it
/// does not parse it is dropped with a warning (the epoch is trained again on resume). A
/// bad line anywhere else is an error.
pub fn read<R: Record>(path: &Path) -> Result<Vec<R>, HistoryError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(rec) => out.push(rec),
            Err(_) if i + 1 == lines.len() && !complete => {
                log::warn!("{}: ignoring the cut-off last line", path.display());
            }
            Err(source) => {
                return Err(HistoryError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// Appends records to a metrics file, flushing each line.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` keeping the records of epochs `<= keep_through` (resume) and dropping
    /// any later ones, which a resumed run will write again.
    pub fn open<R: Record>(path: &Path, keep_through: usize) -> Result<Self, HistoryError> {
        let kept: String = read::<R>(path)?
            .into_iter()
            .filter(|m| m.epoch() <= keep_through)
            .map(|m| serde_json::to_string(&m).expect("metrics serialise") + "\n")
            .collect();
        // Replaced atomically: a process killed here keeps the old history, never none.
        simsiam::files::write_atomic(path, kept.as_bytes()).map_err(|e| io_err(path)(e.source))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append(&mut self, m: &impl Record) -> Result<(), HistoryError> {
        let line = serde_json::to_string(m).expect("metrics serialise");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(io_err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, knn: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step: epoch * 10,
            loss: -0.5,
            z_std: 0.02,
            z_std_healthy: 0.022,
            z_rank: 30.0,
            lr: 0.05,
            img_per_s: 30.0,
            epoch_seconds: 1.0,
            data_wait: 0.0,
            knn_top1: knn,
            collapse_alarm: false,
        }
    }

    #[test]
    fn round_trips_and_truncates_on_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open::<EpochMetrics>(&path, 0).expect("open");
        for e in 1..=3 {
            w.append(&rec(e, (e == 2).then_some(0.25))).expect("append");
        }
        drop(w);
        assert_eq!(
            read::<EpochMetrics>(&path).expect("read"),
            vec![rec(1, None), rec(2, Some(0.25)), rec(3, None)]
        );
        let mut w = MetricsWriter::open::<EpochMetrics>(&path, 2).expect("reopen");
        w.append(&rec(3, Some(0.3))).expect("append");
        assert_eq!(
            read::<EpochMetrics>(&path).expect("read")[2],
            rec(3, Some(0.3))
        );
        assert_eq!(read::<EpochMetrics>(&path).expect("read").len(), 3);
    }

    #[test]
    fn a_line_cut_off_by_a_crash_is_dropped_but_damage_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let whole = serde_json::to_string(&rec(1, None)).expect("json");
        let next = serde_json::to_string(&rec(2, None)).expect("json");
        std::fs::write(&path, format!("{whole}\n{}", &next[..20])).expect("write");
        assert_eq!(
            read::<EpochMetrics>(&path).expect("read"),
            vec![rec(1, None)]
        );
        let mut w = MetricsWriter::open::<EpochMetrics>(&path, 1).expect("resume");
        w.append(&rec(2, None)).expect("append");
        assert_eq!(
            read::<EpochMetrics>(&path).expect("read"),
            vec![rec(1, None), rec(2, None)]
        );
        std::fs::write(&path, format!("{}\n{whole}\n", &next[..20])).expect("write");
        let err = read::<EpochMetrics>(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
