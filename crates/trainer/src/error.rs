//! The trainer's errors, one variant per thing that can fail, each naming what failed.

use std::path::PathBuf;

/// Errors of training, evaluation, export and benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no dataset root: pass --data <dir> or set data.root")]
    NoDataRoot,
    #[error(transparent)]
    Data(#[from] crate::engine::data::DataError),
    #[error(transparent)]
    Config(#[from] simsiam::config::ConfigError),
    #[error(transparent)]
    History(#[from] crate::engine::history::HistoryError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A tensor file (checkpoint weights, momentum) libtorch could not read or write.
    #[error("{path}: {source}")]
    TensorFile {
        path: PathBuf,
        source: tch::TchError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A checkpoint that does not fit the run: another model, another class list.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("model bundle: {0}")]
    Bundle(#[from] simsiam::bundle::BundleError),
    #[error("{path}: {source}")]
    Probe {
        path: PathBuf,
        source: simsiam::probe::ProbeError,
    },
    #[error("{}: {source}; run `trainer eval --run {}` first to fit the probe", .run.join(simsiam::bundle::PROBE).display(), .run.display())]
    NoProbe {
        run: PathBuf,
        source: simsiam::probe::ProbeError,
    },
    #[error(
        "the probe in {path} was fitted on {probe}-d features, the encoder makes {encoder}-d ones"
    )]
    ProbeWidth {
        path: PathBuf,
        probe: usize,
        encoder: usize,
    },
    #[error("ONNX export: {0}")]
    Onnx(#[from] simsiam_onnx::OnnxError),
    #[error("ONNX Runtime: {0}")]
    Runtime(#[from] simsiam::runtime::RuntimeError),
    #[error("parity check failed: max |ONNX Runtime − tch| = {diff:.3e} > {tolerance:.0e}")]
    Parity { diff: f64, tolerance: f64 },
    #[error("ONNX output has {onnx} values, tch {tch}")]
    ParityShape { onnx: usize, tch: usize },
    #[error("{root}: only {found} decodable images for the parity check, {needed} needed")]
    ParityImages {
        root: PathBuf,
        found: usize,
        needed: usize,
    },
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        source: simsiam::decode::DecodeError,
    },
    #[error("class {class} of {root} is not one of the bundle's classes")]
    UnknownClass { root: PathBuf, class: String },
    #[error(transparent)]
    Report(#[from] crate::engine::report::ReportError),
    #[error(transparent)]
    Plot(#[from] crate::engine::plot::PlotError),
    #[error("--labels-per-breed {asked}: breed {class} has only {available} training images outside the validation slice")]
    LabelsPerBreed {
        asked: usize,
        class: String,
        available: usize,
    },
    #[error("--labels-per-breed must be at least 1")]
    NoLabels,
    #[error("only {found} usable training images, fewer than one batch of {batch}")]
    TooFewImages { found: usize, batch: usize },
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("CUDA was requested (run.device = \"cuda\") but is not usable: {why}")]
    NoCuda { why: String },
    #[error("training stopped at epoch {epoch}: representation collapse (std of normalised z {std:.5}, effective rank {rank:.2}); outputs are in the run directory")]
    Collapsed { epoch: usize, std: f64, rank: f64 },
}

impl TrainError {
    /// `map_err` helper for I/O on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }

    /// `map_err` helper for JSON read from or written to `path`.
    pub(crate) fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Json { path, source }
    }
}
