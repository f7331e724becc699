//! Server settings: defaults, then `config/server.toml` (or `--config`), then
//! `SIMSIAM_SERVER_<SECTION>__<KEY>` environment variables, then command-line flags;
//! validated once at start-up so a bad value ends start-up with a message naming the key.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use simsiam::config::check_rules;
pub use simsiam::config::{ConfigError, Override};

/// The environment prefix of the server's settings, e.g. `SIMSIAM_SERVER_HTTP__PORT=9000`.
pub const ENV_PREFIX: &str = "SIMSIAM_SERVER";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub http: HttpConfig,
    pub model: BundleConfig,
    pub inference: InferenceConfig,
    pub batching: BatchingConfig,
    pub limits: LimitsConfig,
    pub inputs: InputsConfig,
    pub gallery: GalleryConfig,
    pub auth: AuthConfig,
    pub cors: CorsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub host: String,
    pub port: u16,
    /// actix worker threads (request parsing and routing only); 0 = one per core.
    pub workers: usize,
    /// CPU priority of the request threads (HTTP workers, decoding) next to the model's
    /// threads; see [`super::priority`].
    pub request_priority: RequestPriority,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    pub shutdown_timeout_s: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
            request_priority: RequestPriority::Idle,
            shutdown_timeout_s: 30,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleConfig {
    /// The bundle directory written by `trainer export`.
    pub dir: PathBuf,
}

impl Default for BundleConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/default"),
        }
    }
}

/// How request threads share the CPU with the model's threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestPriority {
    /// The same priority as the model's threads.
    Normal,
    /// Niceness 19: the model's threads mostly preempt them.
    Low,
    /// `SCHED_IDLE`: they run only when the model's threads wait. The highest throughput
    /// when the server has its cores (or its container's) to itself; a CPU-bound neighbour
    /// outside its container slows them down about tenfold (docs/server.md).
    #[default]
    Idle,
}

impl std::fmt::Display for RequestPriority {
    /// The spelling of the configuration file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Low => "low",
            Self::Idle => "idle",
        })
    }
}

/// Which ONNX Runtime execution provider runs the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// CUDA when the loaded ONNX Runtime has it and a GPU answers, else CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA or fail at start-up.
    Cuda,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    pub provider: Provider,
    /// Intra-op threads per session; 0 = one per core.
    pub threads: usize,
    /// Sessions, each on its own inference thread, sharing the request queue.
    pub sessions: usize,
    /// Whether ONNX Runtime's intra-op threads busy-wait for work during a run (faster
    /// hand-offs between operators). They never spin between runs, when the cores are
    /// needed to decode the next batch. (Measured at concurrency 8 with idle-priority
    /// request threads: 0.77–0.78× the bare session with spinning, 0.72–0.73× without.)
    pub spin: bool,
    /// Options of the CUDA execution provider (used when it runs).
    pub cuda: CudaConfig,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            provider: Provider::Auto,
            threads: 0,
            sessions: 1,
            spin: true,
            cuda: CudaConfig::default(),
        }
    }
}

/// How cuDNN picks a convolution algorithm for each new input shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvSearch {
    /// Time every algorithm on the first run of each shape: the fastest kernels, but a
    /// slow first request for each of the `max_batch` batch sizes a server sees.
    Exhaustive,
    /// cuDNN's own ranking, no timing: no slow first runs.
    #[default]
    Heuristic,
    /// One fixed algorithm (implicit precomputed GEMM): the least workspace memory.
    Default,
}

/// How the CUDA provider's memory arena grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaExtend {
    /// In powers of two: few allocations, some memory held back.
    #[default]
    NextPowerOfTwo,
    /// By what each request needs: the least memory.
    SameAsRequested,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaConfig {
    /// Which GPU.
    pub device_id: i32,
    pub conv_algorithm_search: ConvSearch,
    pub arena_extend: ArenaExtend,
    /// Cap of the provider's memory arena in MiB; 0 = no cap.
    pub memory_limit_mb: usize,
    /// TF32 matmuls and convolutions (Ampere and later): faster, about 1e-3 relative error.
    pub tf32: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            device_id: 0,
            conv_algorithm_search: ConvSearch::Heuristic,
            arena_extend: ArenaExtend::NextPowerOfTwo,
            memory_limit_mb: 0,
            tf32: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most images in one model run.
    pub max_batch: usize,
    /// How long a run waits, at most, for more images once it has its first. Under light
    /// load it stops waiting as soon as nothing more is on its way (see [`crate::batcher`]).
    pub max_wait_ms: u64,
    /// Most images waiting for the model; beyond it requests get 503 with Retry-After.
    pub queue_capacity: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait_ms: 10,
            queue_capacity: 256,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_images: usize,
    /// Checked from the image header, before the pixels are decoded.
    pub max_pixels: u64,
    pub request_timeout_s: u64,
    /// Largest `k` / `top_k` a request may ask for.
    pub max_k: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_images: 32,
            max_pixels: 50_000_000,
            request_timeout_s: 30,
            max_k: 100,
        }
    }
}

