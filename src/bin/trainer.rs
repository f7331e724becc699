//! `trainer`: SimSiam pretraining and benchmarks on a dog-breed dataset.
//!
//! Command-line flags override the configuration file (`config/trainer.toml` unless
//! `--config` names another) and `SIMSIAM_*` environment variables.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use simsiam::config::{Backbone, Override, TrainConfig};
use std::path::PathBuf;
use train::{bench, checkpoint, eval, export, pretrain};

// The training code (everything that uses tch) is compiled into this binary, not into the
// library: the server links the library, and must not link libtorch.
#[path = "../train/mod.rs"]
mod train;

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "SimSiam self-supervised pretraining for dog-breed embeddings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an encoder with SimSiam; writes checkpoints, metrics.jsonl and training.png.
    Pretrain(PretrainArgs),
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
}

#[derive(Args)]
struct EmbedArgs {
    /// Run directory written by `trainer pretrain`.
    #[arg(long)]
    run: PathBuf,
    #[arg(long, default_value = "last")]
    checkpoint: String,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// Settings shared by every command that reads a dataset and builds a model.
#[derive(Args)]
struct Common {
    /// Dataset root (Stanford Dogs layout, or one folder per class).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Configuration file (default: config/trainer.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep only the first N breeds.
    #[arg(long)]
    breeds: Option<usize>,
    /// At most M images per breed in each split.
    #[arg(long)]
    max_per_breed: Option<usize>,
    /// Model input side in pixels.
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, value_enum)]
    backbone: Option<BackboneArg>,
    /// cpu, cuda or auto.
    #[arg(long)]
    device: Option<String>,
    /// libtorch compute threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Augmentation worker threads.
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct PretrainArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    epochs: Option<usize>,
    /// Run directory for checkpoints, metrics and plots.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after N epochs of this invocation (continue later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Stop the run when the collapse alarm fires.
    #[arg(long)]
    stop_on_collapse: bool,
    /// kNN monitor every N epochs (0: at the end only).
    #[arg(long)]
    knn_every: Option<usize>,
    /// Debug: no stop-gradient on the target branch (demonstrates collapse).
    #[arg(long)]
    debug_no_stop_grad: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Run directory written by `trainer pretrain`.
    #[arg(long)]
    run: PathBuf,
    /// Checkpoint to evaluate: last or best.
    #[arg(long, default_value = "last")]
    checkpoint: String,
    /// Dataset root (default: the run's).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    breeds: Option<usize>,
    #[arg(long)]
    max_per_breed: Option<usize>,
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
struct ExportArgs {
    /// Run directory (after `trainer eval`, which fits the probe).
    #[arg(long)]
    run: PathBuf,
    /// Bundle directory to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "last")]
    checkpoint: String,
    /// Model name in the manifest (default: the run directory's name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "1.0.0")]
    model_version: String,
    /// Store convolution weights as float16 (half the file size).
    #[arg(long)]
    fp16: bool,
    /// Dataset root for the parity images (default: the run's).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct GalleryArgs {
    /// Bundle directory written by `trainer export`.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,
    #[arg(long)]
    breeds: Option<usize>,
    #[arg(long)]
    max_per_breed: Option<usize>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Test,
    All,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Training steps measured per mode.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackboneArg {
    Resnet18,
    Resnet50,
}

impl Common {
    fn overrides(&self) -> Vec<Override> {
        let mut o: Vec<Override> = Vec::new();
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(v) = &self.data {
            o.push(("data.root", path(v).into()));
        }
        if let Some(v) = self.breeds {
            o.push(("data.breeds", (v as u64).into()));
        }
        if let Some(v) = self.max_per_breed {
            o.push(("data.max_per_breed", (v as u64).into()));
        }
        if let Some(v) = self.image_size {
            o.push(("data.image_size", (v as u64).into()));
        }
        if let Some(v) = self.batch {
            o.push(("optim.batch", (v as u64).into()));
        }
        if let Some(v) = self.backbone {
            let b = match v {
                BackboneArg::Resnet18 => Backbone::Resnet18,
                BackboneArg::Resnet50 => Backbone::Resnet50,
            };
            o.push(("model.backbone", format!("{b:?}").to_lowercase().into()));
        }
        if let Some(v) = &self.device {
            o.push(("run.device", v.clone().into()));
        }
        if let Some(v) = self.threads {
            o.push(("run.threads", (v as u64).into()));
        }
        if let Some(v) = self.workers {
            o.push(("data.workers", (v as u64).into()));
        }
        if let Some(v) = self.seed {
            o.push(("run.seed", v.into()));
        }
        o
    }
}

fn load_config(common: &Common, mut extra: Vec<Override>) -> Result<TrainConfig> {
    let mut o = common.overrides();
    o.append(&mut extra);
    Ok(TrainConfig::load(common.config.as_deref(), o)?)
}

fn checkpoint_tag(name: &str) -> Result<&'static str> {
    match name {
        "last" => Ok(checkpoint::LAST),
        "best" => Ok(checkpoint::BEST),
        other => anyhow::bail!("--checkpoint must be last or best, not {other:?}"),
    }
}

