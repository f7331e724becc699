//! Checkpoints: weights and momentum as safetensors, plus a small JSON with the epoch,
//! step, seeds and the resolved configuration, so a run can be resumed or exported.
//!
//! Files are written under a temporary name and renamed, so an interrupted save never
//! leaves a half-written checkpoint in place of a good one.

use crate::config::TrainConfig;
use crate::session::Session;
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
    /// The device that trained it, with its name (`Cuda(0) NVIDIA H200`).
    #[serde(default)]
    pub device: String,
}

fn paths(dir: &Path, tag: &str) -> [PathBuf; 3] {
    [
        dir.join(format!("{tag}.safetensors")),
        dir.join(format!("{tag}.optim.safetensors")),
        dir.join(format!("{tag}.json")),
    ]
}

fn tmp(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn tensor_file(path: &Path) -> impl FnOnce(tch::TchError) -> TrainError + '_ {
    move |source| TrainError::TensorFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Saves the weights, momentum buffers and `meta` as `dir/<tag>.*`.
pub fn save(
    dir: &Path,
    tag: &str,
    session: &Session,
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    let [weights, optim, json] = paths(dir, tag);
    // Tensor files keep their .safetensors extension in the temporary name: tch picks
    // the format from it.
    let tmp_weights = dir.join(format!("{tag}.tmp.safetensors"));
    let tmp_optim = dir.join(format!("{tag}.optim.tmp.safetensors"));
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
    let text = serde_json::to_string_pretty(meta).map_err(TrainError::json(&json))?;
    std::fs::write(tmp(&json), text).map_err(TrainError::io(tmp(&json)))?;
    for (from, to) in [
        (tmp_weights, weights),
        (tmp_optim, optim),
        (tmp(&json), json),
    ] {
        std::fs::rename(&from, &to).map_err(TrainError::io(to))?;
    }
    Ok(())
}

/// Reads `dir/<tag>.json`.
pub fn read_meta(dir: &Path, tag: &str) -> Result<CheckpointMeta, TrainError> {
    let [_, _, json] = paths(dir, tag);
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
    let [weights, optim, _] = paths(dir, tag);
    session.vs.load(&weights).map_err(tensor_file(&weights))?;
    if with_optimizer {
        session.opt.load(&optim).map_err(tensor_file(&optim))?;
    }
    Ok(meta)
}

/// Copies the files of checkpoint `from` to `to` (e.g. last → best).
pub fn copy(dir: &Path, from: &str, to: &str) -> Result<(), TrainError> {
    for (src, dst) in paths(dir, from).iter().zip(paths(dir, to)) {
        std::fs::copy(src, tmp(&dst)).map_err(TrainError::io(src))?;
        std::fs::rename(tmp(&dst), &dst).map_err(TrainError::io(&dst))?;
    }
    Ok(())
}