/// Images given as `http(s)` URLs, fetched by the server (see [`crate::fetch`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputsConfig {
    /// Off by default: a server that fetches for its clients can be aimed at what only
    /// it can reach.
    pub fetch_urls: bool,
    /// Hosts to fetch from (`images.example.org`, or `*.example.org` for its subdomains);
    /// redirects to other hosts are refused.
    pub allowed_hosts: Vec<String>,
    /// Fetch from loopback, private and link-local addresses too (tests, internal stores).
    pub allow_private_addresses: bool,
    /// Seconds one fetch may take, connecting and reading included.
    pub fetch_timeout_s: u64,
}

impl Default for InputsConfig {
    fn default() -> Self {
        Self {
            fetch_urls: false,
            allowed_hosts: Vec::new(),
            allow_private_addresses: false,
            fetch_timeout_s: 10,
        }
    }
}

/// Where the gallery is kept (see [`crate::gallery`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GalleryBackend {
    /// In the server process: memory, an append-only log and snapshots in `gallery.dir`.
    #[default]
    Embedded,
    /// A PostgreSQL table with pgvector, shared by every replica (`gallery.postgres_url`).
    Postgres,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GalleryConfig {
    pub backend: GalleryBackend,
    /// Where the embedded gallery lives and persists; seeded from the bundle's gallery
    /// when empty.
    pub dir: PathBuf,
    /// HNSW: links per node, candidate list while building, and while searching.
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    /// What to do with a stored gallery whose vectors another model made: `refuse` to
    /// start, or `reseed` it from the bundle (the old file is kept beside it).
    pub on_model_change: OnModelChange,
    /// `postgresql://user:password@host:port/db` (or `?host=/socket/dir`), for the
    /// postgres backend.
    pub postgres_url: String,
    /// The table of this model's gallery (one per model).
    pub postgres_table: String,
    /// Most connections this replica holds.
    pub postgres_pool_size: u32,
    /// Seconds to connect, or to wait for a free connection, before answering 503.
    pub postgres_timeout_s: u64,
    /// A statement running longer is cancelled.
    pub postgres_statement_timeout_ms: u64,
    /// A breed filter over at most this many rows ranks them exactly (see
    /// [`crate::gallery::postgres`]).
    pub postgres_exact_breed_max: usize,
    /// Seconds between the watchdog's looks: free space, and whether failed writes work
    /// again (see [`crate::watch`]).
    pub watch_interval_s: u64,
    /// Below this many free megabytes on the embedded gallery's disk, the log warns.
    pub low_space_warning_mb: u64,
}

impl GalleryConfig {
    /// The PostgreSQL backend's settings: a URL, a table name that is a plain identifier
    /// (it is spliced into SQL), a pool, and no `reseed` (one table per model instead).
    fn validate_postgres(&self) -> Result<(), ConfigError> {
        let t = &self.postgres_table;
        let identifier = t.len() <= 40
            && t.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let rules: [(&'static str, bool, &str); 4] = [
            (
                "gallery.postgres_url",
                !self.postgres_url.trim().is_empty(),
                "must be set for the postgres backend (or SIMSIAM_SERVER_GALLERY__POSTGRES_URL)",
            ),
            (
                "gallery.postgres_table",
                identifier,
                "must be 1 to 40 lower-case letters, digits and _, not starting with a digit",
            ),
            (
                "gallery.on_model_change",
                self.on_model_change != OnModelChange::Reseed,
                "\"reseed\" is for the embedded backend; with postgres give each model its own gallery.postgres_table",
            ),
            (
                "gallery.postgres_pool_size",
                self.postgres_pool_size > 0 && self.postgres_timeout_s > 0,
                "postgres_pool_size and postgres_timeout_s must be at least 1",
            ),
        ];
        check_rules(rules)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnModelChange {
    #[default]
    Refuse,
    Reseed,
}

impl Default for GalleryConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("var/gallery"),
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            on_model_change: OnModelChange::Refuse,
            backend: GalleryBackend::Embedded,
            postgres_url: String::new(),
            postgres_table: "simsiam_gallery".into(),
            postgres_pool_size: 8,
            postgres_timeout_s: 5,
            postgres_statement_timeout_ms: 10_000,
            postgres_exact_breed_max: 20_000,
            watch_interval_s: 2,
            low_space_warning_mb: 256,
        }
    }
}

