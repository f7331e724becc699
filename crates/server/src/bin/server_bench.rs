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

use anyhow::{bail, Context, Result};
use clap::Parser;
use simsiam::bundle::Bundle;
use simsiam_server::client::Connection;
use simsiam_server::config::ServerConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let (jpegs, source) = request_images(cli.images.as_deref(), 64)?;
    let bare_batch = cli.bare_batch.unwrap_or(cfg.batching.max_batch);
    let bare = BareSession::new(&cfg, &jpegs, bare_batch)?;
    let gallery = tempfile::tempdir()?;
    let mut server =
        ServerProcess::start(&cfg, cli.config.as_deref(), gallery.path(), &cli.server_log)?;
    print_setup(&cli, &cfg, &jpegs, &source, bare_batch);
    let jpegs = Arc::new(jpegs);
    for &c in &cli.concurrency {
        measure_level(&server.addr, &jpegs, c, &cli, &bare)?;
    }
    print_stages(&server.addr)?;
    server.stop();
    Ok(())
}

/// What is measured and how, then the table's header.
fn print_setup(cli: &Cli, cfg: &ServerConfig, jpegs: &[Vec<u8>], source: &str, bare_batch: usize) {
    let mean_kb = jpegs.iter().map(Vec::len).sum::<usize>() as f64 / jpegs.len() as f64 / 1e3;
    let threads = match (cfg.inference.threads, bare_threads(cfg)) {
        (0, _) => "one per core".to_string(),
        (t, b) => format!(
            "{t} per session × {} sessions (bare session: {b})",
            cfg.inference.sessions
        ),
    };
    println!(
        "model {}, {} request images from {source} (mean {mean_kb:.0} kB), max_batch {} (bare session: {bare_batch}), max_wait {} ms, intra-op threads {threads}, request threads at {} priority",
        cfg.model.dir.display(),
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
        "{:>11} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}",
        "concurrency", "img/s", "p50 ms", "p99 ms", "mean batch", "bare img/s", "ratio"
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
) -> Result<()> {
    // Warm-up: connections, allocator, ONNX Runtime's first runs.
    run_level(addr, jpegs, c, c.max(8))?;
    let before = batch_stats(addr)?;
    let (mut rates, mut bare_rates, mut ratios, mut lat) = (vec![], vec![], vec![], vec![]);
    for _ in 0..cli.rounds {
        // Back to back, so a slow phase of the machine hits both sides of the ratio.
        let b = bare.rate(cli.requests)?;
        let r = run_level(addr, jpegs, c, cli.requests)?;
        ratios.push(r.rate / b);
        rates.push(r.rate);
        bare_rates.push(b);
        lat.extend(r.latencies);
    }
    let after = batch_stats(addr)?;
    let mean_batch = (after.0 - before.0) / (after.1 - before.1).max(1.0);
    lat.sort_by(f64::total_cmp);
    println!(
        "{c:>11} {:>9.1} {:>9.1} {:>9.1} {mean_batch:>11.1} {:>11.1} {:>6.2}x",
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

/// The server's `/metrics` page.
fn metrics_text(addr: &str) -> Result<String> {
    Ok(simsiam_server::client::request(addr, "GET", "/metrics", &[], &[])?.text())
}

/// The value of the Prometheus series `name` (with its labels) in `text`; 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// (sum, count) of the server's batch-size histogram.
fn batch_stats(addr: &str) -> Result<(f64, f64)> {
    let text = metrics_text(addr)?;
    Ok((
        metric(&text, "simsiam_batch_size_sum"),
        metric(&text, "simsiam_batch_size_count"),
    ))
}

/// Intra-op threads of the bare session: all the server's inference threads together
/// (`sessions × threads`), so two 1-thread sessions are compared with one 2-thread session.
fn bare_threads(cfg: &ServerConfig) -> usize {
    cfg.inference.threads * cfg.inference.sessions
}

/// The ceiling: the bundle's encoder in one session with as many intra-op threads as the
/// server's sessions have together, ONNX Runtime's default settings otherwise, run on full
/// batches of already decoded and preprocessed images.
///
/// A fresh session per measurement: an idle session's threads keep spinning for a while
/// (ONNX Runtime's default), and would otherwise slow the server run that follows.
struct BareSession {
    model: Vec<u8>,
    threads: usize,
    batch: Vec<f32>,
    shape: [usize; 4],
}

impl BareSession {
    fn new(cfg: &ServerConfig, jpegs: &[Vec<u8>], b: usize) -> Result<Self> {
        let bundle = Bundle::open(&cfg.model.dir)?;
        let t = bundle.manifest.eval_transform();
        let metrics = simsiam_server::metrics::Metrics::default();
        let tensors = simsiam_server::pipeline::preprocess(jpegs, &t, u64::MAX, &metrics)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let per = t.tensor_len();
        let mut batch = Vec::with_capacity(b * per);
        for i in 0..b {
            let k = i % jpegs.len();
            batch.extend_from_slice(&tensors[k * per..(k + 1) * per]);
        }
        let side = t.crop as usize;
        Ok(Self {
            model: bundle.encoder_bytes()?,
            threads: bare_threads(cfg),
            batch,
            shape: [b, 3, side, side],
        })
    }

    /// Images per second over full batches covering at least `images` images, after one
    /// warm-up run; the session is dropped (its threads joined) before returning.
    fn rate(&self, images: usize) -> Result<f64> {
        let mut session = simsiam::runtime::cpu_session(&self.model, self.threads)?;
        simsiam::runtime::run_f32(&mut session, &self.batch, self.shape)?;
        let b = self.shape[0];
        let runs = images.div_ceil(b);
        let start = Instant::now();
        for _ in 0..runs {
            simsiam::runtime::run_f32(&mut session, &self.batch, self.shape)?;
        }
        Ok((runs * b) as f64 / start.elapsed().as_secs_f64())
    }
}

/// Up to `n` JPEG files under `dir`, or generated ones; and where they came from.
fn request_images(dir: Option<&Path>, n: usize) -> Result<(Vec<Vec<u8>>, String)> {
    let mut files = Vec::new();
    if let Some(d) = dir {
        collect_jpegs(d, &mut files, n);
    }
    if let (false, Some(d)) = (files.is_empty(), dir) {
        files.sort();
        let jpegs = files
            .iter()
            .map(|f| std::fs::read(f).with_context(|| f.display().to_string()))
            .collect::<Result<_>>()?;
        return Ok((jpegs, d.display().to_string()));
    }
    let source = match dir {
        Some(d) => format!("synthetic 500×375 photos (no JPEGs under {})", d.display()),
        None => "synthetic 500×375 photos".to_string(),
    };
    Ok(((0..n).map(|i| synthetic_jpeg(i as u32)).collect(), source))
}

fn collect_jpegs(dir: &Path, out: &mut Vec<PathBuf>, n: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if out.len() >= n {
            return;
        }
        if p.is_dir() {
            collect_jpegs(&p, out, n);
        } else if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        {
            out.push(p);
        }
    }
}

/// A 500×375 photo-like JPEG (quality 75, the encoder's default): smooth colour fields, a
/// soft subject and mild grain, about the size of a web photo at that resolution.
fn synthetic_jpeg(seed: u32) -> Vec<u8> {
    let (cx, cy) = (
        150.0 + (seed % 7) as f32 * 30.0,
        120.0 + (seed % 5) as f32 * 30.0,
    );
    let img = image::RgbImage::from_fn(500, 375, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
        let subject = (1.0 - (d / 110.0).min(1.0)) * 120.0;
        let grain =
            ((x.wrapping_mul(73) ^ y.wrapping_mul(151) ^ seed.wrapping_mul(31)) % 17) as f32;
        let r = 60.0 + fx * 0.25 + subject + grain;
        let g = 80.0 + fy * 0.3 + subject * 0.6 + grain;
        let b = 120.0 - fy * 0.15 + grain;
        image::Rgb([
            r.min(255.0) as u8,
            g.min(255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory image cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Jpeg);
    out.into_inner()
}

struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn start(cfg: &ServerConfig, config: Option<&Path>, gallery: &Path, log: &str) -> Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(&exe);
        cmd.arg("--model")
            .arg(&cfg.model.dir)
            .arg("--port")
            .arg(port.to_string())
            .arg("--host")
            .arg("127.0.0.1");
        cmd.arg("--gallery-dir").arg(gallery);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut s = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = simsiam_server::client::request(&s.addr, "GET", "/readyz", &[], &[]) {
                if r.status == 200 {
                    return Ok(s);
                }
            }
            if let Some(status) = s.child.try_wait()? {
                bail!("the server exited during start-up: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s.stop();
        bail!("the server did not become ready within 60 s")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
