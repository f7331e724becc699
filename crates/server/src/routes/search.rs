//! `POST /v1/search`: images or vectors → nearest gallery entries (HNSW).

use super::{check_k, within_timeout, State};
use crate::error::ApiError;
use crate::gallery::Hit;
use crate::input;
use crate::metrics::Stage;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/search").route(web::post().to(search)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_k")]
    k: usize,
    /// Only neighbours of this breed.
    breed: Option<String>,
    /// Query vectors instead of images (each is l2-normalised before searching).
    vectors: Option<Vec<Vec<f32>>>,
}

fn default_k() -> usize {
    10
}

#[derive(Serialize)]
struct Neighbours {
    neighbors: Vec<Hit>,
}

#[derive(Serialize)]
struct Response {
    model: String,
    results: Vec<Neighbours>,
}

async fn search(
    state: State,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    within_timeout(&state, async {
        let ticket = state.ticket();
        let input = input::read(&req, body, &state.cfg.limits, state.fetcher.as_ref()).await?;
        let p: Params = input.params()?;
        let k = check_k("k", p.k, &state)?;
        let dim = state.batcher.dim();
        let queries: Vec<f32> = match (p.vectors, input.images.is_empty()) {
            (Some(_), false) => {
                return Err(ApiError::Unprocessable(
                    "send either `images` or `vectors`, not both".into(),
                ))
            }
            (Some(vectors), true) => {
                drop(ticket);
                query_vectors(vectors, dim, state.cfg.limits.max_images)?
            }
            (None, _) => {
                input.require_images(&state.cfg.limits)?;
                state.embed(input.images, ticket).await?
            }
        };
        let breed = p.breed;
        let st = state.clone();
        let results = web::block(move || {
            let t = Instant::now();
            let out = st
                .gallery
                .search(&queries, k, breed.as_deref())
                .map(|found| {
                    found
                        .into_iter()
                        .map(|neighbors| Neighbours { neighbors })
                        .collect::<Vec<_>>()
                })
                .map_err(ApiError::from);
            st.metrics.record_stage(Stage::Search, t.elapsed());
            out
        })
        .await??;
        Ok(HttpResponse::Ok().json(Response {
            model: state.model_id.clone(),
            results,
        }))
    })
    .await
}

/// Validates and l2-normalises query vectors.
fn query_vectors(vectors: Vec<Vec<f32>>, dim: usize, max: usize) -> Result<Vec<f32>, ApiError> {
    if vectors.is_empty() {
        return Err(ApiError::Unprocessable("`vectors` is empty".into()));
    }
    if vectors.len() > max {
        return Err(ApiError::TooLarge(format!(
            "{} vectors in one request; the limit is {max}",
            vectors.len()
        )));
    }
    let mut out = Vec::with_capacity(vectors.len() * dim);
    for (i, v) in vectors.into_iter().enumerate() {
        if v.len() != dim {
            return Err(ApiError::Unprocessable(format!(
                "vector {i} has {} values; this model's embeddings have {dim}",
                v.len()
            )));
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(ApiError::Unprocessable(format!(
                "vector {i} has no direction (zero or not finite)"
            )));
        }
        out.extend(v.iter().map(|x| x / norm));
    }
    Ok(out)
}
