//! `server-bench`: throughput and latency of the server for JPEG requests at several
//! concurrency levels, beside a bare ONNX Runtime session on the same model, thread count
//! and batch size over pre-decoded tensors (the ceiling the server is measured against).
//!
//! Starts the real `server` binary (next to this one) on a free loopback port, so the
//! figures include HTTP, decoding, preprocessing, batching and JSON.
//!
//! A shared machine's speed drifts by tens of percent within a minute, so one bare run
//! before and one after the server compare different machines. Each level is measured in
//! rounds instead: a bare run and a server run of the same number of images, back to back;
//! the ratio reported is the median of the per-round ratios.
//!
//! Two more measurements: `--decode-only` prints how many request images per second all
//! the host's cores decode and preprocess with the server's code (the decode-bound limit,
//! which caps the server however fast the model is), and `--parity` compares the
//! configured provider's embeddings with the CPU provider's on the request images.

mod bare;
mod host;
mod images;
mod server;
mod soak;

use anyhow::{bail, Result};
use bare::{bare_threads, BareSession};
use clap::Parser;
use server::{batch_stats, metric, metrics_text, ServerProcess};
use simsiam_bench::client::Connection;
use simsiam_server::config::ServerConfig;
use simsiam_server::encoder::ActiveProvider;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "server-bench",
    about = "Server throughput and latency vs a bare ONNX Runtime session"
)]
struct Cli {
    /// Model bundle (default: the configuration's model.dir).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Server configuration file (default: config/server.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder searched (recursively) for .jpg request images; without it, or when it has
    /// none, synthetic 500×375 JPEGs are generated.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Requests per round (one image each).
    #[arg(long, default_value_t = 640)]
    requests: usize,
    /// Rounds per level; each pairs a server run with a bare-session run.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Batch size of the bare session (default: the server's `batching.max_batch`). A
    /// larger one than the server's shows what smaller runs cost against the best batch.
    #[arg(long)]
    bare_batch: Option<usize>,
    /// The server's log filter (RUST_LOG syntax), e.g. `simsiam_server::batcher=debug`
    /// to see every run's size and wait.
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Only measure the decode-bound limit: request images per second decoded and
    /// preprocessed by all cores with the server's code.
    #[arg(long)]
    decode_only: bool,
    /// Only check that the configured provider's embeddings match the CPU provider's
    /// within this largest absolute difference (e.g. 1e-3); fails when they do not.
    #[arg(long)]
    parity: Option<f32>,
    /// Instead of the benchmark, a soak of this many seconds: mixed routes with 5%
    /// malformed requests, slow connections, readiness and memory watched.
    #[arg(long)]
    soak: Option<u64>,
    /// Soak: concurrent clients.
    #[arg(long, default_value_t = 64)]
    soak_clients: usize,
    /// Soak: connections that send one byte a second.
    #[arg(long, default_value_t = 100)]
    slow: usize,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if cli.rounds == 0 || cli.requests == 0 || cli.bare_batch == Some(0) {
        bail!("--rounds, --requests and --bare-batch must be at least 1");
    }
    let mut overrides = Vec::new();
    if let Some(m) = &cli.model {
        overrides.push(("model.dir", m.to_string_lossy().into_owned().into()));
    }
    let cfg = ServerConfig::load(cli.config.as_deref(), overrides)?;
    let (jpegs, source) = images::request_images(cli.images.as_deref(), 64)?;
    if cli.decode_only {
        let rate = host::decode_rate(&cfg, &jpegs, 20 * jpegs.len().max(100))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "decode-bound limit: {rate:.1} img/s ({cores} cores; {} request images from {source})",
            jpegs.len()
        );
        return Ok(());
    }
    if let Some(tolerance) = cli.parity {
        return host::parity(&cfg, &jpegs, tolerance);
    }
    if let Some(seconds) = cli.soak {
        let gallery = tempfile::tempdir()?;
        let mut server =
            ServerProcess::start(&cfg, cli.config.as_deref(), gallery.path(), &cli.server_log)?;
        println!(
            "soak: {seconds} s, {} clients, {} slow connections, {} request images from {source}",
            cli.soak_clients,
            cli.slow,
            jpegs.len()
        );
        let soak = soak::Soak {
            seconds,
            clients: cli.soak_clients,
            slow: cli.slow,
        };
        let result = soak.run(&server, &Arc::new(jpegs));
        server.stop();
        return result;
    }
    let bare_batch = cli.bare_batch.unwrap_or(cfg.batching.max_batch);
    let bare = BareSession::new(&cfg, &jpegs, bare_batch)?;
    let gallery = tempfile::tempdir()?;
    let mut server =
        ServerProcess::start(&cfg, cli.config.as_deref(), gallery.path(), &cli.server_log)?;
    print_setup(&cli, &cfg, &jpegs, &source, &bare);
    let jpegs = Arc::new(jpegs);
    for &c in &cli.concurrency {
        measure_level(&server.addr, &jpegs, c, &cli, &bare, &cfg)?;
    }
    print_stages(&server.addr)?;
    server.stop();
    Ok(())
}

