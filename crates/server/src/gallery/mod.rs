//! The gallery: labelled vectors that searches run over, behind one trait ([`Gallery`])
//! that the routes talk to, with two backends.
//!
//! - [`embedded`] (the default): the gallery lives in the server process, in memory
//!   ([`memory`]: vectors and an `hnsw_rs` graph), made durable by an append-only log
//!   ([`wal`]) compacted into a snapshot with the graph's dump in the background.
//! - [`postgres`]: a PostgreSQL table with pgvector's HNSW index, shared by any number of
//!   server replicas.
//!
//! Every method blocks (disk or network): call them on the blocking pool.

pub mod embedded;
pub mod memory;
pub mod postgres;
pub mod wal;

use crate::config::{GalleryBackend, GalleryConfig};
use crate::health::Health;
use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use simsiam::files::FileError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use memory::GraphParams;

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Io(FileError),
    /// The disk (or the database's disk) is full or over quota: nothing was written, and
    /// nothing is wrong with the server. Writes succeed again once space is freed.
    #[error("no space left for the gallery: {place}: {message}")]
    NoSpace { place: String, message: String },
    #[error("vector has {found} values, the gallery holds {expected}-d vectors")]
    Dimension { expected: usize, found: usize },
    /// The stored gallery was made for another embedding width: never usable.
    #[error(
        "gallery {place} holds {found}-d vectors but model {model} makes {expected}-d ones: {fix}"
    )]
    StoredDimension {
        place: String,
        model: String,
        expected: usize,
        found: usize,
        fix: &'static str,
    },
    /// The stored gallery's vectors come from another model.
    #[error(
        "gallery {place} was embedded by model {found}, but this server runs {expected}: {fix}"
    )]
    StoredModel {
        place: String,
        expected: String,
        found: String,
        fix: &'static str,
    },
    /// The database cannot be reached, or no connection came free in time.
    #[error("gallery database unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement.
    #[error("gallery database: {0}")]
    Database(String),
    /// An earlier write failed half-way; writes are refused until a restart recovers.
    #[error("gallery log: {0}")]
    LogBroken(String),
}

/// A full disk becomes [`GalleryError::NoSpace`] wherever a file was written, so that the
/// client is told 507 rather than 500.
impl From<FileError> for GalleryError {
    fn from(e: FileError) -> Self {
        if e.is_no_space() {
            GalleryError::NoSpace {
                place: e.path.display().to_string(),
                message: e.source.to_string(),
            }
        } else {
            GalleryError::Io(e)
        }
    }
}

/// One gallery entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// The breed (or any label the client gave); `label` is accepted as an alias.
    #[serde(alias = "label")]
    pub breed: Option<String>,
    /// Where the image came from (a dataset path, a URL): returned with search hits.
    pub source: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub id: String,
    pub breed: Option<String>,
    /// Cosine similarity, 1 = identical direction.
    pub score: f32,
    pub source: Option<String>,
    /// What the entry was added with (null when none).
    pub metadata: serde_json::Value,
}

/// Live entries: how many, their width, how many per breed (`""` for none).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub total: usize,
    pub dim: usize,
    pub by_breed: BTreeMap<String, usize>,
}

/// What the routes need of a gallery, whichever backend keeps it. Every change is
/// durable when its method returns.
pub trait Gallery: Send + Sync {
    fn dim(&self) -> usize;
    /// Adds the entries, replacing those whose id exists, all or none; the total after.
    fn upsert(&self, entries: Vec<(Item, Vec<f32>)>) -> Result<usize, GalleryError>;
    /// Removes an entry: the total after, or `None` when there was no such id.
    fn remove(&self, id: &str) -> Result<Option<usize>, GalleryError>;
    /// The `k` nearest entries to each unit vector of `queries` (row-major), best first,
    /// optionally only those of `breed` (matched ignoring case and `_` versus space).
    fn search(
        &self,
        queries: &[f32],
        k: usize,
        breed: Option<&str>,
    ) -> Result<Vec<Vec<Hit>>, GalleryError>;
    fn counts(&self) -> Result<Counts, GalleryError>;
    /// For readiness, quickly: the entry count if known without waiting, or why the
    /// gallery cannot serve.
    fn ready(&self) -> Result<Option<usize>, GalleryError>;
    /// Makes everything durable and stops background work (at shutdown).
    fn flush(&self) -> Result<(), GalleryError>;
    /// A small write where the gallery writes (embedded: a file beside the log, synced,
    /// then removed; PostgreSQL: a query on its table), so that readiness can tell by
    /// itself when a gallery whose writes failed (a full disk, a lost database) works again.
    fn probe(&self) -> Result<(), GalleryError>;
    /// Free bytes for the gallery's files, when they are on a local disk.
    fn free_bytes(&self) -> Option<u64>;
}

/// The entries a new gallery starts with (the bundle's seed gallery).
#[derive(Default)]
pub struct Seed {
    pub items: Vec<Item>,
    /// Row-major, one unit vector per item.
    pub vectors: Vec<f32>,
}

/// What a gallery is opened for: the model's width and identity, and the seed.
pub struct Opening<'a> {
    pub dim: usize,
    /// The model key (`name@version (encoder <sha>)`, see `state::model_key`).
    pub model: &'a str,
    pub seed: Seed,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// Opens the configured backend, checked against the model, seeded when new.
pub fn open(cfg: &GalleryConfig, opening: Opening) -> Result<Arc<dyn Gallery>, GalleryError> {
    Ok(match cfg.backend {
        GalleryBackend::Embedded => Arc::new(embedded::EmbeddedGallery::open(cfg, opening)?),
        GalleryBackend::Postgres => Arc::new(postgres::PostgresGallery::open(cfg, opening)?),
    })
}

/// The HNSW settings of the configuration.
pub fn graph_params(cfg: &GalleryConfig) -> GraphParams {
    GraphParams {
        m: cfg.m,
        ef_construction: cfg.ef_construction,
        ef_search: cfg.ef_search,
    }
}

/// Breed names match ignoring ASCII case and `_` versus space (`Japanese_spaniel` =
/// `japanese spaniel`), without allocating: a breed filter compares every row.
pub fn same_breed(a: &str, b: &str) -> bool {
    let norm = |c: char| {
        if c == '_' {
            ' '
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.chars().zip(b.chars()).all(|(x, y)| norm(x) == norm(y))
}

/// A breed name with ASCII letters lower-cased and `_` as space: the form PostgreSQL
/// stores in its `breed_key` column and a filter compares.
pub fn breed_key(breed: &str) -> String {
    breed.replace('_', " ").to_ascii_lowercase()
}
