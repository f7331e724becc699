//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and
//! the types they read and return (`ToSchema`), so that it cannot drift from the code.
//! `GET /openapi.json` serves it; the page renders its route table from it; the
//! end-to-end tests check every JSON answer they receive against it.
//!
//! Error answers share one schema (`Error`, from [`ErrorBody`]) and one table of what each
//! status means ([`ERRORS`]); each route lists the statuses it can give.

use crate::error::ErrorBody;
use crate::routes::{classify, embed, embeddings, gallery, ops, search};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::OnceLock;
use utoipa::openapi::schema::{OneOfBuilder, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

const DESCRIPTION: &str = "Image embeddings, nearest-neighbour search and breed \
classification for dog photos, from a SimSiam encoder run by ONNX Runtime. Images come as \
multipart files (field `images`; parameters as text fields), a raw body with an image \
Content-Type (parameters in the query string), or JSON with base64 strings. Errors are \
`{\"error\": {\"code\", \"message\", \"type\", \"param\"}}`. Every answer carries timing \
headers in milliseconds: x-preprocess-time (decode and resize), x-queue-time (waiting for a \
model run), x-inference-time (the model runs that served the request) and x-total-time. \
Routes with a security requirement need `Authorization: Bearer <key>` when keys are \
configured: scope `read` takes the read key or the admin key, scope `admin` only the admin \
key.";

#[derive(OpenApi)]
#[openapi(
    info(title = "simsiam embedding server", version = "1.0.0", description = DESCRIPTION),
    paths(
        embed::embed,
        embeddings::embeddings,
        search::search,
        classify::classify,
        gallery::add,
        gallery::counts,
        gallery::remove,
        ops::models,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
        ops::page,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerKeys),
)]
pub struct ApiDoc;

/// The document as JSON, generated once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| {
            format!("{{\"error\": \"cannot write the OpenAPI document: {e}\"}}")
        })
    })
}

struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "the read key (scope `read`) or the admin key (both scopes)",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// A JSON image request: the route's parameters `P`, and `images` beside them. Its schema
/// is `P`'s with that one property added (a flattened struct would inherit `P`'s
/// `additionalProperties: false`, from `deny_unknown_fields`, and refuse `images`).
pub struct ImagesJson<P>(PhantomData<P>);

impl<P: ToSchema> PartialSchema for ImagesJson<P> {
    fn schema() -> RefOr<Schema> {
        let mut schema = P::schema();
        if let RefOr::T(Schema::Object(o)) = &mut schema {
            let mut images = <Vec<String> as PartialSchema>::schema();
            if let RefOr::T(Schema::Array(a)) = &mut images {
                a.description = Some(
                    "base64, `data:image/...;base64,` URIs, or (when `inputs.fetch_urls` is \
                     on) http(s) URLs. Also `image` or `file`."
                        .into(),
                );
            }
            o.properties.insert("images".into(), images);
            o.required.push("images".into());
        }
        schema
    }
}

impl<P: ToSchema> ToSchema for ImagesJson<P> {
    fn name() -> Cow<'static, str> {
        format!("ImagesJson_{}", P::name()).into()
    }

    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        P::schemas(out);
    }
}

/// One image (base64 or a data URI, or a URL when fetching is on), or a list of them.
pub fn one_or_more_images() -> Schema {
    let one_of = OneOfBuilder::new()
        .item(<String as PartialSchema>::schema())
        .item(<Vec<String> as PartialSchema>::schema())
        .description(Some(
            "images: one string or a list, each a `data:image/...;base64,` URI or bare base64 \
             (or an http(s) URL, when `inputs.fetch_urls` is on)",
        ))
        .build();
    Schema::OneOf(one_of)
}

/// A multipart image request: files named `images` (or `image`, `file`), and the
/// parameters as text fields.
#[derive(ToSchema)]
pub struct ImagesForm {
    #[schema(value_type = Vec<String>, format = Binary)]
    pub images: Vec<Vec<u8>>,
}

/// One image as the whole body, its parameters in the query string.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawImage(pub Vec<u8>);

/// What each error status means; every error answer has the `Error` schema.
pub const ERRORS: [(u16, &str); 11] = [
    (400, "bad image, JSON, multipart or base64, or a refused image URL"),
    (401, "missing or wrong API key"),
    (403, "the read key on a route that needs the admin key"),
    (404, "no such entry (on /v1/embeddings: no such model, code `model_not_found`)"),
    (413, "body, image count or image pixels over the limit"),
    (415, "unsupported Content-Type"),
    (422, "invalid parameters"),
    (500, "internal error"),
    (503, "overloaded, shutting down, not ready, or the database unreachable: retry after `Retry-After`"),
    (504, "the request took longer than `limits.request_timeout_s`"),
    (507, "no space left for the gallery: nothing was written"),
];

/// The responses of `statuses`, from [`ERRORS`].
fn error_responses(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|&status| {
            let description = ERRORS
                .iter()
                .find(|(s, _)| *s == status)
                .map_or("error", |(_, d)| d);
            let content = ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("Error")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// The error statuses of a group of routes, as a type `#[utoipa::path]` can list.
macro_rules! errors {
    ($($(#[$doc:meta])* $name:ident: [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                error_responses(&[$($status),*])
            }
        }
    )*};
}

errors! {
    /// `/v1/embed`, `/v1/classify`, `/v1/search`.
    ImageErrors: [400, 401, 413, 415, 422, 500, 503, 504];
    /// `/v1/embeddings`: an image route that also names its model.
    EmbeddingsErrors: [400, 401, 404, 413, 415, 422, 500, 503, 504];
    /// `POST /v1/gallery`: an image route that writes.
    GalleryAddErrors: [400, 401, 403, 413, 415, 422, 500, 503, 504, 507];
    GalleryRemoveErrors: [401, 403, 404, 500, 503, 504, 507];
    GalleryReadErrors: [401, 500, 503];
    ModelsErrors: [401, 500];
    MetricsErrors: [401, 403];
    ReadyErrors: [503];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document points at something it defines.
    #[test]
    fn every_reference_of_the_openapi_document_resolves() {
        let doc: serde_json::Value = serde_json::from_str(json()).expect("valid JSON");
        let mut refs = Vec::new();
        let mut todo = vec![&doc];
        while let Some(v) = todo.pop() {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    todo.extend(m.values());
                }
                serde_json::Value::Array(a) => todo.extend(a),
                _ => {}
            }
        }
        assert!(refs.len() > 20, "{refs:?}");
        for r in refs {
            let pointer = r.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    /// Every status a route lists has its meaning in the one table.
    #[test]
    fn every_documented_error_status_is_in_the_table() {
        let doc: serde_json::Value = serde_json::from_str(json()).expect("valid JSON");
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                for status in op["responses"].as_object().expect("responses").keys() {
                    let code: u16 = status.parse().expect("a numeric status");
                    assert!(
                        code < 400 || ERRORS.iter().any(|(s, _)| *s == code),
                        "{method} {path}: {status} is not in ERRORS"
                    );
                }
            }
        }
    }
}
