//! `POST /v1/gallery` (add or replace entries), `DELETE /v1/gallery/{id}`,
//! `GET /v1/gallery` (counts). Every change is written to disk before the answer.

use super::{Deadline, ImageParams, ImageRequest, State};
use crate::auth;
use crate::error::ApiError;
use crate::gallery::{Counts, Item};
use crate::input::strings;
use crate::openapi::{GalleryAddErrors, GalleryReadErrors, GalleryRemoveErrors};
use crate::openapi::{ImagesForm, ImagesJson, RawImage};
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/gallery")
            .route(auth::admin(web::post().to(add)))
            .route(auth::read(web::get().to(counts))),
    )
    // Ids may contain slashes (dataset paths such as `n02085620-Chihuahua/n02085620_10074`).
    .service(web::resource("/v1/gallery/{id:.+}").route(auth::admin(web::delete().to(remove))));
}

/// Longest id accepted.
const MAX_ID: usize = 256;

/// Lists are one value per image; a single value may be given bare.
#[derive(Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GalleryAddParams {
    /// One id per image; an existing id is replaced. Also `id`.
    #[serde(alias = "id", deserialize_with = "strings")]
    #[param(required = false)]
    ids: Vec<String>,
    /// One breed per image, or none. Also `breed`, `label`, `labels`.
    #[serde(
        default,
        alias = "breed",
        alias = "label",
        alias = "labels",
        deserialize_with = "strings"
    )]
    breeds: Vec<String>,
    /// One source (a path or URL, for the caller) per image, or none. Also `source`.
    #[serde(default, alias = "source", deserialize_with = "strings")]
    sources: Vec<String>,
    /// One object for all images, or an array with one per image (JSON bodies only).
    #[serde(default)]
    #[param(ignore)]
    metadata: Value,
}

/// The JSON body: the parameters and `images`.
pub type GalleryAddJson = ImagesJson<GalleryAddParams>;

impl ImageParams for GalleryAddParams {}

#[derive(Serialize, ToSchema)]
pub struct Added {
    added: usize,
    ids: Vec<String>,
    /// Entries in the gallery after the change.
    total: usize,
}

/// Add images to the gallery
///
/// One `ids` entry per image (an existing id is replaced); optional `breeds`, `sources`,
/// `metadata` (an object for all, or an array). Durable before the answer.
#[utoipa::path(
    post,
    path = "/v1/gallery",
    tag = "gallery",
    params(GalleryAddParams),
    request_body(content(
        (GalleryAddJson = "application/json"),
        (ImagesForm = "multipart/form-data"),
        (RawImage = "image/jpeg"),
        (RawImage = "image/png"),
    )),
    responses((status = 201, body = Added), GalleryAddErrors),
    security(("bearer" = ["admin"])),
)]
pub async fn add(
    state: State,
    r: ImageRequest<GalleryAddParams>,
) -> Result<HttpResponse, ApiError> {
    let ImageRequest {
        images,
        params,
        ticket,
        deadline,
    } = r;
    deadline
        .run(async {
            let items = items(params, images.len())?;
            let vectors = state.embed(images, ticket).await?;
            let dim = state.batcher.dim();
            let st = state.clone();
            let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
            let entries = items
                .into_iter()
                .zip(vectors.chunks(dim).map(<[f32]>::to_vec))
                .collect();
            let total = web::block(move || st.gallery.upsert(entries)).await??;
            Ok(HttpResponse::Created().json(Added {
                added: ids.len(),
                ids,
                total,
            }))
        })
        .await
}

/// Pairs the parameters with `n` images, checking that the lists line up.
fn items(p: GalleryAddParams, n: usize) -> Result<Vec<Item>, ApiError> {
    let list = |name: &str, len: usize| {
        if len != 0 && len != n {
            Err(ApiError::Unprocessable(format!(
                "{len} {name} for {n} images"
            )))
        } else {
            Ok(())
        }
    };
    if p.ids.len() != n {
        return Err(ApiError::Unprocessable(format!(
            "{} ids for {n} images: give one id per image",
            p.ids.len()
        )));
    }
    list("breeds", p.breeds.len())?;
    list("sources", p.sources.len())?;
    let metadata: Vec<Value> = match p.metadata {
        Value::Array(per_image) if per_image.len() == n => per_image,
        Value::Array(v) => {
            return Err(ApiError::Unprocessable(format!(
                "{} metadata entries for {n} images",
                v.len()
            )))
        }
        Value::Null => vec![Value::Null; n],
        Value::Object(o) => vec![Value::Object(o); n],
        _ => {
            return Err(ApiError::Unprocessable(
                "`metadata` must be an object or an array of objects".into(),
            ))
        }
    };
    let mut seen = std::collections::HashSet::new();
    for id in &p.ids {
        if id.trim().is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
            return Err(ApiError::Unprocessable(format!(
                "invalid id {id:?}: ids are 1 to {MAX_ID} printable characters"
            )));
        }
        if !seen.insert(id) {
            return Err(ApiError::Unprocessable(format!(
                "id {id:?} appears twice in one request"
            )));
        }
    }
    Ok(p.ids
        .into_iter()
        .enumerate()
        .zip(metadata)
        .map(|((i, id), metadata)| Item {
            id,
            breed: p.breeds.get(i).cloned(),
            source: p.sources.get(i).cloned(),
            metadata,
        })
        .collect())
}

#[derive(Serialize, ToSchema)]
pub struct Removed {
    deleted: String,
    /// Entries in the gallery after the change.
    total: usize,
}

/// Remove a gallery entry
#[utoipa::path(
    delete,
    path = "/v1/gallery/{id}",
    tag = "gallery",
    params(("id" = String, Path, description = "the entry's id; it may contain slashes")),
    responses((status = 200, body = Removed), GalleryRemoveErrors),
    security(("bearer" = ["admin"])),
)]
pub async fn remove(state: State, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let st = state.clone();
    Deadline::start(&state)
        .run(async move {
            let (id, total) =
                web::block(move || st.gallery.remove(&id).map(|total| (id, total))).await??;
            let Some(total) = total else {
                return Err(ApiError::NotFound(format!(
                    "no gallery entry with id {id:?}"
                )));
            };
            Ok(HttpResponse::Ok().json(Removed { deleted: id, total }))
        })
        .await
}

/// Gallery counts
///
/// Entries, their width, and how many per breed (`""` for entries without one). Read on
/// the blocking pool: the embedded gallery's lock may be held by a change, the database
/// is a network away.
#[utoipa::path(
    get,
    path = "/v1/gallery",
    tag = "gallery",
    responses((status = 200, body = Counts), GalleryReadErrors),
    security(("bearer" = ["read"])),
)]
pub async fn counts(state: State) -> Result<HttpResponse, ApiError> {
    let counts = web::block(move || state.gallery.counts()).await??;
    Ok(HttpResponse::Ok().json(counts))
}
