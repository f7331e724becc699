//! `POST /v1/classify`: images → ranked breeds from the bundle's linear probe.

use super::{check_k, ImageParams, ImageRequest, State};
use crate::auth;
use crate::error::ApiError;
use crate::metrics::Stage;
use crate::openapi::{ImageErrors, ImagesForm, ImagesJson, RawImage};
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/classify").route(auth::read(web::post().to(classify))));
}

#[derive(Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClassifyParams {
    /// Breeds per image, 1 to `limits.max_k`.
    #[serde(default = "default_top_k")]
    #[schema(default = 5, minimum = 1)]
    #[param(default = 5, minimum = 1)]
    top_k: usize,
}

/// The JSON body: the parameters and `images`.
pub type ClassifyJson = ImagesJson<ClassifyParams>;

impl ImageParams for ClassifyParams {}

fn default_top_k() -> usize {
    5
}

#[derive(Serialize, ToSchema)]
pub struct Prediction {
    breed: String,
    probability: f32,
}

#[derive(Serialize, ToSchema)]
pub struct Predictions {
    /// Most probable first.
    predictions: Vec<Prediction>,
}

#[derive(Serialize, ToSchema)]
pub struct ClassifyResponse {
    model: String,
    /// One per image, in the order sent.
    results: Vec<Predictions>,
}

/// Classify breeds
///
/// Ranked breeds with probabilities from the linear probe.
#[utoipa::path(
    post,
    path = "/v1/classify",
    tag = "images",
    params(ClassifyParams),
    request_body(content(
        (ClassifyJson = "application/json"),
        (ImagesForm = "multipart/form-data"),
        (RawImage = "image/jpeg"),
        (RawImage = "image/png"),
    )),
    responses((status = 200, body = ClassifyResponse), ImageErrors),
    security(("bearer" = ["read"])),
)]
pub async fn classify(
    state: State,
    r: ImageRequest<ClassifyParams>,
) -> Result<HttpResponse, ApiError> {
    let ImageRequest {
        images,
        params,
        ticket,
        deadline,
    } = r;
    deadline
        .run(async {
            let top_k = check_k("top_k", params.top_k, &state)?.min(state.breeds.len());
            let dim = state.batcher.dim();
            let flat = state.embed(images, ticket).await?;
            let t = Instant::now();
            let results = flat
                .chunks(dim)
                .map(|e| -> Result<Predictions, ApiError> {
                    let ranked = state.probe.top_k(e, top_k)?;
                    Ok(Predictions {
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
            Ok(HttpResponse::Ok().json(ClassifyResponse {
                model: state.model_id.clone(),
                results,
            }))
        })
        .await
}