fn main() -> Result<()> {
    train::session::keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Pretrain(a) => {
            let mut extra: Vec<Override> = Vec::new();
            if let Some(v) = a.epochs {
                extra.push(("optim.epochs", (v as u64).into()));
            }
            if let Some(v) = &a.out {
                extra.push(("run.out", v.to_string_lossy().into_owned().into()));
            }
            if let Some(v) = a.knn_every {
                extra.push(("monitor.knn_every", (v as u64).into()));
            }
            if a.stop_on_collapse {
                extra.push(("monitor.stop_on_collapse", true.into()));
            }
            if a.debug_no_stop_grad {
                extra.push(("debug.no_stop_grad", true.into()));
            }
            let cfg = load_config(&a.common, extra)?;
            let opts = pretrain::PretrainOptions {
                resume: a.resume,
                stop_after: a.stop_after,
            };
            let s = pretrain::pretrain(&cfg, &opts).context("pretraining failed")?;
            println!(
                "done: {} epochs, loss {:.4}, z std {:.4}, kNN top-1 {} (best {}), {:.1} img/s{}; outputs in {}",
                s.epochs_done,
                s.loss,
                s.z_std,
                s.knn_top1.map_or("n/a".into(), |k| format!("{:.2}%", k * 100.0)),
                s.best_knn_top1.map_or("n/a".into(), |k| format!("{:.2}%", k * 100.0)),
                s.img_per_s,
                if s.collapse_alarm { ", COLLAPSE ALARM raised" } else { "" },
                s.out.display()
            );
        }
        Command::Eval(a) => {
            let tag = checkpoint_tag(&a.checkpoint)?;
            let meta = checkpoint::read_meta(&a.run, tag).with_context(|| {
                format!("{} is not a pretraining run directory", a.run.display())
            })?;
            let common = Common {
                data: a.data,
                config: None,
                breeds: a.breeds,
                max_per_breed: a.max_per_breed,
                image_size: a.image_size,
                batch: None,
                backbone: None,
                device: a.device,
                threads: a.threads,
                workers: None,
                seed: None,
            };
            let cfg = meta.config.with_overrides(common.overrides())?;
            let r = eval::evaluate(&a.run, tag, &cfg).context("evaluation failed")?;
            let pct = |v: f64| format!("{:5.1}%", v * 100.0);
            println!("{:<18} {:>8} {:>12}", "", "trained", "random init");
            for (name, ours, base) in [
                ("kNN k=20 top-1", r.trained.knn_top1, r.random_init.knn_top1),
                ("kNN k=20 top-5", r.trained.knn_top5, r.random_init.knn_top5),
                (
                    "kNN k=200 top-1",
                    r.trained.knn200_top1,
                    r.random_init.knn200_top1,
                ),
                (
                    "probe top-1",
                    r.trained.probe_top1,
                    r.random_init.probe_top1,
                ),
                (
                    "probe top-5",
                    r.trained.probe_top5,
                    r.random_init.probe_top5,
                ),
            ] {
                println!("{name:<18} {:>8} {:>12}", pct(ours), pct(base));
            }
            println!("report: {}", a.run.join("eval.md").display());
        }
        Command::Embed(a) => {
            let tag = checkpoint_tag(&a.checkpoint)?;
            let meta = checkpoint::read_meta(&a.run, tag).with_context(|| {
                format!("{} is not a pretraining run directory", a.run.display())
            })?;
            let rows = export::embed_files(&a.run, tag, &meta.config, &a.images)
                .context("embedding failed")?;
            for (path, embedding) in a.images.iter().zip(rows) {
                let line = serde_json::json!({ "path": path, "embedding": embedding });
                println!("{line}");
            }
        }
        Command::Export(a) => {
            let tag = checkpoint_tag(&a.checkpoint)?;
            let meta = checkpoint::read_meta(&a.run, tag).with_context(|| {
                format!("{} is not a pretraining run directory", a.run.display())
            })?;
            let mut o: Vec<Override> = Vec::new();
            if let Some(d) = &a.data {
                o.push(("data.root", d.to_string_lossy().into_owned().into()));
            }
            let cfg = meta.config.with_overrides(o)?;
            let opts = export::ExportOptions {
                tag: tag.to_string(),
                name: a.name.unwrap_or_else(|| export::default_name(&a.run)),
                version: a.model_version,
                fp16: a.fp16,
            };
            let m = export::export(&a.run, &a.out, &cfg, &opts).context("export failed")?;
            let size = m.files.get(simsiam::bundle::ENCODER).map_or(0, |f| f.bytes);
            println!(
                "bundle {}: encoder.onnx {:.1} MB, {} nodes, opset {}, parity max |diff| {:.2e}",
                a.out.display(),
                size as f64 / 1e6,
                m.onnx.nodes,
                m.onnx.opset,
                m.onnx.parity_max_abs_diff
            );
        }
        Command::Gallery(a) => {
            let split = match a.split {
                SplitArg::Train => export::Split::Train,
                SplitArg::Test => export::Split::Test,
                SplitArg::All => export::Split::All,
            };
            let opts = simsiam::data::DatasetOptions {
                breeds: a.breeds,
                max_per_breed: a.max_per_breed,
                ..Default::default()
            };
            let (n, secs) = export::gallery(&a.model, &a.data, split, &opts, a.threads)
                .context("gallery failed")?;
            println!(
                "gallery: {n} images embedded in {secs:.1} s ({:.1} img/s), stored in {}",
                n as f64 / secs,
                a.model.display()
            );
        }
        Command::Bench(a) => {
            let cfg = load_config(&a.common, Vec::new())?;
            let r = bench::run(&cfg, a.steps).context("benchmark failed")?;
            println!(
                "batch {} at {}px, {} steps, {} augmentation worker(s), {} torch threads",
                r.batch, r.image_size, r.steps, r.workers, r.torch_threads
            );
            println!("decode (once per run):   {:8.1} img/s", r.decode_img_per_s);
            println!(
                "data pipeline alone:     {:8.1} img/s (2 views each)",
                r.pipeline_img_per_s
            );
            println!("compute only:            {:8.1} img/s", r.compute_img_per_s);
            println!(
                "end to end:              {:8.1} img/s ({:.1}% of compute only)",
                r.end_to_end_img_per_s,
                r.end_to_end_ratio * 100.0
            );
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