/// API keys, sent as `Authorization: Bearer <key>`. With no key set the API is open.
/// With any key set, every route but health, readiness and the docs needs one: the read
/// key opens the read routes (embed, search, classify, models, gallery counts); the admin
/// key opens those and the admin routes too (gallery writes, metrics). Each key comes from
/// the configuration, the environment (`SIMSIAM_SERVER_AUTH__READ_KEY`), or a file
/// (`read_key_file`, read once at start-up; the way container secrets arrive).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub read_key: String,
    pub read_key_file: Option<PathBuf>,
    pub admin_key: String,
    pub admin_key_file: Option<PathBuf>,
    /// The one key of earlier versions: an admin key.
    pub api_key: String,
}

impl AuthConfig {
    /// Whether any key is set: the API is closed.
    pub fn enabled(&self) -> bool {
        !self.read_key.is_empty() || !self.admin_key.is_empty()
    }

    /// Reads the key files into the keys, and takes `api_key` as the admin key; a key set
    /// twice (value and file, or admin and api) is an error naming it.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let read = |file: &Path, key: &'static str| {
            std::fs::read_to_string(file)
                .map(|k| k.trim().to_string())
                .map_err(|e| ConfigError::Invalid {
                    key,
                    message: format!("cannot read {}: {e}", file.display()),
                })
        };
        let twice = |key: &'static str| ConfigError::Invalid {
            key,
            message: "set either the key or its file, not both".into(),
        };
        if let Some(f) = self.read_key_file.take() {
            if !self.read_key.is_empty() {
                return Err(twice("auth.read_key_file"));
            }
            self.read_key = read(&f, "auth.read_key_file")?;
        }
        if let Some(f) = self.admin_key_file.take() {
            if !self.admin_key.is_empty() {
                return Err(twice("auth.admin_key_file"));
            }
            self.admin_key = read(&f, "auth.admin_key_file")?;
        }
        if !self.api_key.is_empty() {
            if !self.admin_key.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "auth.api_key",
                    message: "is the admin key of earlier versions: set auth.admin_key only".into(),
                });
            }
            self.admin_key = std::mem::take(&mut self.api_key);
        }
        if self.enabled() && self.read_key == self.admin_key {
            return Err(ConfigError::Invalid {
                key: "auth.read_key",
                message: "must differ from auth.admin_key".into(),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser; `["*"]` allows any; empty disables CORS.
    pub allowed_origins: Vec<String>,
}

impl ServerConfig {
    /// Defaults ← file (`config/server.toml` when present, or `file`, which must exist)
    /// ← environment ← `overrides` (command-line flags), then [`Self::validate`].
    pub fn load(file: Option<&Path>, overrides: Vec<Override>) -> Result<Self, ConfigError> {
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("cors.allowed_origins")
            .with_list_parse_key("inputs.allowed_hosts")
            .try_parsing(true);
        let mut cfg: ServerConfig = simsiam::config::layered(
            &ServerConfig::default(),
            file,
            "config/server.toml",
            env,
            overrides,
        )?;
        cfg.auth.resolve()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that types alone cannot express: the first broken rule, by its key
    /// (`(key, the value is fine, what it must be)`, as the trainer's).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (i, l, b, g) = (&self.inputs, &self.limits, &self.batching, &self.gallery);
        let bad_origin = |o: &String| o != "*" && !o.contains("://");
        let rules: [(&'static str, bool, &str); 16] = [
            (
                "http.host",
                !self.http.host.trim().is_empty(),
                "must not be empty",
            ),
            (
                "inputs.allowed_hosts",
                !i.fetch_urls || !i.allowed_hosts.is_empty(),
                "must list the hosts to fetch from when inputs.fetch_urls is on",
            ),
            (
                "inputs.fetch_timeout_s",
                i.fetch_timeout_s > 0,
                "must be at least 1",
            ),
            (
                "inference.cuda.device_id",
                self.inference.cuda.device_id >= 0,
                "must not be negative",
            ),
            (
                "inference.sessions",
                self.inference.sessions > 0,
                "must be at least 1",
            ),
            ("batching.max_batch", b.max_batch > 0, "must be at least 1"),
            (
                "batching.queue_capacity",
                b.queue_capacity >= l.max_images,
                "must hold at least one full request (limits.max_images)",
            ),
            ("limits.max_images", l.max_images > 0, "must be at least 1"),
            (
                "limits.max_body_bytes",
                l.max_body_bytes >= 1024,
                "must be at least 1024",
            ),
            ("limits.max_pixels", l.max_pixels > 0, "must be at least 1"),
            (
                "limits.request_timeout_s",
                l.request_timeout_s > 0,
                "must be at least 1",
            ),
            ("limits.max_k", l.max_k > 0, "must be at least 1"),
            (
                "gallery.m",
                (2..=256).contains(&g.m),
                "must be between 2 and 256",
            ),
            (
                "gallery.ef_search",
                g.ef_construction > 0 && g.ef_search > 0,
                "ef_construction and ef_search must be at least 1",
            ),
            (
                "gallery.watch_interval_s",
                g.watch_interval_s > 0,
                "must be at least 1",
            ),
            (
                "cors.allowed_origins",
                !self.cors.allowed_origins.iter().any(bad_origin),
                "each origin must be \"*\" or look like https://host[:port]",
            ),
        ];
        check_rules(rules)?;
        if g.backend == GalleryBackend::Postgres {
            g.validate_postgres()?;
        }
        Ok(())
    }

    pub fn bind_address(&self) -> String {
        format!("{}:{}", self.http.host, self.http.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The project's `config/server.toml` (tests run in the crate's folder).
    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/server.toml");

    #[test]
    fn defaults_are_valid_and_listen_on_loopback_8080() {
        let cfg = ServerConfig::default();
        cfg.validate().expect("defaults valid");
        assert_eq!(cfg.bind_address(), "127.0.0.1:8080");
    }

    #[test]
    fn overrides_win_and_errors_name_the_key() {
        let cfg = ServerConfig::load(Some(Path::new(FILE)), vec![("http.port", 9001u64.into())])
            .expect("load");
        assert_eq!(cfg.http.port, 9001);
        let err = ServerConfig::load(
            Some(Path::new(FILE)),
            vec![("batching.max_batch", 0u64.into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("batching.max_batch"), "{err}");
        let err = ServerConfig::load(Some(Path::new("no/such.toml")), vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)), "{err}");
    }

    #[test]
    fn the_gpu_settings_file_loads_and_asks_for_cuda() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/server-gpu.toml");
        let cfg = ServerConfig::load(Some(Path::new(file)), vec![]).expect("valid");
        assert_eq!(cfg.inference.provider, Provider::Cuda);
        assert_eq!(cfg.batching.max_batch, 128);
        assert_eq!(
            cfg.inference.cuda.conv_algorithm_search,
            ConvSearch::Heuristic
        );
        let err = ServerConfig::load(
            Some(Path::new(file)),
            vec![("inference.cuda.device_id", (-1i64).into())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("inference.cuda.device_id"),
            "{err}"
        );
    }

    #[test]
    fn keys_come_from_values_or_files_and_the_old_key_is_the_admin_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("read.key");
        std::fs::write(&file, "from-file\n").expect("write");
        let path = file.to_string_lossy().into_owned();
        let cfg = ServerConfig::load(
            None,
            vec![
                ("auth.read_key_file", path.clone().into()),
                ("auth.api_key", "old".into()),
            ],
        )
        .expect("valid");
        assert_eq!(
            (cfg.auth.read_key.as_str(), cfg.auth.admin_key.as_str()),
            ("from-file", "old")
        );
        assert!(cfg.auth.enabled());
        for (overrides, key) in [
            (
                vec![
                    ("auth.read_key", "x".into()),
                    ("auth.read_key_file", path.into()),
                ],
                "auth.read_key_file",
            ),
            (
                vec![
                    ("auth.read_key", "same".into()),
                    ("auth.admin_key", "same".into()),
                ],
                "auth.read_key",
            ),
            (
                vec![("auth.admin_key_file", "/no/such/key".into())],
                "auth.admin_key_file",
            ),
        ] {
            let err = ServerConfig::load(None, overrides).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        assert!(!ServerConfig::default().auth.enabled());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "[http]\nprot = 1\n").expect("write");
        let err = ServerConfig::load(Some(&f), vec![]).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn request_priority_is_idle_low_or_normal() {
        let file = ServerConfig::load(Some(Path::new(FILE)), vec![]).expect("load");
        assert_eq!(file.http.request_priority, RequestPriority::Idle);
        assert_eq!(
            ServerConfig::default().http.request_priority,
            file.http.request_priority
        );
        let low =
            ServerConfig::load(None, vec![("http.request_priority", "low".into())]).expect("low");
        assert_eq!(low.http.request_priority, RequestPriority::Low);
        let err =
            ServerConfig::load(None, vec![("http.request_priority", "high".into())]).unwrap_err();
        assert!(err.to_string().contains("high"), "{err}");
    }
}
