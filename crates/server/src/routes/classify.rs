//! `POST /v1/classify`: images → ranked breeds from the bundle's linear probe.

use super::{check_k, within_timeout, State};
use crate::error::ApiError;
use crate::input;
use crate::metrics::Stage;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/classify").route(web::post().to(classify)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    5
}

#[derive(Serialize)]
struct Prediction {
    breed: String,
    probability: f32,
}

#[derive(Serialize)]
struct Result_ {
    predictions: Vec<Prediction>,
}

#[derive(Serialize)]
struct Response {
    model: String,
    results: Vec<Result_>,
}

async fn classify(
    state: State,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    within_timeout(&state, async {
        let ticket = state.ticket();
        let input = input::read(&req, body, &state.cfg.limits, state.fetcher.as_ref()).await?;
        input.require_images(&state.cfg.limits)?;
        let p: Params = input.params()?;
        let top_k = check_k("top_k", p.top_k, &state)?.min(state.breeds.len());
        let dim = state.batcher.dim();
        let flat = state.embed(input.images, ticket).await?;
        let t = Instant::now();
        let results = flat
            .chunks(dim)
            .map(|e| -> Result<Result_, ApiError> {
                let ranked = state.probe.top_k(e, top_k)?;
                Ok(Result_ {
                    predictions: ranked
                        .into_iter()
                        .map(|(class, probability)| Prediction {
                            breed: state.breeds[class].clone(),
                            probability,
                        })
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        state.metrics.record_stage(Stage::Classify, t.elapsed());
        Ok(HttpResponse::Ok().json(Response {
            model: state.model_id.clone(),
            results,
        }))
    })
    .await
}
