//! `trainer embed`: embeddings of image files computed by libtorch from a checkpoint (not
//! from the ONNX file), through the same decoding and evaluation transform the server
//! uses: what the server's answers are checked against.

use crate::commands::pretrain::eval_transform;
use crate::config::TrainConfig;
use crate::engine::checkpoint;
use crate::engine::session::{self, Session};
use crate::TrainError;
use simsiam::decode::decode_bytes_min_side;
use std::path::{Path, PathBuf};

/// Unit-length embeddings of `files`, one row each, from checkpoint `tag` of `run`.
pub fn embed_files(
    run: &Path,
    tag: &str,
    cfg: &TrainConfig,
    files: &[PathBuf],
) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut s = Session::new(cfg, session::device(cfg)?);
    checkpoint::load(run, tag, &mut s, false)?;
    let t = eval_transform(cfg);
    let images = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(TrainError::io(f))?;
            decode_bytes_min_side(&bytes, None, t.resize).map_err(|source| TrainError::Image {
                path: f.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut features = s.features(&images, &t, 32, "embedding")?;
    let dim = s.model.backbone.feature_dim as usize;
    crate::engine::knn::l2_normalize_rows(&mut features, dim);
    Ok(features.chunks(dim).map(<[f32]>::to_vec).collect())
}
