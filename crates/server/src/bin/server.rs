//! `server`: the embedding server (embed, search, classify over HTTP) on a model bundle.
//!
//! Settings: `config/server.toml` (or `--config`), then `SIMSIAM_SERVER_<SECTION>__<KEY>`
//! environment variables, then these flags. Does not link libtorch.

use anyhow::Result;
use clap::Parser;
use simsiam_server::config::{Override, ServerConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "server",
    version,
    about = "SimSiam dog-breed embedding server (ONNX Runtime)"
)]
struct Cli {
    /// Configuration file (default: config/server.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model bundle directory written by `trainer export`.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// Where the gallery persists.
    #[arg(long)]
    gallery_dir: Option<PathBuf>,
}

/// Caps glibc's malloc arenas at one per core (its default is eight per core).
///
/// Request threads decode images and the gallery rebuilds its graph on whichever thread
/// writes, so each arena ends up holding freed, fragmented memory: in a 10-minute soak
/// (`make soak`) the resident size doubled (320 to 634 MiB after the first minute) with
/// the default, and stayed within a few percent with the cap. `MALLOC_ARENA_MAX` in the
/// environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only tunes the allocator; called first thing in main, before
        // any other thread exists. A rejected value leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

fn main() -> Result<()> {
    limit_malloc_arenas();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,hnsw_rs=warn"),
    )
    .init();
    let cli = Cli::parse();
    let mut overrides: Vec<Override> = Vec::new();
    if let Some(m) = &cli.model {
        overrides.push(("model.dir", m.to_string_lossy().into_owned().into()));
    }
    if let Some(h) = &cli.host {
        overrides.push(("http.host", h.clone().into()));
    }
    if let Some(p) = cli.port {
        overrides.push(("http.port", u64::from(p).into()));
    }
    if let Some(g) = &cli.gallery_dir {
        overrides.push(("gallery.dir", g.to_string_lossy().into_owned().into()));
    }
    let cfg = ServerConfig::load(cli.config.as_deref(), overrides)?;
    actix_web::rt::System::new().block_on(simsiam_server::serve(cfg))?;
    Ok(())
}
