//! The command line: raw flags, and their conversion into configuration overrides.
//!
//! Flags override the configuration file (`config/trainer.toml` unless `--config` names
//! another) and `SIMSIAM_*` environment variables; every value is validated once, by
//! [`TrainConfig::load`] or [`TrainConfig::with_overrides`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use simsiam_trainer::commands::seed_gallery::Split;
use simsiam_trainer::config::{Backbone, Override};
use simsiam_trainer::engine::checkpoint;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "SimSiam self-supervised pretraining for dog-breed embeddings"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Pretrain an encoder with SimSiam; writes checkpoints, metrics.jsonl and training.png.
    Pretrain(PretrainArgs),
    /// Fine-tune an encoder plus a linear breed head on the training split's labels.
    Finetune(FinetuneArgs),
    /// Evaluate a run's frozen features: kNN and linear probe, beside a random encoder.
    Eval(EvalArgs),
    /// Export a run's encoder to ONNX, with its probe, as a bundle the server loads.
    Export(ExportArgs),
    /// Embed a dataset through a bundle's ONNX encoder and store it as the bundle's gallery.
    Gallery(GalleryArgs),
    /// Print images/s for the data pipeline, compute-only steps, and end to end.
    Bench(BenchArgs),
    /// Print a run's embeddings of image files (computed by libtorch), as JSON lines.
    Embed(EmbedArgs),
    /// Write a compact copy of a split (resized JPEGs, one folder per class) to carry
    /// training to another machine.
    Pack(PackArgs),
}

