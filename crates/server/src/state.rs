//! What every handler shares: the bundle, the batcher, the probe, the gallery, health and
//! metrics, and the request pipeline (decode → preprocess → encoder) they all use.
//!
//! Start-up checks that every part of the bundle agrees before anything is served: the
//! probe with the manifest (classes, feature width; checked by [`Bundle::probe`]), the
//! ONNX model's output with the manifest's embedding dimension (a canary image through
//! each session, which must also give unit vectors and the same answer in every session),
//! and the stored gallery with the model (dimension and model identity).

use crate::batcher::{Batcher, Ticket};
use crate::config::ServerConfig;
use crate::encoder::{ActiveProvider, Encoder, OrtEncoder};
use crate::fetch::Fetcher;
use crate::gallery::{self, Gallery, GalleryError, Item, Opening, Seed};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::pipeline::{preprocess, EmbedError};
use crate::watch::Watchdog;
use simsiam::bundle::{Bundle, Manifest};
use simsiam::classes::breed_name;
use simsiam::preprocess::EvalTransform;
use simsiam::probe::LinearProbe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Start-up failures: each ends start-up with one message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model bundle {dir}: {source}")]
    Bundle {
        dir: PathBuf,
        source: simsiam::bundle::BundleError,
    },
    #[error("ONNX Runtime: {0}")]
    Runtime(#[from] simsiam::runtime::RuntimeError),
    #[error(
        "model bundle {dir}: the manifest says {expected}-d embeddings, but encoder.onnx {found}"
    )]
    ModelOutput {
        dir: PathBuf,
        expected: usize,
        found: String,
    },
    #[error("gallery: {0}")]
    Gallery(#[from] GalleryError),
    #[error("cannot start the inference threads: {0}")]
    Spawn(std::io::Error),
}

pub struct AppState {
    pub cfg: ServerConfig,
    pub manifest: Manifest,
    pub model_id: String,
    pub provider: ActiveProvider,
    pub transform: EvalTransform,
    pub batcher: Batcher,
    pub probe: LinearProbe,
    /// Breed names (display form) by class index.
    pub breeds: Vec<String>,
    /// The embedded or the PostgreSQL gallery (`gallery.backend`).
    pub gallery: Arc<dyn Gallery>,
    /// Fetches images given as URLs; `None` when `inputs.fetch_urls` is off.
    pub fetcher: Option<Arc<Fetcher>>,
    pub health: Arc<Health>,
    /// The canary image's embedding as the model gave it at start-up: what `/readyz`
    /// expects when it sends the canary again.
    pub canary: Vec<f32>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Opens and verifies the bundle, checks its parts against each other, starts the
    /// inference threads, loads (or seeds) the gallery.
    pub fn start(cfg: ServerConfig) -> Result<Arc<Self>, StartError> {
        let dir = cfg.model.dir.clone();
        let bundle_err = |source| StartError::Bundle {
            dir: dir.clone(),
            source,
        };
        let bundle = Bundle::open(&dir).map_err(bundle_err)?;
        let probe = bundle.probe().map_err(bundle_err)?;
        let m = &bundle.manifest;
        let transform = m.eval_transform();
        let Sessions {
            encoders,
            provider,
            canary,
        } = start_encoders(&bundle, &cfg, &transform)?;
        log::info!(
            "model {} ({}, {}-d embeddings, {}px input): {} session(s) on {}",
            m.name,
            m.backbone,
            m.embedding.dim,
            m.input.size,
            cfg.inference.sessions,
            provider
        );
        let (metrics, health) = (Arc::new(Metrics::default()), Arc::new(Health::default()));
        let batcher = Batcher::start(encoders, &cfg.batching, metrics.clone(), health.clone())
            .map_err(StartError::Spawn)?;
        let breeds: Vec<String> = m.classes.iter().map(|c| breed_name(c)).collect();
        let gallery = gallery::open(
            &cfg.gallery,
            Opening {
                dim: m.embedding.dim,
                model: &model_key(m),
                seed: seed(&bundle, &breeds)?,
                health: health.clone(),
                metrics: metrics.clone(),
            },
        )?;
        Watchdog::new(
            gallery.clone(),
            health.clone(),
            metrics.clone(),
            cfg.gallery.low_space_warning_mb.saturating_mul(1 << 20),
        )
        .spawn(Duration::from_secs(cfg.gallery.watch_interval_s))
        .map_err(StartError::Spawn)?;
        Ok(Arc::new(Self {
            model_id: format!("{}@{}", m.name, m.version),
            transform,
            manifest: bundle.manifest.clone(),
            provider,
            batcher,
            probe,
            breeds,
            gallery,
            fetcher: Fetcher::new(&cfg.inputs, cfg.limits.max_body_bytes).map(Arc::new),
            health,
            canary,
            metrics,
            cfg,
        }))
    }

