//! Operations: `GET /v1/models`, `/healthz`, `/readyz`, `/metrics`, the OpenAPI document
//! (`/openapi.json`) and the page that renders it (`/`).

use super::State;
use crate::auth;
use crate::encoder::ActiveProvider;
use crate::error::ApiError;
use crate::health::{self, ModelState};
use crate::openapi::{MetricsErrors, ModelsErrors, ReadyErrors};
use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/models").route(auth::read(web::get().to(models))))
        .service(web::resource("/metrics").route(auth::admin(web::get().to(metrics))))
        .service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .service(web::resource("/openapi.json").route(web::get().to(openapi)))
        .service(web::resource("/").route(web::get().to(page)));
}

const PAGE: &str = include_str!("../page.html");

#[derive(Serialize, ToSchema)]
pub struct ModelsResponse {
    /// The one model served.
    models: Vec<ModelInfo>,
    limits: Limits,
    batching: Batching,
}

#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    /// `name@version`.
    id: String,
    /// Where it runs.
    provider: ActiveProvider,
    dim: usize,
    /// The classes of the linear probe.
    breeds: Vec<String>,
    /// The bundle's `manifest.json`: training and evaluation figures, file hashes.
    #[schema(value_type = Object)]
    manifest: serde_json::Value,
}

/// What a client sizes its requests by.
#[derive(Serialize, ToSchema)]
pub struct Limits {
    max_images: usize,
    max_body_bytes: usize,
    max_pixels: u64,
    max_k: usize,
    request_timeout_s: u64,
    /// Whether images may be given as http(s) URLs.
    fetch_urls: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Batching {
    max_batch: usize,
    max_wait_ms: u64,
    queue_capacity: usize,
}

/// The served model and the limits
///
/// The model (id, provider, width, breeds, bundle manifest) and what a client needs to
/// size its requests, as TEI's `/info`.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "operations",
    responses((status = 200, body = ModelsResponse), ModelsErrors),
    security(("bearer" = ["read"])),
)]
pub async fn models(state: State) -> Result<HttpResponse, ApiError> {
    let (limits, batching) = (&state.cfg.limits, &state.cfg.batching);
    Ok(HttpResponse::Ok().json(ModelsResponse {
        models: vec![ModelInfo {
            id: state.model_id.clone(),
            provider: state.provider,
            dim: state.batcher.dim(),
            breeds: state.breeds.to_vec(),
            manifest: serde_json::to_value(&state.manifest)
                .map_err(|e| ApiError::Internal(format!("manifest: {e}")))?,
        }],
        limits: Limits {
            max_images: limits.max_images,
            max_body_bytes: limits.max_body_bytes,
            max_pixels: limits.max_pixels,
            max_k: limits.max_k,
            request_timeout_s: limits.request_timeout_s,
            fetch_urls: state.cfg.inputs.fetch_urls,
        },
        batching: Batching {
            max_batch: batching.max_batch,
            max_wait_ms: batching.max_wait_ms,
            queue_capacity: batching.queue_capacity,
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    status: &'static str,
}

/// Liveness
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, body = Alive)),
    security(()),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Alive { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    status: &'static str,
    model: String,
    provider: ActiveProvider,
    /// How the model was judged: `serving` (recent requests were answered correctly) or
    /// `canary passed`.
    check: &'static str,
    /// Entries in the gallery; null when a change held the embedded gallery at that
    /// moment (readiness never waits for one).
    gallery_items: Option<usize>,
}

/// Readiness
///
/// Not shutting down, the gallery's last write succeeded, and the model produced correct
/// embeddings recently: judged from the runs it made for clients when there were any in
/// the last few seconds (no queueing behind them), else by sending the canary image
/// through it and comparing with its embedding at start-up (see [`crate::health`]).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, body = Ready), ReadyErrors),
    security(()),
)]
pub async fn readyz(state: State) -> Result<HttpResponse, ApiError> {
    let unavailable = |what: String| ApiError::Unavailable(format!("not ready: {what}"));
    if state.health.shutting_down() {
        return Err(unavailable("shutting down".into()));
    }
    if let Some(e) = state.health.gallery_failure() {
        return Err(unavailable(format!("the last gallery write failed: {e}")));
    }
    let check = match state.health.model() {
        ModelState::Serving => "serving",
        ModelState::Failed(_) | ModelState::Unknown => {
            canary(&state).await.map_err(unavailable)?;
            "canary passed"
        }
    };
    // The embedded gallery is counted only when no change holds it (readiness never
    // waits for one); the database must answer within half a second.
    let st = state.clone();
    let gallery_items = web::block(move || st.gallery.ready())
        .await?
        .map_err(|e| unavailable(format!("gallery: {e}")))?;
    Ok(HttpResponse::Ok().json(Ready {
        status: "ready",
        model: state.model_id.clone(),
        provider: state.provider,
        check,
        gallery_items,
    }))
}

/// The canary image through decoding, preprocessing and the model: its embedding must
/// match the one the model gave at start-up.
async fn canary(state: &State) -> Result<(), String> {
    let e = state
        .embed(
            vec![health::canary_image().to_vec()],
            state.batcher.canary_ticket(),
        )
        .await
        .map_err(|e| format!("model: {e}"))?;
    let diff = e
        .iter()
        .zip(&state.canary)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if e.len() != state.canary.len() || diff > 1e-4 {
        return Err(format!(
            "the canary image's embedding moved by {diff:.2e} since start-up"
        ));
    }
    Ok(())
}

/// Prometheus metrics
///
/// The text exposition format: requests by route and status, latencies by stage, batch
/// sizes, queue depth, gallery size and free disk space.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, body = String, content_type = "text/plain"), MetricsErrors),
    security(("bearer" = ["admin"])),
)]
pub async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// This document
///
/// Generated from the handlers' annotations and the types they read and return.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, body = Object, description = "OpenAPI 3.1")),
    security(()),
)]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi::json())
}

/// Web page: try the API and read this document
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, body = String, content_type = "text/html")),
    security(()),
)]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}
