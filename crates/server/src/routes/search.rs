//! `POST /v1/search`: images or vectors → nearest gallery entries (HNSW).

use super::{check_k, ImageParams, ImageRequest, State};
use crate::auth;
use crate::error::ApiError;
use crate::gallery::Hit;
use crate::metrics::Stage;
use crate::openapi::{ImageErrors, ImagesForm, ImagesJson, RawImage};
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/search").route(auth::read(web::post().to(search))));
}

#[derive(Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Neighbours per query, 1 to `limits.max_k`.
    #[serde(default = "default_k")]
    #[schema(default = 10, minimum = 1)]
    #[param(default = 10, minimum = 1)]
    k: usize,
    /// Only neighbours of this breed.
    breed: Option<String>,
    /// Query vectors instead of images, each of the model's width (JSON bodies only); each
    /// is l2-normalised before searching.
    #[param(ignore)]
    vectors: Option<Vec<Vec<f32>>>,
}

/// The JSON body: the parameters and `images`.
pub type SearchJson = ImagesJson<SearchParams>;

/// Images, or vectors instead.
impl ImageParams for SearchParams {
    const REQUIRES_IMAGES: bool = false;
}

fn default_k() -> usize {
    10
}

#[derive(Serialize, ToSchema)]
pub struct Neighbours {
    /// Nearest first.
    neighbors: Vec<Hit>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchResponse {
    model: String,
    /// One per query, in the order sent.
    results: Vec<Neighbours>,
}

/// Nearest gallery images
///
/// Send `images`, or JSON `vectors` instead. `k` (default 10), optional `breed` filter.
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "gallery",
    params(SearchParams),
    request_body(content(
        (SearchJson = "application/json"),
        (ImagesForm = "multipart/form-data"),
        (RawImage = "image/jpeg"),
        (RawImage = "image/png"),
    )),
    responses((status = 200, body = SearchResponse), ImageErrors),
    security(("bearer" = ["read"])),
)]
pub async fn search(state: State, r: ImageRequest<SearchParams>) -> Result<HttpResponse, ApiError> {
    let ImageRequest {
        images,
        params: p,
        ticket,
        deadline,
    } = r;
    deadline
        .run(async {
            let k = check_k("k", p.k, &state)?;
            let dim = state.batcher.dim();
            let limits = &state.cfg.limits;
            let queries: Vec<f32> = match (p.vectors, images.is_empty()) {
                (Some(_), false) => {
                    return Err(ApiError::Unprocessable(
                        "send either `images` or `vectors`, not both".into(),
                    ))
                }
                (Some(vectors), true) => {
                    drop(ticket);
                    query_vectors(vectors, dim, limits.max_images)?
                }
                (None, true) => return Err(crate::input::no_images()),
                (None, false) => state.embed(images, ticket).await?,
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
            Ok(HttpResponse::Ok().json(SearchResponse {
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
