//! Checkpoints: weights and momentum as safetensors, plus a small JSON with the epoch,
//! step, seeds and the resolved configuration, so a run can be resumed or exported.
//!
//! The JSON (`checkpoint-last.json`, `checkpoint-best.json`) is the commit point: it names
//! the tensor files, and it is replaced atomically only once they are complete, so a
//! process killed at any moment leaves one consistent checkpoint (see [`save`]).

use crate::config::TrainConfig;
use crate::engine::session::Session;
use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The latest state, written every epoch.
pub const LAST: &str = "checkpoint-last";
/// The state with the best kNN top-1 so far.
pub const BEST: &str = "checkpoint-best";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimiser steps.
    pub step: usize,
    pub seed: u64,
    pub knn_top1: Option<f64>,
    pub best_knn_top1: Option<f64>,
    /// Class folder names in label order.
    pub classes: Vec<String>,
    pub config: TrainConfig,
    pub saved_unix: u64,
    /// The device that trained it, with its name (`cuda:0: NVIDIA H200`).
    #[serde(default)]
    pub device: String,
    /// The tensor files (set by [`save`]; absent from checkpoints written before).
    #[serde(default)]
    pub files: Option<CheckpointFiles>,
    /// Which command wrote it (absent: `pretrain`, from before fine-tuning existed).
    #[serde(default)]
    pub stage: Stage,
    /// The stages that made the encoder this run started from (a fine-tuning's pretraining).
    #[serde(default)]
    pub stages: Vec<simsiam::bundle::StageSummary>,
    /// Fine-tuning: the head's top-1 on the validation slice, at this and the best epoch.
    #[serde(default)]
    pub val_top1: Option<f64>,
    #[serde(default)]
    pub best_val_top1: Option<f64>,
}

/// The training stage a run belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// SimSiam, without labels (`trainer pretrain`).
    #[default]
    Pretrain,
    /// Cross-entropy on labels (`trainer finetune`).
    Finetune,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Finetune => "finetune",
        }
    }
}

/// The tensor files a checkpoint's JSON names, relative to the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFiles {
    pub weights: String,
    pub optimizer: String,
}

/// `dir/<tag>.json`: the commit point of a checkpoint.
fn json_path(dir: &Path, tag: &str) -> PathBuf {
    dir.join(format!("{tag}.json"))
}

/// The files of checkpoint `meta`: those it names, or (checkpoints written before the
/// JSON named its files) `<tag>.safetensors` and `<tag>.optim.safetensors`.
fn files(dir: &Path, tag: &str, meta: &CheckpointMeta) -> (PathBuf, PathBuf) {
    match &meta.files {
        Some(f) => (dir.join(&f.weights), dir.join(&f.optimizer)),
        None => (
            dir.join(format!("{tag}.safetensors")),
            dir.join(format!("{tag}.optim.safetensors")),
        ),
    }
}

fn tensor_file(path: &Path) -> impl FnOnce(tch::TchError) -> TrainError + '_ {
    move |source| TrainError::TensorFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a finished file durable before anything points at it.
fn sync(path: &Path) -> Result<(), TrainError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(TrainError::io(path))
}

