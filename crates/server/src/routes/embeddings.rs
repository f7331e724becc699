//! `POST /v1/embeddings`: OpenAI's embeddings API, for images.
//!
//! So that the official `openai` clients work unchanged: `model` is this server's model
//! (its name, its id `name@version`, or `default`); `input` is one string or a list, each a
//! `data:image/...;base64,` URI or bare base64; `encoding_format` is `float` or `base64`
//! (little-endian f32 bytes, base64-encoded; the Python client asks for it when the caller
//! does not choose). The answer has OpenAI's shape. Requests go through the same batching,
//! limits and metrics as `/v1/embed`, and errors carry OpenAI's `type` and `param`.

use super::{ImageParams, ImageRequest, State};
use crate::auth;
use crate::error::ApiError;
use crate::input;
use crate::openapi::EmbeddingsErrors;
use actix_web::{web, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/embeddings").route(auth::read(web::post().to(embeddings))));
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// The served model's name, its id `name@version`, or `default`.
    model: String,
    #[schema(schema_with = crate::openapi::one_or_more_images)]
    input: Value,
    /// `float` (the default) or `base64`: the little-endian f32 bytes, base64-encoded.
    #[serde(default)]
    encoding_format: Option<String>,
    /// Accepted, as OpenAI accepts it, and not used.
    #[serde(default, rename = "user")]
    _user: Option<String>,
    /// Only the model's own width is possible.
    #[serde(default)]
    dimensions: Option<usize>,
}

/// The images are in `input`.
impl ImageParams for EmbeddingsRequest {
    const REQUIRES_IMAGES: bool = false;
}

#[derive(Serialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// A vector as `encoding_format` asked.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    /// The little-endian f32 bytes, base64-encoded.
    Base64(String),
}

/// Images have no tokens: both counts are 0.
#[derive(Serialize, ToSchema)]
pub struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Usage,
}

/// How the vectors are written.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Float,
    Base64,
}

/// Embed images, OpenAI-compatible
///
/// OpenAI's embeddings API for images: the official `openai` clients work unchanged.
/// `input` holds images as data URIs or base64; `encoding_format` `base64` gives the
/// little-endian f32 bytes, base64-encoded. Same batching and limits as /v1/embed.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "images",
    request_body = EmbeddingsRequest,
    responses((status = 200, body = EmbeddingsResponse), EmbeddingsErrors),
    security(("bearer" = ["read"])),
)]
pub async fn embeddings(
    state: State,
    r: ImageRequest<EmbeddingsRequest>,
) -> Result<HttpResponse, ApiError> {
    let ImageRequest {
        params: request,
        ticket,
        deadline,
        ..
    } = r;
    deadline
        .run(async {
            check_model(&request.model, &state)?;
            let format = format(request.encoding_format.as_deref())?;
            let dim = state.batcher.dim();
            if request.dimensions.is_some_and(|d| d != dim) {
                return Err(ApiError::InvalidParam {
                    param: "dimensions",
                    message: format!("this model's embeddings have {dim} dimensions"),
                });
            }
            let mut images = Vec::new();
            for (index, s) in strings(request.input, state.cfg.limits.max_images)?
                .into_iter()
                .enumerate()
            {
                images.push(if crate::fetch::is_url(&s) {
                    input::fetch(state.fetcher.as_ref(), s, index).await?
                } else {
                    input::decode_base64(&s, index)?
                });
            }
            let flat = state.embed(images, ticket).await?;
            let data = flat
                .chunks(dim)
                .enumerate()
                .map(|(index, v)| Embedding {
                    object: "embedding",
                    index,
                    embedding: encode(v, format),
                })
                .collect();
            Ok(HttpResponse::Ok().json(EmbeddingsResponse {
                object: "list",
                data,
                model: state.model_id.clone(),
                usage: Usage {
                    prompt_tokens: 0,
                    total_tokens: 0,
                },
            }))
        })
        .await
}

fn check_model(model: &str, state: &State) -> Result<(), ApiError> {
    if model == "default" || model == state.manifest.name || model == state.model_id {
        Ok(())
    } else {
        Err(ApiError::ModelNotFound(model.to_string()))
    }
}

fn format(name: Option<&str>) -> Result<Format, ApiError> {
    match name {
        None | Some("float") => Ok(Format::Float),
        Some("base64") => Ok(Format::Base64),
        Some(other) => Err(ApiError::InvalidParam {
            param: "encoding_format",
            message: format!("{other:?} is not one of \"float\", \"base64\""),
        }),
    }
}

/// The images of `input`: one string or a list of strings, each base64, a data URI or
/// (when fetching is on) a URL.
fn strings(input: Value, max: usize) -> Result<Vec<String>, ApiError> {
    let items = match input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(not_images()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(not_images()),
    };
    if items.is_empty() {
        return Err(ApiError::InvalidParam {
            param: "input",
            message: "no images".into(),
        });
    }
    if items.len() > max {
        return Err(ApiError::TooLarge(format!(
            "{} images in one request; the limit is {max}",
            items.len()
        )));
    }
    Ok(items)
}

fn not_images() -> ApiError {
    ApiError::InvalidParam {
        param: "input",
        message: "must be a string or a list of strings: images as data URIs or base64 (this server embeds images, not text)".into(),
    }
}

fn encode(v: &[f32], format: Format) -> Vector {
    match format {
        Format::Float => Vector::Float(v.to_vec()),
        Format::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_little_endian_floats() {
        let v = [1.0f32, -0.5];
        let Vector::Base64(s) = encode(&v, Format::Base64) else {
            panic!("a string")
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64");
        assert_eq!(bytes, [0, 0, 128, 63, 0, 0, 0, 191]);
        assert_eq!(encode(&v, Format::Float), Vector::Float(vec![1.0, -0.5]));
    }

    #[test]
    fn input_is_one_string_or_a_list_of_strings() {
        assert_eq!(strings(Value::from("aGk="), 4).expect("one").len(), 1);
        let two = serde_json::json!(["data:image/png;base64,aGk=", "aGk"]);
        assert_eq!(strings(two, 4).expect("two").len(), 2);
        for bad in [
            serde_json::json!([1]),
            serde_json::json!({}),
            serde_json::json!([]),
        ] {
            let e = strings(bad, 4).unwrap_err();
            assert_eq!(e.param(), Some("input"), "{e}");
        }
        assert!(matches!(
            strings(Value::from(vec!["aGk="; 5]), 4),
            Err(ApiError::TooLarge(_))
        ));
        assert!(format(Some("float16")).is_err());
    }
}
