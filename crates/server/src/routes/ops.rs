//! Operations: `GET /v1/models`, `/healthz`, `/readyz`, `/metrics`, the OpenAPI document
//! (`/openapi.json`) and the page that renders it (`/`).

use super::State;
use crate::error::ApiError;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::io::Cursor;
use std::sync::OnceLock;

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

async fn models(state: State) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "models": [{
            "id": state.model_id,
            "provider": state.provider,
            "breeds": state.breeds,
            "manifest": state.manifest,
        }]
    }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// A built-in test image (a colour gradient, as PNG) through decode, model, probe and index.
async fn readyz(state: State) -> Result<HttpResponse, ApiError> {
    let unavailable = |what: String| ApiError::Unavailable(format!("not ready: {what}"));
    let embedding = state
        .embed(vec![test_image().to_vec()], state.ticket())
        .await
        .map_err(|e| unavailable(format!("model: {e}")))?;
    let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    if embedding.len() != state.batcher.dim() || (norm - 1.0).abs() > 1e-3 {
        return Err(unavailable(format!(
            "model returned a vector of norm {norm}"
        )));
    }
    let top = state
        .probe
        .top_k(&embedding, 1)
        .map_err(|e| unavailable(format!("probe: {e}")))?;
    let g = state.gallery_read();
    let hits = g
        .search(&embedding, 1, None)
        .map_err(|e| unavailable(format!("index: {e}")))?;
    if !g.is_empty() && hits.is_empty() {
        return Err(unavailable("the index returned nothing".into()));
    }
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "model": state.model_id,
        "provider": state.provider,
        "gallery_items": g.len(),
        "self_test": { "top_breed": top.first().map(|(c, _)| &state.breeds[*c]) },
    })))
}

fn test_image() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let img = image::RgbImage::from_fn(96, 80, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
        });
        let mut out = Cursor::new(Vec::new());
        // Encoding a small in-memory image cannot fail.
        let _ = img.write_to(&mut out, image::ImageFormat::Png);
        out.into_inner()
    })
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