/// Saves the weights, momentum buffers and `meta` as checkpoint `tag` of `dir`.
///
/// A save is one atomic step, whatever moment the process is killed at: the tensors go to
/// files named after the epoch (`checkpoint-e0005.safetensors`, `….optim.safetensors`),
/// written under temporary names, fsynced and renamed; then `<tag>.json`, which names
/// them, replaces the old one atomically ([`simsiam::files::write_atomic`]). Until that rename the
/// old JSON still names the old, complete files; afterwards the new ones. Files no
/// checkpoint names any more are removed last.
pub fn save(
    dir: &Path,
    tag: &str,
    session: &Session,
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    let stem = format!("checkpoint-e{:04}", meta.epoch);
    let names = CheckpointFiles {
        weights: format!("{stem}.safetensors"),
        optimizer: format!("{stem}.optim.safetensors"),
    };
    // Tensor files keep their .safetensors extension in the temporary name: tch picks
    // the format from it.
    let tmp_weights = dir.join(format!("{stem}.tmp.safetensors"));
    let tmp_optim = dir.join(format!("{stem}.optim.tmp.safetensors"));
    // Contiguous copies: channels-last weights have NHWC strides, which safetensors cannot store.
    let mut vars: Vec<(String, tch::Tensor)> = session
        .vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.contiguous()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::Tensor::write_safetensors(&vars, &tmp_weights).map_err(tensor_file(&tmp_weights))?;
    session
        .opt
        .save(&tmp_optim)
        .map_err(tensor_file(&tmp_optim))?;
    for (from, to) in [
        (&tmp_weights, &names.weights),
        (&tmp_optim, &names.optimizer),
    ] {
        sync(from)?;
        std::fs::rename(from, dir.join(to)).map_err(TrainError::io(dir.join(to)))?;
    }
    let meta = CheckpointMeta {
        files: Some(names),
        ..meta.clone()
    };
    commit(dir, tag, &meta)?;
    remove_unnamed(dir)
}

/// Writes `dir/<tag>.json` atomically: the moment checkpoint `tag` becomes `meta`.
fn commit(dir: &Path, tag: &str, meta: &CheckpointMeta) -> Result<(), TrainError> {
    let json = json_path(dir, tag);
    let text = serde_json::to_string_pretty(meta).map_err(TrainError::json(&json))?;
    simsiam::files::write_atomic(&json, text.as_bytes())
        .map_err(|e| TrainError::io(&json)(e.source))
}

/// Removes the tensor files that neither `checkpoint-last` nor `checkpoint-best` names,
/// and the temporary files of saves that were interrupted.
fn remove_unnamed(dir: &Path) -> Result<(), TrainError> {
    let mut named = Vec::new();
    for tag in [LAST, BEST] {
        if let Ok(meta) = read_meta(dir, tag) {
            let (w, o) = files(dir, tag, &meta);
            named.extend([w, o]);
        }
    }
    let entries = std::fs::read_dir(dir).map_err(TrainError::io(dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-e")
            && name.ends_with(".safetensors")
            && !named.contains(&path)
        {
            std::fs::remove_file(&path).map_err(TrainError::io(&path))?;
        }
    }
    Ok(())
}

/// The weights file of checkpoint `meta` (`tag` of `dir`).
pub fn weights_file(dir: &Path, tag: &str, meta: &CheckpointMeta) -> PathBuf {
    files(dir, tag, meta).0
}

/// Reads `dir/<tag>.json`.
pub fn read_meta(dir: &Path, tag: &str) -> Result<CheckpointMeta, TrainError> {
    let json = json_path(dir, tag);
    let text = std::fs::read_to_string(&json).map_err(TrainError::io(&json))?;
    serde_json::from_str(&text).map_err(TrainError::json(json))
}

/// Loads weights (and momentum, when `with_optimizer`) into `session`.
pub fn load(
    dir: &Path,
    tag: &str,
    session: &mut Session,
    with_optimizer: bool,
) -> Result<CheckpointMeta, TrainError> {
    let meta = read_meta(dir, tag)?;
    let (weights, optim) = files(dir, tag, &meta);
    session.vs.load(&weights).map_err(tensor_file(&weights))?;
    if with_optimizer {
        session.opt.load(&optim).map_err(tensor_file(&optim))?;
    }
    Ok(meta)
}

/// Makes checkpoint `to` the same as `from` (e.g. best := last): its JSON names the same
/// tensor files, so nothing is copied.
pub fn copy(dir: &Path, from: &str, to: &str) -> Result<(), TrainError> {
    let meta = read_meta(dir, from)?;
    let (weights, optim) = files(dir, from, &meta);
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let meta = CheckpointMeta {
        files: Some(CheckpointFiles {
            weights: name(&weights),
            optimizer: name(&optim),
        }),
        ..meta
    };
    commit(dir, to, &meta)?;
    remove_unnamed(dir)
}