/// What is measured and how, then the table's header.
fn print_setup(cli: &Cli, cfg: &ServerConfig, jpegs: &[Vec<u8>], source: &str, bare: &BareSession) {
    let bare_batch = bare.batch();
    let mean_kb = jpegs.iter().map(Vec::len).sum::<usize>() as f64 / jpegs.len() as f64 / 1e3;
    let threads = match (cfg.inference.threads, bare_threads(cfg)) {
        (0, _) => "one per core".to_string(),
        (t, b) => format!(
            "{t} per session × {} sessions (bare session: {b})",
            cfg.inference.sessions
        ),
    };
    println!(
        "model {} on {}, {} request images from {source} (mean {mean_kb:.0} kB), max_batch {} (bare session: {bare_batch}), max_wait {} ms, intra-op threads {threads}, request threads at {} priority",
        cfg.model.dir.display(),
        bare.provider,
        jpegs.len(),
        cfg.batching.max_batch,
        cfg.batching.max_wait_ms,
        cfg.http.request_priority
    );
    println!(
        "each level: {} rounds of {} requests, each round beside a bare-session run of as many images; medians over rounds",
        cli.rounds, cli.requests
    );
    println!(
        "{:>11} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>9}",
        "concurrency", "img/s", "p50 ms", "p99 ms", "mean batch", "bare img/s", "ratio", "GPU busy"
    );
}

/// One concurrency level: a warm-up, then `cli.rounds` rounds of a bare run and a server
/// run back to back; prints the table row and the per-round ratios.
fn measure_level(
    addr: &str,
    jpegs: &Arc<Vec<Vec<u8>>>,
    c: usize,
    cli: &Cli,
    bare: &BareSession,
    cfg: &ServerConfig,
) -> Result<()> {
    // Warm-up: connections, allocator, ONNX Runtime's first runs.
    run_level(addr, jpegs, c, c.max(8))?;
    let before = batch_stats(addr)?;
    let (mut rates, mut bare_rates, mut ratios, mut lat) = (vec![], vec![], vec![], vec![]);
    let mut busy = Vec::new();
    for _ in 0..cli.rounds {
        // Back to back, so a slow phase of the machine hits both sides of the ratio.
        let b = bare.rate(cli.requests)?;
        let gpu = (bare.provider == ActiveProvider::Cuda)
            .then(|| host::GpuSampler::start(cfg.inference.cuda.device_id))
            .flatten();
        let r = run_level(addr, jpegs, c, cli.requests)?;
        busy.extend(gpu.and_then(host::GpuSampler::stop));
        ratios.push(r.rate / b);
        rates.push(r.rate);
        bare_rates.push(b);
        lat.extend(r.latencies);
    }
    let after = batch_stats(addr)?;
    let mean_batch = (after.0 - before.0) / (after.1 - before.1).max(1.0);
    lat.sort_by(f64::total_cmp);
    let busy = if busy.is_empty() {
        "n/a".to_string()
    } else {
        format!("{:.0}%", 100.0 * median(&busy))
    };
    println!(
        "{c:>11} {:>9.1} {:>9.1} {:>9.1} {mean_batch:>11.1} {:>11.1} {:>6.2}x {busy:>9}",
        median(&rates),
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.99) * 1e3,
        median(&bare_rates),
        median(&ratios)
    );
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!("{:>11} per-round ratios: {}", "", each.join(" "));
    Ok(())
}

/// The server's mean time per stage over the whole benchmark, from its metrics.
fn print_stages(addr: &str) -> Result<()> {
    let text = metrics_text(addr)?;
    let stage = |name: &str| {
        let get = |suffix: &str| {
            metric(
                &text,
                &format!("simsiam_stage_duration_seconds_{suffix}{{stage=\"{name}\"}}"),
            )
        };
        1e3 * get("sum") / get("count").max(1.0)
    };
    println!(
        "server time per stage, mean over all levels (wall time, so it grows when threads share cores or wait at idle priority): decode {:.2} ms/image, preprocess {:.2} ms/image, inference {:.1} ms/run",
        stage("decode"),
        stage("preprocess"),
        stage("inference")
    );
    Ok(())
}

/// The median of `v`, which is never empty here (the mean of the middle two for an even
/// count).
fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The `p` quantile of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

struct Level {
    rate: f64,
    latencies: Vec<f64>,
}

/// `requests` raw-JPEG `POST /v1/embed` calls from `c` client threads.
fn run_level(addr: &str, jpegs: &Arc<Vec<Vec<u8>>>, c: usize, requests: usize) -> Result<Level> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..c)
        .map(|_| {
            let (addr, jpegs, next) = (addr.to_string(), jpegs.clone(), next.clone());
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let mut conn = Connection::open(&addr)?;
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return Ok(lat);
                    }
                    let t = Instant::now();
                    let r = conn.send(
                        "POST",
                        "/v1/embed",
                        &[("Content-Type", "image/jpeg")],
                        &jpegs[i % jpegs.len()],
                    )?;
                    if r.status != 200 {
                        bail!("request failed: {} {}", r.status, r.text());
                    }
                    lat.push(t.elapsed().as_secs_f64());
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Level {
        rate: requests as f64 / wall,
        latencies: lat,
    })
}
