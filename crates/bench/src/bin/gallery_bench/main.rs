//! `gallery-bench`: the two gallery backends side by side on one synthetic gallery, in one
//! run on one machine. The embedded one (`hnsw_rs` in this process, with its log) is also
//! measured the way it worked before the log (every write rewrote the whole snapshot, every
//! start rebuilt the graph), and the PostgreSQL one (pgvector's HNSW) when `--postgres-url`
//! is given (`make bench-gallery` starts a throwaway PostgreSQL for it).
//!
//! Figures: insert rate in batches of 1,000, single-add latency, start-up time, recall@10
//! against an exact scan, queries per second and latency at concurrency 1 and 16, resident
//! memory, and recall and latency of a breed filter for a breed holding 0.5% of entries.

mod data;

use anyhow::Context;
use clap::Parser;
use data::{Data, RARE};
use simsiam_server::config::{GalleryBackend, GalleryConfig};
use simsiam_server::gallery::embedded::EmbeddedGallery;
use simsiam_server::gallery::memory::{MemoryGallery, FILE};
use simsiam_server::gallery::postgres::PostgresGallery;
use simsiam_server::gallery::{graph_params, Gallery, GalleryError, GraphParams, Opening, Seed};
use simsiam_server::health::Health;
use simsiam_server::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Embedded hnsw_rs gallery vs PostgreSQL + pgvector, side by side")]
struct Args {
    /// Gallery entries.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Embedding width (the default model's is 512).
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Query vectors for recall and throughput.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// A PostgreSQL with pgvector ≥ 0.6; its table `bench_gallery` is replaced.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Working directory of the embedded gallery (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the gallery's and the queries' vectors here (`base.f32`, `queries.f32`,
    /// little-endian rows, and `meta.json`), for `bench/anchors` to run hnswlib and FAISS
    /// on the same vectors.
    #[arg(long)]
    vectors_out: Option<PathBuf>,
}

const K: usize = 10;
const SINGLE_ADDS: usize = 100;
/// `ef_search` values of the recall sweep (the gallery's default is 64).
const EF_SWEEP: [usize; 4] = [32, 128, 256, 512];

/// One backend's figures, as table cells.
#[derive(Default)]
struct Figures {
    cells: Vec<(String, String)>,
}