/// Which data, at which size, on which hardware: shared by every command that reads a
/// dataset and runs the model.
#[derive(Args, Default)]
pub struct DataFlags {
    /// Dataset root (Stanford Dogs layout, or one folder per class).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Keep only the first N breeds.
    #[arg(long)]
    pub breeds: Option<usize>,
    /// At most M images per breed in each split.
    #[arg(long)]
    pub max_per_breed: Option<usize>,
    /// Model input side in pixels.
    #[arg(long)]
    pub image_size: Option<u32>,
    /// cpu, cuda or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Settings of a new training: [`DataFlags`] plus the model and optimiser.
#[derive(Args)]
pub struct TrainFlags {
    #[command(flatten)]
    pub data: DataFlags,
    /// Configuration file (default: config/trainer.toml when present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long, value_enum)]
    pub backbone: Option<BackboneArg>,
    /// Augmentation worker threads.
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
}

/// A checkpoint of a pretraining run.
#[derive(Args)]
pub struct RunFlags {
    /// Run directory written by `trainer pretrain`.
    #[arg(long)]
    pub run: PathBuf,
    /// Checkpoint: the last epoch's, or the one with the best kNN top-1.
    #[arg(long, value_enum, default_value = "last")]
    pub checkpoint: CheckpointArg,
}

#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub train: TrainFlags,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Run directory for checkpoints, metrics and plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after N epochs of this invocation (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Stop the run when the collapse alarm fires.
    #[arg(long)]
    pub stop_on_collapse: bool,
    /// kNN monitor every N epochs (0: at the end only).
    #[arg(long)]
    pub knn_every: Option<usize>,
    /// Debug: no stop-gradient on the target branch (demonstrates collapse).
    #[arg(long)]
    pub debug_no_stop_grad: bool,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// Pretraining run whose encoder is fine-tuned (its data and model settings are kept).
    #[arg(long, required_unless_present = "init", conflicts_with = "init")]
    pub run: Option<PathBuf>,
    /// Checkpoint of --run: the last epoch's, or the one with the best kNN top-1.
    #[arg(long, value_enum, default_value = "last")]
    pub checkpoint: CheckpointArg,
    /// `random`: start from random weights instead of --run (the supervised baseline).
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Configuration file whose [finetune] section is used (with --init random, all of it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataFlags,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub head_lr: Option<f64>,
    #[arg(long)]
    pub backbone_lr: Option<f64>,
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Fine-tune on N seeded labelled images per breed (default: all but validation).
    #[arg(long)]
    pub labels_per_breed: Option<usize>,
    /// Probability of a zoomed-out training view (0 switches zoom-outs off).
    #[arg(long)]
    pub zoom_out_p: Option<f64>,
    /// Augmentation worker threads.
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory (default: <run>-finetune, or runs/finetune-random).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after N epochs of this invocation (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InitArg {
    Random,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub run: RunFlags,
    /// Data and hardware (default: the run's).
    #[command(flatten)]
    pub data: DataFlags,
    /// Fit the probe and fill the kNN bank with N seeded labelled images per breed
    /// (default: the run's fine-tuning setting, else all but the validation slice).
    #[arg(long)]
    pub labels_per_breed: Option<usize>,
    /// Measure on test images zoomed out: the dog at this fraction of the frame's width
    /// (e.g. 0.5), on a grey canvas. Writes eval-zoom<F>.json/.md, not probe.json.
    #[arg(long, value_parser = zoom_fraction)]
    pub zoom_out: Option<f32>,
}

fn zoom_fraction(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{s}: must be a fraction in (0, 1]")),
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// The run (after `trainer eval`, which fits the probe).
    #[command(flatten)]
    pub run: RunFlags,
    /// Bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Model name in the manifest (default: the run directory's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "1.0.0")]
    pub model_version: String,
    /// Store convolution weights as float16 (half the file size).
    #[arg(long)]
    pub fp16: bool,
    /// Dataset root for the parity images (default: the run's).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Args)]
pub struct GalleryArgs {
    /// Bundle directory written by `trainer export`.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    #[arg(long)]
    pub breeds: Option<usize>,
    #[arg(long)]
    pub max_per_breed: Option<usize>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub train: TrainFlags,
    /// Training steps measured per mode.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub run: RunFlags,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Args)]
pub struct PackArgs {
    /// Dataset root (Stanford Dogs layout, or one folder per class).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder to write (one sub-folder per class).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Shorter side of the packed images, in pixels.
    #[arg(long, default_value_t = 96)]
    pub side: u32,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    #[arg(long)]
    pub breeds: Option<usize>,
    #[arg(long)]
    pub max_per_breed: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BackboneArg {
    Resnet18,
    Resnet50,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CheckpointArg {
    Last,
    Best,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
    All,
}

impl CheckpointArg {
    pub fn tag(self) -> &'static str {
        match self {
            CheckpointArg::Last => checkpoint::LAST,
            CheckpointArg::Best => checkpoint::BEST,
        }
    }
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
            SplitArg::All => Split::All,
        }
    }
}

fn path(p: &Path) -> config::Value {
    p.to_string_lossy().into_owned().into()
}

/// `(key, value)` for each flag that was given.
struct Overrides(Vec<Override>);

impl Overrides {
    fn set<T: Into<config::Value>>(&mut self, key: &'static str, value: Option<T>) {
        if let Some(v) = value {
            self.0.push((key, v.into()));
        }
    }
}

impl DataFlags {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Overrides(Vec::new());
        o.set("data.root", self.data.as_deref().map(path));
        o.set("data.breeds", self.breeds.map(|v| v as u64));
        o.set("data.max_per_breed", self.max_per_breed.map(|v| v as u64));
        o.set("data.image_size", self.image_size.map(u64::from));
        o.set("run.device", self.device.clone());
        o.set("run.threads", self.threads.map(|v| v as u64));
        o.0
    }
}

impl TrainFlags {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Overrides(self.data.overrides());
        o.set("optim.batch", self.batch.map(|v| v as u64));
        let backbone = self.backbone.map(|b| match b {
            BackboneArg::Resnet18 => Backbone::Resnet18,
            BackboneArg::Resnet50 => Backbone::Resnet50,
        });
        o.set("model.backbone", backbone.map(Backbone::name));
        o.set("data.workers", self.workers.map(|v| v as u64));
        o.set("run.seed", self.seed);
        o.0
    }
}

impl FinetuneArgs {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Overrides(self.data.overrides());
        o.set("finetune.epochs", self.epochs.map(|v| v as u64));
        o.set("finetune.batch", self.batch.map(|v| v as u64));
        o.set("finetune.head_lr", self.head_lr);
        o.set("finetune.backbone_lr", self.backbone_lr);
        o.set(
            "finetune.warmup_epochs",
            self.warmup_epochs.map(|v| v as u64),
        );
        o.set("finetune.weight_decay", self.weight_decay);
        o.set("finetune.label_smoothing", self.label_smoothing);
        o.set(
            "finetune.labels_per_breed",
            self.labels_per_breed.map(|v| v as u64),
        );
        o.set("finetune.zoom_out_p", self.zoom_out_p);
        o.set("data.workers", self.workers.map(|v| v as u64));
        o.set("run.seed", self.seed);
        o.set("run.out", self.out.as_deref().map(path));
        o.0
    }

    /// Where the run goes without --out: beside the pretraining run, or under runs/.
    pub fn default_out(&self) -> PathBuf {
        match &self.run {
            Some(run) => {
                let name = run
                    .file_name()
                    .map_or("run".into(), |n| n.to_string_lossy().into_owned());
                run.with_file_name(format!("{name}-finetune"))
            }
            None => PathBuf::from("runs/finetune-random"),
        }
    }
}

impl PretrainArgs {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Overrides(self.train.overrides());
        o.set("optim.epochs", self.epochs.map(|v| v as u64));
        o.set("run.out", self.out.as_deref().map(path));
        o.set("monitor.knn_every", self.knn_every.map(|v| v as u64));
        o.set(
            "monitor.stop_on_collapse",
            self.stop_on_collapse.then_some(true),
        );
        o.set(
            "debug.no_stop_grad",
            self.debug_no_stop_grad.then_some(true),
        );
        o.0
    }
}
