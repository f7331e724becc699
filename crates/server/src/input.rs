//! Reading a request: images and parameters from multipart forms, JSON bodies with
//! base64 images, or a raw image body with parameters in the query string.
//!
//! Every route gets the same [`Input`]: the image bytes in order, and a JSON object of
//! parameters that the route deserialises into its own typed struct. Multipart text fields
//! and query values are parsed as JSON scalars when they look like one (`k=5` is a
//! number), and a name given several times becomes an array.

use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::fetch::Fetcher;
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use base64::Engine;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Field names that carry images in multipart forms and JSON bodies.
const IMAGE_FIELDS: [&str; 3] = ["images", "image", "file"];

#[derive(Debug, Default)]
pub struct Input {
    pub images: Vec<Vec<u8>>,
    pub params: Map<String, Value>,
    /// Images given as URLs: (position in `images`, URL), fetched by [`read`].
    urls: Vec<(usize, String)>,
}

impl Input {
    /// The parameters as a route's typed struct; a wrong type or unknown name is a 422.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_value(Value::Object(self.params.clone()))
            .map_err(|e| ApiError::Unprocessable(format!("invalid parameters: {e}")))
    }

    /// Refuses requests without images or with more than the configured maximum.
    pub fn require_images(&self, limits: &LimitsConfig) -> Result<(), ApiError> {
        if self.images.is_empty() {
            return Err(no_images());
        }
        self.check_count(limits)
    }

    pub fn check_count(&self, limits: &LimitsConfig) -> Result<(), ApiError> {
        if self.images.len() > limits.max_images {
            return Err(ApiError::TooLarge(format!(
                "{} images in one request; the limit is {}",
                self.images.len(),
                limits.max_images
            )));
        }
        Ok(())
    }
}

/// A request that needed images and had none.
pub fn no_images() -> ApiError {
    ApiError::Unprocessable(
        "no images: send multipart files named `images`, a raw image body, or JSON {\"images\": [\"<base64>\"]}".into(),
    )
}

/// Reads the whole request (bounded by `limits.max_body_bytes`); images given as URLs are
/// fetched with `fetcher`, and refused when there is none (fetching is off).
pub async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    limits: &LimitsConfig,
    fetcher: Option<&Arc<Fetcher>>,
) -> Result<Input, ApiError> {
    let max = limits.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > max {
            return Err(too_big(max));
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let mut input = match essence.as_str() {
        "multipart/form-data" => read_multipart(req, payload, max).await?,
        "application/json" => read_json(&body(payload, max).await?)?,
        "" if req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v == "0") =>
        {
            Input::default()
        }
        t if t.starts_with("image/") || t == "application/octet-stream" => {
            let bytes = body(payload, max).await?;
            let images = if bytes.is_empty() {
                vec![]
            } else {
                vec![bytes]
            };
            Input {
                images,
                ..Input::default()
            }
        }
        _ => return Err(ApiError::UnsupportedMediaType(content_type)),
    };
    // Query-string parameters fill in whatever the body did not set.
    for (k, v) in query_pairs(req.query_string())? {
        input.params.entry(k).or_insert(v);
    }
    input.check_count(limits)?;
    for (index, url) in std::mem::take(&mut input.urls) {
        input.images[index] = fetch(fetcher, url, index).await?;
    }
    Ok(input)
}

/// The image at `url`, fetched on the blocking pool.
pub async fn fetch(
    fetcher: Option<&Arc<Fetcher>>,
    url: String,
    index: usize,
) -> Result<Vec<u8>, ApiError> {
    let Some(fetcher) = fetcher.cloned() else {
        return Err(ApiError::BadRequest(format!(
            "image {index}: {url} is a URL, and fetching images is off (inputs.fetch_urls)"
        )));
    };
    web::block(move || fetcher.fetch(&url, index)).await?
}

fn too_big(max: usize) -> ApiError {
    ApiError::TooLarge(format!("request body exceeds {max} bytes"))
}