impl Figures {
    fn put(&mut self, name: &str, value: String) {
        eprintln!("  {name}: {value}");
        self.cells.push((name.to_string(), value));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Resident memory of this process, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Proportional set size (shared buffers counted once) of the server whose postmaster is
/// `pid` and of its children, MiB.
fn postgres_pss_mib(pid: i32) -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let parent = |p: &Path| -> Option<i32> {
        let stat = std::fs::read_to_string(p.join("stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    procs
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) == Some(pid)
                || parent(&e.path()) == Some(pid)
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

/// The postmaster's process id, from the pid file in the server's data directory
/// (readable when the database runs on this machine).
fn postmaster_pid(admin: &mut postgres::Client) -> Option<i32> {
    let dir: String = admin.query_one("SHOW data_directory", &[]).ok()?.get(0);
    let pidfile = std::fs::read_to_string(Path::new(&dir).join("postmaster.pid")).ok()?;
    pidfile.lines().next()?.trim().parse().ok()
}

fn opening(dim: usize, seed: Seed) -> Opening<'static> {
    Opening {
        dim,
        model: "bench",
        seed,
        health: Arc::new(Health::default()),
        metrics: Arc::new(Metrics::default()),
    }
}

/// Adds every entry in batches of 1,000; entries per second.
fn insert_all(g: &dyn Gallery, d: &Data) -> anyhow::Result<f64> {
    let t = Instant::now();
    let batch = 1000;
    for (b, start) in (0..d.items.len()).step_by(batch).enumerate() {
        let end = (start + batch).min(d.items.len());
        let entries = (start..end)
            .map(|i| {
                (
                    d.items[i].clone(),
                    d.vectors[i * d.dim..(i + 1) * d.dim].to_vec(),
                )
            })
            .collect();
        g.upsert(entries)?;
        if b % 10 == 9 {
            eprintln!(
                "    {end} entries, {:.0}/s",
                end as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(d.items.len() as f64 / t.elapsed().as_secs_f64())
}

/// Builds the whole gallery in memory at once, as seeding and compaction do (the graph by
/// parallel insertion); entries per second.
fn parallel_build(d: &Data, params: GraphParams) -> f64 {
    eprintln!("    bulk build of {} entries", d.items.len());
    let (items, vectors) = (d.items.clone(), d.vectors.clone());
    let t = Instant::now();
    let g = MemoryGallery::from_parts(d.dim, "bench", items, vectors, params);
    let rate = d.items.len() as f64 / t.elapsed().as_secs_f64();
    drop(g);
    rate
}

/// Writes the vectors for `bench/anchors`: rows of little-endian f32, and their shape and
/// the embedded gallery's HNSW parameters (`p`) in `meta.json`.
fn write_vectors(dir: &Path, d: &Data, p: GraphParams) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("base.f32"), bytes(&d.vectors))?;
    std::fs::write(dir.join("queries.f32"), bytes(&d.queries))?;
    let meta = serde_json::json!({
        "dim": d.dim,
        "n": d.items.len(),
        "queries": d.queries.len() / d.dim,
        "k": K,
        "m": p.m,
        "ef_construction": p.ef_construction,
        "ef_search": p.ef_search,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    eprintln!("vectors written to {}", dir.display());
    Ok(())
}

/// Single adds of new ids (removed again after), p50 and p99 in ms.
fn single_adds(g: &dyn Gallery, d: &Data) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::new();
    for i in 0..SINGLE_ADDS {
        let mut item = d.items[i].clone();
        item.id = format!("single-{i}");
        let v = d.vectors[i * d.dim..(i + 1) * d.dim].to_vec();
        let t = Instant::now();
        g.upsert(vec![(item, v)])?;
        times.push(ms(t.elapsed()));
    }
    for i in 0..SINGLE_ADDS {
        g.remove(&format!("single-{i}"))?;
    }
    Ok((percentile(&mut times, 0.5), percentile(&mut times, 0.99)))
}

/// Mean share of the exact top-k found.
fn recall(
    g: &dyn Gallery,
    d: &Data,
    truth: &[Vec<String>],
    breed: Option<&str>,
) -> anyhow::Result<f64> {
    let mut found = 0usize;
    let mut wanted = 0usize;
    for (q, want) in d.queries.chunks(d.dim).zip(truth) {
        let hits = g.search(q, K, breed)?.remove(0);
        found += hits.iter().filter(|h| want.contains(&h.id)).count();
        wanted += want.len();
    }
    Ok(found as f64 / wanted.max(1) as f64)
}

/// Queries per second and p50/p99 latency (ms) with `threads` clients for `seconds`.
fn throughput(
    g: &dyn Gallery,
    d: &Data,
    threads: usize,
    seconds: f64,
    breed: Option<&str>,
) -> anyhow::Result<(f64, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let per_thread: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut times = Vec::new();
                    let n = d.queries.len() / d.dim;
                    let mut i = t;
                    while Instant::now() < deadline {
                        let q = &d.queries[(i % n) * d.dim..(i % n + 1) * d.dim];
                        let t0 = Instant::now();
                        g.search(q, K, breed)?;
                        times.push(ms(t0.elapsed()));
                        i += threads;
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    for times in per_thread {
        all.extend(times?);
    }
    let qps = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((qps, percentile(&mut all, 0.5), percentile(&mut all, 0.99)))
}

/// Recall, throughput and the breed filter of a ready gallery.
fn searches(
    f: &mut Figures,
    g: &dyn Gallery,
    d: &Data,
    truth: &Truth,
    seconds: f64,
) -> anyhow::Result<()> {
    f.put(
        "recall@10",
        format!("{:.3}", recall(g, d, &truth.all, None)?),
    );
    for threads in [1, 16] {
        let (qps, p50, p99) = throughput(g, d, threads, seconds, None)?;
        f.put(
            &format!("search, concurrency {threads}"),
            format!("{qps:.0} q/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }
    let r = recall(g, d, &truth.rare, Some(RARE))?;
    let (_, p50, p99) = throughput(g, d, 1, seconds.min(3.0), Some(RARE))?;
    f.put(
        "breed filter (0.5% breed): recall@10, latency",
        format!("{r:.3}, p50 {p50:.2} ms, p99 {p99:.2} ms"),
    );
    Ok(())
}

/// Recall@10 at other `ef_search` values: the knob that trades search speed for recall,
/// without rebuilding anything (`open` reopens the stored gallery of `cfg` with each one).
fn recall_by_ef<G: Gallery>(
    f: &mut Figures,
    d: &Data,
    truth: &Truth,
    cfg: &GalleryConfig,
    open: impl Fn(&GalleryConfig, Opening<'static>) -> Result<G, GalleryError>,
) -> anyhow::Result<()> {
    let mut cells = Vec::new();
    for ef_search in EF_SWEEP {
        let cfg = GalleryConfig {
            ef_search,
            ..cfg.clone()
        };
        let g = open(&cfg, opening(d.dim, Seed::default()))?;
        let r = recall(&g, d, &truth.all, None)?;
        let (qps, _, _) = throughput(&g, d, 1, 2.0, None)?;
        cells.push(format!("{ef_search}: {r:.3} ({qps:.0} q/s)"));
    }
    f.put(
        "recall@10 (search q/s, concurrency 1) by ef_search",
        cells.join(", "),
    );
    Ok(())
}

struct Truth {
    all: Vec<Vec<String>>,
    rare: Vec<Vec<String>>,
}

/// The embedded gallery as it is, and as it was before the log (from the same snapshot).
fn embedded(
    args: &Args,
    dir: &Path,
    d: &Data,
    truth: &Truth,
) -> anyhow::Result<(Figures, Figures)> {
    let cfg = GalleryConfig {
        dir: dir.join("embedded"),
        ..GalleryConfig::default()
    };
    let now = embedded_now(args, &cfg, d, truth)?;
    let before = embedded_before_log(args, dir, &cfg, d, truth)?;
    Ok((now, before))
}

/// Inserts, the bulk build, compaction, single adds, a restart, searches and recall by
/// `ef_search`, in `cfg.dir`.
fn embedded_now(
    args: &Args,
    cfg: &GalleryConfig,
    d: &Data,
    truth: &Truth,
) -> anyhow::Result<Figures> {
    let mut now = Figures::default();
    let _ = std::fs::remove_dir_all(&cfg.dir);
    eprintln!("embedded (hnsw_rs + log), {} entries:", d.items.len());
    let g = EmbeddedGallery::open(cfg, opening(d.dim, Seed::default()))?;
    let one_by_one = insert_all(&g, d)?;
    now.put(
        "insert, batches of 1,000",
        format!("{one_by_one:.0} entries/s (one at a time)"),
    );
    let built = parallel_build(d, graph_params(cfg));
    now.put(
        "bulk build (seeding, compaction, rebuild)",
        format!(
            "{built:.0} entries/s in parallel on {} threads, {:.2}x",
            rayon::current_num_threads(),
            built / one_by_one
        ),
    );
    let t = Instant::now();
    g.compact()?;
    now.put(
        "compaction",
        format!(
            "{:.2} s (snapshot + graph dump, background)",
            t.elapsed().as_secs_f64()
        ),
    );
    let (p50, p99) = single_adds(&g, d)?;
    now.put(
        "single add",
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms (log record + fdatasync)"),
    );
    drop(g); // no flush: the 200 logged changes are replayed at the next start

    let before_rss = rss_mib();
    let t = Instant::now();
    let g = EmbeddedGallery::open(cfg, opening(d.dim, Seed::default()))?;
    now.put(
        "start-up",
        format!(
            "{:.2} s (snapshot + graph reloaded, 200 logged changes replayed)",
            t.elapsed().as_secs_f64()
        ),
    );
    now.put(
        "resident memory",
        format!(
            "{:.0} MiB (the server process, gallery loaded)",
            rss_mib() - before_rss
        ),
    );
    searches(&mut now, &g, d, truth, args.seconds)?;
    g.flush()?;
    drop(g);
    recall_by_ef(&mut now, d, truth, cfg, EmbeddedGallery::open)?;
    Ok(now)
}

/// Before the log, a start decoded the snapshot and rebuilt the graph, and every write
/// encoded and rewrote the whole snapshot: the same snapshot, without its graph dump.
fn embedded_before_log(
    args: &Args,
    dir: &Path,
    cfg: &GalleryConfig,
    d: &Data,
    truth: &Truth,
) -> anyhow::Result<Figures> {
    let mut before = Figures::default();
    eprintln!("embedded as before the log:");
    let old = dir.join("embedded-before");
    let _ = std::fs::remove_dir_all(&old);
    std::fs::create_dir_all(&old)?;
    std::fs::copy(cfg.dir.join(FILE), old.join(FILE))?;
    let t = Instant::now();
    let mut g = MemoryGallery::load(&old, graph_params(cfg))?
        .context("snapshot")?
        .gallery;
    before.put(
        "start-up",
        format!(
            "{:.2} s (snapshot, graph rebuilt)",
            t.elapsed().as_secs_f64()
        ),
    );
    let mut times = Vec::new();
    for i in 0..5 {
        let mut item = d.items[i].clone();
        item.id = format!("single-{i}");
        let t = Instant::now();
        g.upsert(item, &d.vectors[i * d.dim..(i + 1) * d.dim])?;
        simsiam::files::write_atomic(&old.join(FILE), &g.encode(0, None)?)?;
        times.push(ms(t.elapsed()));
    }
    let size = std::fs::metadata(old.join(FILE))?.len() as f64 / 1e6;
    before.put(
        "single add",
        format!(
            "p50 {:.0} ms (the whole {size:.0} MB snapshot rewritten)",
            percentile(&mut times, 0.5)
        ),
    );
    for i in 0..5 {
        g.remove(&format!("single-{i}"));
    }
    let as_before = BeforeLog(std::sync::RwLock::new(g));
    searches(&mut before, &as_before, d, truth, args.seconds)?;
    Ok(before)
}

/// The in-memory gallery alone, searched as the server searched it before the log.
struct BeforeLog(std::sync::RwLock<MemoryGallery>);

impl Gallery for BeforeLog {
    fn dim(&self) -> usize {
        self.0.read().map_or(0, |g| g.dim())
    }
    fn upsert(
        &self,
        _: Vec<(simsiam_server::gallery::Item, Vec<f32>)>,
    ) -> Result<usize, simsiam_server::gallery::GalleryError> {
        Ok(0)
    }
    fn remove(&self, _: &str) -> Result<Option<usize>, simsiam_server::gallery::GalleryError> {
        Ok(None)
    }
    fn search(
        &self,
        q: &[f32],
        k: usize,
        breed: Option<&str>,
    ) -> Result<Vec<Vec<simsiam_server::gallery::Hit>>, simsiam_server::gallery::GalleryError> {
        let g = self.0.read().unwrap_or_else(|e| e.into_inner());
        Ok(vec![g.search(q, k, breed)?])
    }
    fn counts(
        &self,
    ) -> Result<simsiam_server::gallery::Counts, simsiam_server::gallery::GalleryError> {
        Err(simsiam_server::gallery::GalleryError::Database(
            "not measured".into(),
        ))
    }
    fn ready(&self) -> Result<Option<usize>, simsiam_server::gallery::GalleryError> {
        Ok(None)
    }
    fn flush(&self) -> Result<(), simsiam_server::gallery::GalleryError> {
        Ok(())
    }
    fn probe(&self) -> Result<(), simsiam_server::gallery::GalleryError> {
        Ok(())
    }
    fn free_bytes(&self) -> Option<u64> {
        None
    }
}

fn postgres(args: &Args, url: &str, d: &Data, truth: &Truth) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let table = "bench_gallery";
    let mut admin = postgres::Client::connect(url, postgres::NoTls).context("connecting")?;
    admin.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))?;
    let _ = admin.execute(
        "DELETE FROM simsiam_gallery_meta WHERE table_name = $1",
        &[&table],
    );
    let cfg = GalleryConfig {
        backend: GalleryBackend::Postgres,
        postgres_url: url.to_string(),
        postgres_table: table.into(),
        postgres_pool_size: 17,
        postgres_statement_timeout_ms: 600_000,
        ..GalleryConfig::default()
    };
    eprintln!("postgres (pgvector HNSW), {} entries:", d.items.len());
    let postmaster = postmaster_pid(&mut admin).unwrap_or(0);
    let before_db = postgres_pss_mib(postmaster);
    let g = PostgresGallery::open(&cfg, opening(d.dim, Seed::default()))?;
    f.put(
        "insert, batches of 1,000",
        format!("{:.0} entries/s", insert_all(&g, d)?),
    );
    // After a bulk load, as autovacuum would within a minute: the planner needs row
    // counts to prefer the HNSW index.
    admin.batch_execute(&format!("ANALYZE {table}"))?;
    let (p50, p99) = single_adds(&g, d)?;
    f.put(
        "single add",
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms (one transaction)"),
    );
    drop(g);
    let t = Instant::now();
    let g = PostgresGallery::open(&cfg, opening(d.dim, Seed::default()))?;
    f.put(
        "start-up",
        format!(
            "{:.2} s (connect, schema checked)",
            t.elapsed().as_secs_f64()
        ),
    );
    searches(&mut f, &g, d, truth, args.seconds)?;
    recall_by_ef(&mut f, d, truth, &cfg, PostgresGallery::open)?;
    let size: i64 = admin
        .query_one(
            "SELECT pg_total_relation_size($1::text::regclass)",
            &[&table],
        )?
        .get(0);
    f.put(
        "resident memory",
        format!(
            "{:.0} MiB (database processes' PSS, {before_db:.0} before); table and indexes {:.0} MB on disk",
            postgres_pss_mib(postmaster),
            size as f64 / 1e6
        ),
    );
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "{} synthetic {}-d entries, {} queries",
        args.n, args.dim, args.queries
    );
    let d = data::generate(args.n, args.dim, args.queries);
    if let Some(out) = &args.vectors_out {
        write_vectors(out, &d, graph_params(&GalleryConfig::default()))?;
    }
    let truth = Truth {
        all: data::exact(&d, K, |_| true),
        rare: data::exact(&d, K, |i| d.items[i].breed.as_deref() == Some(RARE)),
    };
    let (now, before) = embedded(&args, &dir, &d, &truth)?;
    let pg = match &args.postgres_url {
        Some(url) => Some(postgres(&args, url, &d, &truth)?),
        None => {
            eprintln!("no --postgres-url: the PostgreSQL backend is not measured");
            None
        }
    };
    println!(
        "\n{} entries of {} dimensions (clustered unit vectors, 120 breeds), k = {K}, HNSW m = 16, ef_construction = 200, ef_search = 64; {} cores\n",
        args.n,
        args.dim,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| | embedded, before the log | embedded (hnsw_rs + log) | PostgreSQL + pgvector |");
    println!("|---|---|---|---|");
    let mut names: Vec<&str> = Vec::new();
    for f in [&before, &now].into_iter().chain(pg.as_ref()) {
        for (name, _) in &f.cells {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let cell = |f: Option<&Figures>, name: &str| {
        f.and_then(|f| f.cells.iter().find(|(n, _)| n == name))
            .map_or("–".to_string(), |(_, v)| v.clone())
    };
    for name in names {
        println!(
            "| {name} | {} | {} | {} |",
            cell(Some(&before), name),
            cell(Some(&now), name),
            cell(pg.as_ref(), name)
        );
    }
    Ok(())
}
