//! What every handler shares: the bundle, the batcher, the probe, the gallery and the
//! metrics, and the request pipeline (decode → preprocess → encoder) they all use.

use crate::batcher::{Batcher, Ticket};
use crate::config::ServerConfig;
use crate::encoder::{ActiveProvider, Encoder, OrtEncoder};
use crate::gallery::{Gallery, GalleryError, GraphParams, Item};
use crate::metrics::Metrics;
use crate::pipeline::{preprocess, EmbedError};
use simsiam::bundle::{Bundle, Manifest};
use simsiam::classes::breed_name;
use simsiam::preprocess::EvalTransform;
use simsiam::probe::LinearProbe;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

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
    #[error("gallery: {0}")]
    Gallery(#[from] GalleryError),
    #[error("cannot start the inference threads: {0}")]
    Spawn(std::io::Error),
    #[error("gallery {dir} holds {found}-d vectors but model {model} makes {expected}-d ones: point gallery.dir elsewhere or delete it")]
    GalleryModel {
        dir: PathBuf,
        model: String,
        expected: usize,
        found: usize,
    },
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
    pub gallery: RwLock<Gallery>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Opens and verifies the bundle, starts the inference threads, loads (or seeds) the
    /// gallery.
    pub fn start(cfg: ServerConfig) -> Result<Arc<Self>, StartError> {
        let dir = cfg.model.dir.clone();
        let bundle_err = |source| StartError::Bundle {
            dir: dir.clone(),
            source,
        };
        let bundle = Bundle::open(&dir).map_err(bundle_err)?;
        let probe = bundle.probe().map_err(bundle_err)?;
        let model = bundle.encoder_bytes().map_err(bundle_err)?;
        let m = &bundle.manifest;
        let dim = m.embedding.dim;
        let mut encoders: Vec<Box<dyn Encoder>> = Vec::new();
        let mut provider = ActiveProvider::Cpu;
        for _ in 0..cfg.inference.sessions {
            let (enc, p) = OrtEncoder::new(&model, m.input.size, dim, &cfg.inference)?;
            provider = p;
            encoders.push(Box::new(enc));
        }
        log::info!(
            "model {} ({}, {}-d embeddings, {}px input): {} session(s) on {}",
            m.name,
            m.backbone,
            dim,
            m.input.size,
            cfg.inference.sessions,
            provider
        );
        let metrics = Arc::new(Metrics::default());
        let batcher =
            Batcher::start(encoders, &cfg.batching, metrics.clone()).map_err(StartError::Spawn)?;
        let breeds: Vec<String> = m.classes.iter().map(|c| breed_name(c)).collect();
        let gallery = open_gallery(&cfg, &bundle, &breeds)?;
        metrics
            .gallery_items
            .store(gallery.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(Arc::new(Self {
            model_id: format!("{}@{}", m.name, m.version),
            transform: m.eval_transform(),
            manifest: bundle.manifest.clone(),
            provider,
            batcher,
            probe,
            breeds,
            gallery: RwLock::new(gallery),
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
        let tensors = actix_web::web::block(move || {
            crate::priority::lower_this_thread(priority);
            preprocess(&images, &transform, max_pixels, &metrics)
        })
        .await??;
        self.batcher.embed(tensors, n, ticket).await
    }

    pub fn gallery_read(&self) -> std::sync::RwLockReadGuard<'_, Gallery> {
        self.gallery.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn gallery_write(&self) -> std::sync::RwLockWriteGuard<'_, Gallery> {
        self.gallery.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the gallery to disk (atomically); called after every change and at shutdown.
    pub fn save_gallery(&self, g: &Gallery) -> Result<(), GalleryError> {
        self.metrics
            .gallery_items
            .store(g.len(), std::sync::atomic::Ordering::Relaxed);
        g.save(&self.cfg.gallery.dir)
    }
}

fn graph_params(cfg: &ServerConfig) -> GraphParams {
    GraphParams {
        m: cfg.gallery.m,
        ef_construction: cfg.gallery.ef_construction,
        ef_search: cfg.gallery.ef_search,
    }
}

/// The persisted gallery, or (first start) the bundle's gallery, saved as the start.
fn open_gallery(
    cfg: &ServerConfig,
    bundle: &Bundle,
    breeds: &[String],
) -> Result<Gallery, StartError> {
    let dim = bundle.manifest.embedding.dim;
    let params = graph_params(cfg);
    let dir = &cfg.gallery.dir;
    if let Some(g) = Gallery::load(dir, params)? {
        if g.dim() != dim {
            return Err(StartError::GalleryModel {
                dir: dir.clone(),
                model: bundle.manifest.name.clone(),
                expected: dim,
                found: g.dim(),
            });
        }
        log::info!("gallery {}: {} items", dir.display(), g.len());
        return Ok(g);
    }
    let seed = bundle.seed_gallery().map_err(|source| StartError::Bundle {
        dir: bundle.dir.clone(),
        source,
    })?;
    let g = match seed {
        Some(seed) => {
            let items = (0..seed.meta.ids.len())
                .map(|i| Item {
                    id: seed.meta.ids[i].clone(),
                    breed: breeds.get(seed.meta.labels[i]).cloned(),
                    source: Some(seed.meta.paths[i].clone()),
                    metadata: serde_json::Value::Null,
                })
                .collect();
            Gallery::from_parts(dim, items, seed.vectors, params)
        }
        None => Gallery::new(dim, params),
    };
    g.save(dir)?;
    log::info!(
        "gallery {}: seeded with {} items from the bundle",
        dir.display(),
        g.len()
    );
    Ok(g)
}
