//! Everything that links libtorch: the model, the SimSiam step, pretraining, benchmarks.

pub mod bench;
pub mod checkpoint;
pub mod eval;
pub mod export;
pub mod loader;
pub mod loss;
pub mod model;
pub mod pretrain;
pub mod probe_fit;
pub mod schedule;
pub mod session;
pub mod sgd;

use std::path::PathBuf;

/// Errors of training and benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no dataset root: pass --data <dir> or set data.root")]
    NoDataRoot,
    #[error(transparent)]
    Data(#[from] simsiam::data::DataError),
    #[error(transparent)]
    Config(#[from] simsiam::config::ConfigError),
    #[error(transparent)]
    Metrics(#[from] simsiam::metrics::MetricsError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("only {found} usable training images, fewer than one batch of {batch}")]
    TooFewImages { found: usize, batch: usize },
    #[error("CUDA was requested (run.device = \"cuda\") but libtorch sees no CUDA device")]
    NoCuda,
    #[error("training stopped at epoch {epoch}: representation collapse (std of normalised z {std:.5}, effective rank {rank:.2}); outputs are in the run directory")]
    Collapsed { epoch: usize, std: f64, rank: f64 },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}
