//! `POST /v1/gallery` (add or replace entries), `DELETE /v1/gallery/{id}`,
//! `GET /v1/gallery` (counts). Every change is written to disk before the answer.

use super::{within_timeout, State};
use crate::error::ApiError;
use crate::gallery::Item;
use crate::input::{self, strings};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/gallery")
            .route(web::post().to(add))
            .route(web::get().to(counts)),
    )
    // Ids may contain slashes (dataset paths such as `n02085620-Chihuahua/n02085620_10074`).
    .service(web::resource("/v1/gallery/{id:.+}").route(web::delete().to(remove)));
}

/// Longest id accepted.
const MAX_ID: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(alias = "id", deserialize_with = "strings")]
    ids: Vec<String>,
    #[serde(
        default,
        alias = "breed",
        alias = "label",
        alias = "labels",
        deserialize_with = "strings"
    )]
    breeds: Vec<String>,
    #[serde(default, alias = "source", deserialize_with = "strings")]
    sources: Vec<String>,
    /// One object for all images, or an array with one per image.
    #[serde(default)]
    metadata: Value,
}

#[derive(Serialize)]
struct Added {
    added: usize,
    ids: Vec<String>,
    total: usize,
}

async fn add(state: State, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    within_timeout(&state, async {
        let ticket = state.ticket();
        let input = input::read(&req, body, &state.cfg.limits, state.fetcher.as_ref()).await?;
        input.require_images(&state.cfg.limits)?;
        let p: Params = input.params()?;
        let items = items(p, input.images.len())?;
        let vectors = state.embed(input.images, ticket).await?;
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
fn items(p: Params, n: usize) -> Result<Vec<Item>, ApiError> {
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

#[derive(Serialize)]
struct Removed {
    deleted: String,
    total: usize,
}

async fn remove(state: State, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let st = state.clone();
    within_timeout(&state, async move {
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

/// Read on the blocking pool: the embedded gallery's lock may be held by a change, the
/// database is a network away.
async fn counts(state: State) -> Result<HttpResponse, ApiError> {
    let counts = web::block(move || state.gallery.counts()).await??;
    Ok(HttpResponse::Ok().json(counts))
}
