//! `trainer`: SimSiam pretraining, evaluation, export and benchmarks on a dog-breed dataset.
//!
//! Each subcommand is one function here over the `simsiam_trainer` library; [`args`] holds
//! the flags and turns them into configuration overrides.

mod args;

use anyhow::{Context, Result};
use args::{
    BenchArgs, Cli, Command, EmbedArgs, EvalArgs, ExportArgs, FinetuneArgs, GalleryArgs, PackArgs,
    PretrainArgs,
};
use clap::Parser;
use simsiam_trainer::commands::finetune::{self, FinetuneOptions, Init};
use simsiam_trainer::config::{Override, TrainConfig};
use simsiam_trainer::engine::checkpoint::{self, CheckpointMeta};
use simsiam_trainer::engine::data::DatasetOptions;
use simsiam_trainer::{
    commands::bench, commands::embed, commands::eval, commands::export, commands::pack,
    commands::pretrain, commands::seed_gallery, engine::session,
};

fn main() -> Result<()> {
    session::keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Pretrain(a) => run_pretrain(a),
        Command::Finetune(a) => run_finetune(a),
        Command::Eval(a) => run_eval(a),
        Command::Export(a) => run_export(a),
        Command::Gallery(a) => run_gallery(a),
        Command::Bench(a) => run_bench(a),
        Command::Embed(a) => run_embed(a),
        Command::Pack(a) => run_pack(a),
    }
}

/// The run's recorded configuration with `overrides` applied.
fn run_config(
    run: &args::RunFlags,
    overrides: Vec<Override>,
) -> Result<(CheckpointMeta, TrainConfig)> {
    let meta = checkpoint::read_meta(&run.run, run.checkpoint.tag())
        .with_context(|| format!("{} is not a pretraining run directory", run.run.display()))?;
    let cfg = meta.config.with_overrides(overrides)?;
    Ok((meta, cfg))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |k| format!("{:.2}%", k * 100.0))
}

fn run_pretrain(a: PretrainArgs) -> Result<()> {
    let cfg = TrainConfig::load(a.train.config.as_deref(), a.overrides())?;
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
        pct(s.knn_top1),
        pct(s.best_knn_top1),
        s.img_per_s,
        if s.collapse_alarm { ", COLLAPSE ALARM raised" } else { "" },
        s.out.display()
    );
    Ok(())
}

