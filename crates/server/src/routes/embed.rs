//! `POST /v1/embed`: images → unit-length embeddings.

use super::{ImageParams, ImageRequest, State};
use crate::auth;
use crate::error::ApiError;
use crate::openapi::{ImageErrors, ImagesForm, ImagesJson, RawImage};
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/embed").route(auth::read(web::post().to(embed))));
}

/// `/v1/embed` takes no parameters besides its images.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {}

/// The JSON body: the parameters and `images`.
pub type EmbedJson = ImagesJson<EmbedParams>;

impl ImageParams for EmbedParams {}

#[derive(Serialize, ToSchema)]
pub struct EmbedResponse {
    /// The model's id, `name@version`.
    model: String,
    /// The embeddings' width.
    dim: usize,
    /// One l2-normalised embedding per image, in the order sent.
    embeddings: Vec<Vec<f32>>,
}

/// Embed images
///
/// One l2-normalised embedding per image.
#[utoipa::path(
    post,
    path = "/v1/embed",
    tag = "images",
    request_body(content(
        (EmbedJson = "application/json"),
        (ImagesForm = "multipart/form-data"),
        (RawImage = "image/jpeg"),
        (RawImage = "image/png"),
    )),
    responses((status = 200, body = EmbedResponse), ImageErrors),
    security(("bearer" = ["read"])),
)]
pub async fn embed(state: State, r: ImageRequest<EmbedParams>) -> Result<HttpResponse, ApiError> {
    let ImageRequest {
        images,
        ticket,
        deadline,
        ..
    } = r;
    deadline
        .run(async {
            let dim = state.batcher.dim();
            let flat = state.embed(images, ticket).await?;
            Ok(HttpResponse::Ok().json(EmbedResponse {
                model: state.model_id.clone(),
                dim,
                embeddings: flat.chunks(dim).map(<[f32]>::to_vec).collect(),
            }))
        })
        .await
}