async fn body(mut payload: web::Payload, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if out.len() + chunk.len() > max {
            return Err(too_big(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn read_json(bytes: &[u8]) -> Result<Input, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let Value::Object(mut params) = value else {
        return Err(ApiError::BadRequest(
            "the JSON body must be an object".into(),
        ));
    };
    let mut input = Input::default();
    for name in IMAGE_FIELDS {
        let strings = match params.remove(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(ApiError::BadRequest(format!(
                        "`{name}` must hold base64 strings or URLs"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::BadRequest(format!(
                    "`{name}` must be a base64 string, a URL or an array of them"
                )))
            }
        };
        for s in strings {
            input.push_string(s)?;
        }
    }
    input.params = params;
    Ok(input)
}

impl Input {
    /// An image given as text: a URL (fetched later) or base64.
    fn push_string(&mut self, s: String) -> Result<(), ApiError> {
        let index = self.images.len();
        if crate::fetch::is_url(&s) {
            self.urls.push((index, s.trim().to_string()));
            self.images.push(Vec::new());
        } else {
            self.images.push(decode_base64(&s, index)?);
        }
        Ok(())
    }
}

/// Standard base64, with or without padding, optionally as a `data:` URL.
pub fn decode_base64(s: &str, index: usize) -> Result<Vec<u8>, ApiError> {
    let data = match s.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => s,
    };
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(data.trim_end_matches('='))
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(data.trim_end_matches('='))
        })
        .map_err(|e| ApiError::BadRequest(format!("image {index}: invalid base64: {e}")))
}

async fn read_multipart(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<Input, ApiError> {
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut input = Input::default();
    let mut total = 0usize;
    while let Some(field) = form.next().await {
        let mut field =
            field.map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .is_some();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
            total += chunk.len();
            if total > max {
                return Err(too_big(max));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !is_file
            && IMAGE_FIELDS.contains(&name.as_str())
            && crate::fetch::is_url(&String::from_utf8_lossy(&bytes))
        {
            input.push_string(String::from_utf8_lossy(&bytes).into_owned())?;
        } else if is_file || IMAGE_FIELDS.contains(&name.as_str()) {
            input.images.push(bytes);
        } else {
            let text = String::from_utf8(bytes).map_err(|_| {
                ApiError::BadRequest(format!("form field `{name}` is not UTF-8 text"))
            })?;
            push_param(&mut input.params, name, scalar(&text));
        }
    }
    Ok(input)
}

fn query_pairs(query: &str) -> Result<Map<String, Value>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
    let mut out = Map::new();
    for (k, v) in pairs {
        push_param(&mut out, k, scalar(&v));
    }
    Ok(out)
}

/// Adds a parameter; a repeated name turns into an array of its values.
fn push_param(map: &mut Map<String, Value>, name: String, value: Value) {
    match map.get_mut(&name) {
        None => {
            map.insert(name, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

/// `5` → number, `true` → bool, `{"a":1}` → object; anything else stays a string.
fn scalar(text: &str) -> Value {
    let t = text.trim();
    let looks_json = t.parse::<f64>().is_ok()
        || matches!(t, "true" | "false" | "null")
        || t.starts_with('{')
        || t.starts_with('[');
    if looks_json {
        if let Ok(v) = serde_json::from_str(t) {
            return v;
        }
    }
    Value::String(text.to_string())
}

/// Text lists such as ids and breeds: `"x"` or `["x", "y"]`, numbers and booleans taken
/// as their text (a form field `ids=123` arrives as a number).
pub fn strings<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let values = match Value::deserialize(d)? {
        Value::Array(items) => items,
        one => vec![one],
    };
    values
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(serde::de::Error::custom(format!(
                "expected text, found {other}"
            ))),
        })
        .collect()
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::FromRequest;

    #[test]
    fn json_bodies_split_images_from_parameters() {
        let png = b"\x89PNG fake";
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        let body = format!(r#"{{"images": ["{b64}", "data:image/png;base64,{b64}"], "k": 3}}"#);
        let input = read_json(body.as_bytes()).expect("parse");
        assert_eq!(input.images, vec![png.to_vec(), png.to_vec()]);
        assert_eq!(input.params["k"], 3);
        assert!(matches!(read_json(b"[1]"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            read_json(b"{\"images\": [\"@@@\"]}"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            read_json(b"{\"images\": [1]}"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn query_values_become_typed_and_repeats_become_arrays() {
        let q = query_pairs("top_k=5&id=a&id=b&breed=Pug&flag=true").expect("query");
        assert_eq!(q["top_k"], 5);
        assert_eq!(q["id"], serde_json::json!(["a", "b"]));
        assert_eq!(q["breed"], "Pug");
        assert_eq!(q["flag"], true);
        // Numbers-looking ids still parse as numbers; routes that want strings say so.
        assert_eq!(scalar("007"), Value::String("007".into()));
    }

    /// A malformed multipart body that fuzzing found (`fuzz/regressions/request/`): with
    /// actix-multipart 0.7 the parser waited forever for bytes after the body's end, so the
    /// request never got an answer. It must be refused as a bad request.
    #[actix_web::test]
    async fn a_multipart_body_cut_inside_a_part_is_refused_not_awaited() {
        let body = b"--X\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n\r\nxyz\rX\n\r--\nContent-Disposition<{\"image=\"], \"k\"e=\"k\"\rjpg\"\r\n\r\nX--\r\n";
        let (req, mut payload) = actix_web::test::TestRequest::post()
            .uri("/v1/embed?top_k=2")
            .insert_header(("content-type", "multipart/form-data; boundary=X"))
            .set_payload(body.to_vec())
            .to_http_parts();
        let payload = web::Payload::from_request(&req, &mut payload)
            .await
            .expect("payload");
        let limits = LimitsConfig::default();
        let read = read(&req, payload, &limits, None);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the multipart reader must not wait past the body's end");
        match answer {
            Err(ApiError::BadRequest(msg)) => assert!(msg.contains("multipart"), "{msg}"),
            Err(other) => panic!("expected a bad request, got {other:?}"),
            Ok(input) => panic!("expected a bad request, got {} images", input.images.len()),
        }
    }

    #[test]
    fn text_lists_accept_one_or_many_values() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "strings")]
            ids: Vec<String>,
        }
        let a: S = serde_json::from_str(r#"{"ids": "x"}"#).expect("one");
        let n: S = serde_json::from_str(r#"{"ids": [123, "b", true]}"#).expect("mixed");
        assert_eq!(n.ids, vec!["123", "b", "true"]);
        assert!(serde_json::from_str::<S>(r#"{"ids": [{}]}"#).is_err());
        let b: S = serde_json::from_str(r#"{"ids": ["x", "y"]}"#).expect("many");
        assert_eq!(a.ids, vec!["x"]);
        assert_eq!(b.ids, vec!["x", "y"]);
    }
}
