//! Operations: `GET /v1/models`, `/healthz`, `/readyz`, `/metrics`, the OpenAPI document
//! (`/openapi.json`) and the page that renders it (`/`).

use super::State;
use crate::error::ApiError;
use crate::health::{self, ModelState};
use actix_web::{web, HttpResponse};
use serde_json::json;

pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, route) in [
        ("/v1/models", web::get().to(models)),
        ("/healthz", web::get().to(healthz)),
        ("/readyz", web::get().to(readyz)),
        ("/metrics", web::get().to(metrics)),
        ("/openapi.json", web::get().to(openapi)),
        ("/", web::get().to(page)),
    ] {
        cfg.service(web::resource(path).route(route));
    }
}

/// The OpenAPI 3 document of every route (checked against the router by a test).
pub const OPENAPI: &str = include_str!("../openapi.json");
const PAGE: &str = include_str!("../page.html");

/// The model, and what a client needs to size its requests (as TEI's `/info`).
async fn models(state: State) -> HttpResponse {
    let (limits, batching) = (&state.cfg.limits, &state.cfg.batching);
    HttpResponse::Ok().json(json!({
        "models": [{
            "id": state.model_id,
            "provider": state.provider,
            "dim": state.batcher.dim(),
            "breeds": state.breeds,
            "manifest": state.manifest,
        }],
        "limits": {
            "max_images": limits.max_images,
            "max_body_bytes": limits.max_body_bytes,
            "max_pixels": limits.max_pixels,
            "max_k": limits.max_k,
            "request_timeout_s": limits.request_timeout_s,
            "fetch_urls": state.cfg.inputs.fetch_urls,
        },
        "batching": {
            "max_batch": batching.max_batch,
            "max_wait_ms": batching.max_wait_ms,
            "queue_capacity": batching.queue_capacity,
        },
    }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready: not shutting down, the gallery's last write succeeded, and the model produced
/// correct embeddings recently: judged from the runs it made for clients when there were
/// any in the last few seconds (no queueing behind them), else by sending the canary image
/// through it and comparing with its embedding at start-up (see [`crate::health`]).
async fn readyz(state: State) -> Result<HttpResponse, ApiError> {
    let unavailable = |what: String| ApiError::Unavailable(format!("not ready: {what}"));
    if state.health.shutting_down() {
        return Err(unavailable("shutting down".into()));
    }
    if let Some(e) = state.health.gallery_failure() {
        return Err(unavailable(format!("the last gallery write failed: {e}")));
    }
    let model = match state.health.model() {
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
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "model": state.model_id,
        "provider": state.provider,
        "check": model,
        "gallery_items": gallery_items,
    })))
}

/// The canary image through decoding, preprocessing and the model: its embedding must
/// match the one the model gave at start-up.
async fn canary(state: &State) -> Result<(), String> {
    let e = state
        .embed(vec![health::canary_image().to_vec()], state.ticket())
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

async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the OpenAPI document points at something it defines.
    #[test]
    fn every_reference_of_the_openapi_document_resolves() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let mut refs = Vec::new();
        let mut todo = vec![&doc];
        while let Some(v) = todo.pop() {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    todo.extend(m.values());
                }
                serde_json::Value::Array(a) => todo.extend(a),
                _ => {}
            }
        }
        assert!(refs.len() > 20, "{refs:?}");
        for r in refs {
            let pointer = r.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}