/// The fine-tuning's configuration: with --run, the pretraining run's data and model and
/// the `[finetune]` section of the configuration file; with --init random, the file's.
/// Flags override both.
fn run_finetune(a: FinetuneArgs) -> Result<()> {
    let file = TrainConfig::load(a.config.as_deref(), Vec::new())?;
    let tag = a.checkpoint.tag().to_string();
    let (init, base) = match &a.run {
        Some(dir) => {
            let meta = finetune::read_source(dir, &tag)?;
            let mut base = meta.config;
            base.finetune = file.finetune;
            (
                Init::Run {
                    dir: dir.clone(),
                    tag,
                },
                base,
            )
        }
        None => (Init::Random, file),
    };
    let mut overrides = vec![(
        "run.out",
        a.default_out().to_string_lossy().into_owned().into(),
    )];
    overrides.extend(a.overrides());
    let cfg = base.with_overrides(overrides)?;
    let opts = FinetuneOptions {
        init,
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let s = finetune::finetune(&cfg, &opts).context("fine-tuning failed")?;
    println!(
        "done: {} epochs, loss {:.4}, train top-1 {:.2}%, validation top-1 {:.2}% (best {}), {:.1} img/s; outputs in {}",
        s.epochs_done,
        s.loss,
        s.train_top1 * 100.0,
        s.val_top1 * 100.0,
        pct(s.best_val_top1),
        s.img_per_s,
        s.out.display()
    );
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let (_, cfg) = run_config(&a.run, a.data.overrides())?;
    let tag = a.run.checkpoint.tag();
    let opts = eval::EvalOptions {
        labels_per_breed: a.labels_per_breed,
        zoom_out: a.zoom_out,
    };
    let r = eval::evaluate(&a.run.run, tag, &cfg, &opts).context("evaluation failed")?;
    let (ours, base) = (&r.trained, &r.random_init);
    println!("{:<18} {:>8} {:>12}", "", "trained", "random init");
    for (name, ours, base) in [
        ("kNN k=20 top-1", ours.knn_top1, base.knn_top1),
        ("kNN k=20 top-5", ours.knn_top5, base.knn_top5),
        ("kNN k=200 top-1", ours.knn200_top1, base.knn200_top1),
        ("probe top-1", ours.probe_top1, base.probe_top1),
        ("probe top-5", ours.probe_top5, base.probe_top5),
    ] {
        let p = |v: f64| format!("{:5.1}%", v * 100.0);
        println!("{name:<18} {:>8} {:>12}", p(ours), p(base));
    }
    if let Some(c) = &r.classifier {
        println!(
            "classifier: {} shipped (validation top-1: fine-tuning head {:.1}%, refitted probe {:.1}%)",
            c.shipped,
            c.head_val_top1 * 100.0,
            c.refit_val_top1 * 100.0
        );
    }
    let report = match a.zoom_out {
        Some(z) => format!("eval-zoom{:.0}.md", z * 100.0),
        None => "eval.md".into(),
    };
    println!("report: {}", a.run.run.join(report).display());
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let data = a
        .data
        .map(|d| ("data.root", d.to_string_lossy().into_owned().into()));
    let (_, cfg) = run_config(&a.run, data.into_iter().collect())?;
    let opts = export::ExportOptions {
        tag: a.run.checkpoint.tag().to_string(),
        name: a.name.unwrap_or_else(|| export::default_name(&a.run.run)),
        version: a.model_version,
        fp16: a.fp16,
    };
    let m = export::export(&a.run.run, &a.out, &cfg, &opts).context("export failed")?;
    let size = m.files.get(simsiam::bundle::ENCODER).map_or(0, |f| f.bytes);
    println!(
        "bundle {}: encoder.onnx {:.1} MB, {} nodes, opset {}, parity max |diff| {:.2e}",
        a.out.display(),
        size as f64 / 1e6,
        m.onnx.nodes,
        m.onnx.opset,
        m.onnx.parity_max_abs_diff
    );
    Ok(())
}

fn run_gallery(a: GalleryArgs) -> Result<()> {
    let opts = DatasetOptions {
        breeds: a.breeds,
        max_per_breed: a.max_per_breed,
        ..Default::default()
    };
    let (n, secs) = seed_gallery::gallery(&a.model, &a.data, a.split.into(), &opts, a.threads)
        .context("gallery failed")?;
    println!(
        "gallery: {n} images embedded in {secs:.1} s ({:.1} img/s), stored in {}",
        n as f64 / secs,
        a.model.display()
    );
    Ok(())
}

fn run_bench(a: BenchArgs) -> Result<()> {
    let cfg = TrainConfig::load(a.train.config.as_deref(), a.train.overrides())?;
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
    Ok(())
}

fn run_embed(a: EmbedArgs) -> Result<()> {
    let (_, cfg) = run_config(&a.run, Vec::new())?;
    let rows = embed::embed_files(&a.run.run, a.run.checkpoint.tag(), &cfg, &a.images)
        .context("embedding failed")?;
    for (path, embedding) in a.images.iter().zip(rows) {
        let line = serde_json::json!({ "path": path, "embedding": embedding });
        println!("{line}");
    }
    Ok(())
}

fn run_pack(a: PackArgs) -> Result<()> {
    let opts = DatasetOptions {
        breeds: a.breeds,
        max_per_breed: a.max_per_breed,
        ..Default::default()
    };
    if a.side < 16 {
        anyhow::bail!("--side must be at least 16 pixels");
    }
    let p = pack::pack(&a.data, &a.out, a.split.into(), &opts, a.side, a.quality)
        .context("pack failed")?;
    println!(
        "packed {} images ({:.1} MiB, {} px, quality {}) into {}{}",
        p.images,
        p.bytes as f64 / (1 << 20) as f64,
        a.side,
        a.quality,
        a.out.display(),
        if p.skipped > 0 {
            format!("; {} could not be decoded", p.skipped)
        } else {
            String::new()
        }
    );
    Ok(())
}
