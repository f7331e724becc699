//! `POST /v1/embed`: images → unit-length embeddings.

use super::{within_timeout, State};
use crate::error::ApiError;
use crate::input;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/embed").route(web::post().to(embed)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

#[derive(Serialize)]
struct Response {
    model: String,
    dim: usize,
    embeddings: Vec<Vec<f32>>,
}

async fn embed(
    state: State,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    within_timeout(&state, async {
        let ticket = state.ticket();
        let input = input::read(&req, body, &state.cfg.limits, state.fetcher.as_ref()).await?;
        input.require_images(&state.cfg.limits)?;
        let _: Params = input.params()?;
        let dim = state.batcher.dim();
        let flat = state.embed(input.images, ticket).await?;
        Ok(HttpResponse::Ok().json(Response {
            model: state.model_id.clone(),
            dim,
            embeddings: flat.chunks(dim).map(<[f32]>::to_vec).collect(),
        }))
    })
    .await
}