    /// Announces a request that may bring images to the batcher (see [`Batcher::ticket`]);
    /// take it before reading the body.
    pub fn ticket(&self) -> Ticket {
        self.batcher.ticket()
    }

    /// Decodes and preprocesses `images` on the blocking pool, then embeds them through
    /// the batcher: `n × dim` unit vectors. A bad image fails the request, naming its index.
    pub async fn embed(
        &self,
        images: Vec<Vec<u8>>,
        ticket: Ticket,
    ) -> Result<Vec<f32>, EmbedError> {
        let n = images.len();
        let transform = self.transform.clone();
        let max_pixels = self.cfg.limits.max_pixels;
        let metrics = self.metrics.clone();
        let priority = self.cfg.http.request_priority;
        let t = std::time::Instant::now();
        let tensors = actix_web::web::block(move || {
            crate::priority::lower_this_thread(priority);
            preprocess(&images, &transform, max_pixels, &metrics)
        })
        .await??;
        crate::timing::add(|timings| timings.preprocess += t.elapsed());
        self.batcher.embed(tensors, n, ticket).await
    }
}

/// The identity of the model a gallery's vectors come from: its name, version and the
/// sha256 of its encoder, so a retrained model under the same name is told apart.
pub fn model_key(m: &Manifest) -> String {
    let sha = m
        .files
        .get(simsiam::bundle::ENCODER)
        .map_or("", |f| &f.sha256[..f.sha256.len().min(16)]);
    format!("{}@{} (encoder {sha})", m.name, m.version)
}

/// The inference sessions, checked.
struct Sessions {
    encoders: Vec<Box<dyn Encoder>>,
    provider: ActiveProvider,
    /// The canary image's embedding.
    canary: Vec<f32>,
}

/// One session per configured session, each checked on the canary image: output of the
/// manifest's width, finite unit vectors.
fn start_encoders(
    bundle: &Bundle,
    cfg: &ServerConfig,
    t: &EvalTransform,
) -> Result<Sessions, StartError> {
    let m = &bundle.manifest;
    let dim = m.embedding.dim;
    let model = bundle
        .encoder_bytes()
        .map_err(|source| StartError::Bundle {
            dir: bundle.dir.clone(),
            source,
        })?;
    let canary_input = preprocess(
        &[health::canary_image().to_vec()],
        t,
        u64::MAX,
        &Metrics::default(),
    )
    .map_err(|e| StartError::ModelOutput {
        dir: bundle.dir.clone(),
        expected: dim,
        found: format!("could not be tested: {e}"),
    })?;
    let wrong = |found: String| StartError::ModelOutput {
        dir: bundle.dir.clone(),
        expected: dim,
        found,
    };
    let mut encoders: Vec<Box<dyn Encoder>> = Vec::new();
    let (mut provider, mut canary) = (ActiveProvider::Cpu, Vec::new());
    for _ in 0..cfg.inference.sessions {
        let (mut enc, p) = OrtEncoder::new(&model, m.input.size, dim, &cfg.inference)?;
        let out = enc.embed(&canary_input, 1).map_err(|e| match e {
            simsiam::runtime::RuntimeError::OutputShape { found, .. } => {
                wrong(format!("gives outputs of shape {found:?}"))
            }
            other => StartError::Runtime(other),
        })?;
        if !health::rows_are_unit_vectors(&out, dim) {
            return Err(wrong(
                "gives embeddings that are not finite unit vectors".into(),
            ));
        }
        provider = p;
        canary = out;
        encoders.push(Box::new(enc));
    }
    Ok(Sessions {
        encoders,
        provider,
        canary,
    })
}

/// The bundle's seed gallery (empty when it has none), with breed names for labels.
fn seed(bundle: &Bundle, breeds: &[String]) -> Result<Seed, StartError> {
    let seed = bundle.seed_gallery().map_err(|source| StartError::Bundle {
        dir: bundle.dir.clone(),
        source,
    })?;
    Ok(match seed {
        Some(seed) => Seed {
            items: (0..seed.meta.ids.len())
                .map(|i| Item {
                    id: seed.meta.ids[i].clone(),
                    breed: breeds.get(seed.meta.labels[i]).cloned(),
                    source: Some(seed.meta.paths[i].clone()),
                    metadata: serde_json::Value::Null,
                })
                .collect(),
            vectors: seed.vectors,
        },
        None => Seed::default(),
    })
}
