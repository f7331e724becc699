//! Every error a request can meet, and the one table that maps it to an HTTP status.
//!
//! The lower layers speak their own errors: the embedding pipeline
//! [`EmbedError`], the gallery [`GalleryError`]. Each becomes an [`ApiError`] through one
//! `From` below, and [`ApiError`] gets its status in `status_code`. Neither match has a
//! catch-all arm, on purpose: adding a variant does not compile until someone decides
//! what it means for the client. Bodies are always
//! `{"error": {"code": "...", "message": "...", "type": "...", "param": ...}}`: `code` and
//! `message` are this API's, `type` and `param` (the parameter at fault, or null) are the
//! fields OpenAI's clients read, so both kinds of client understand every error.

use crate::gallery::GalleryError;
use crate::pipeline::EmbedError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use simsiam::probe::ProbeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The bytes are not an image we can decode (or the image is corrupt or truncated).
    #[error("image {index}: {message}")]
    BadImage { index: usize, message: String },
    /// Malformed JSON, multipart or query string; bad base64.
    #[error("{0}")]
    BadRequest(String),
    /// An image URL redirected somewhere it may not go, or without a usable `Location`.
    #[error("{0}")]
    BadRedirect(String),
    #[error("missing or wrong API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("this key may only read: gallery changes and metrics need the admin key")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("unsupported content type {0:?}: send multipart/form-data, application/json or a raw image (image/jpeg, image/png)")]
    UnsupportedMediaType(String),
    /// Well-formed but unusable: out-of-range `k`, wrong vector length, no images.
    #[error("{0}")]
    Unprocessable(String),
    /// A parameter with a value that cannot be used, named.
    #[error("`{param}`: {message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    /// `/v1/embeddings` asked for a model this server does not serve.
    #[error(
        "model {0:?} is not served here; GET /v1/models lists the one that is (or say \"default\")"
    )]
    ModelNotFound(String),
    /// The inference queue is full; the client should retry after a moment.
    #[error("the server is at capacity ({queued} images queued); retry shortly")]
    Overloaded { queued: usize },
    #[error("the request took longer than {0} s")]
    Timeout(u64),
    /// Shutting down, the model is not ready, or the database cannot be reached: transient.
    #[error("{0}")]
    Unavailable(String),
    /// The gallery's disk is full: nothing was written. Not transient, so not 503: a
    /// retry fails the same way until an operator frees space.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::BadImage { index, message } => ApiError::BadImage { index, message },
            EmbedError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            EmbedError::Overloaded { queued } => ApiError::Overloaded { queued },
            EmbedError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            EmbedError::Model(_) | EmbedError::WorkerLost(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<GalleryError> for ApiError {
    fn from(e: GalleryError) -> Self {
        match e {
            GalleryError::Dimension { .. } => ApiError::Unprocessable(e.to_string()),
            // The database is down or busy: the client may retry.
            GalleryError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            GalleryError::NoSpace { .. } => ApiError::InsufficientStorage(e.to_string()),
            GalleryError::Corrupt { .. }
            | GalleryError::Io(_)
            | GalleryError::Database(_)
            | GalleryError::LogBroken(_)
            | GalleryError::StoredDimension { .. }
            | GalleryError::StoredModel { .. } => ApiError::Internal(format!("gallery: {e}")),
        }
    }
}

/// The probe was checked against the model at start-up, so a failure here is the server's.
impl From<ProbeError> for ApiError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Dimension { .. }
            | ProbeError::Invalid(_)
            | ProbeError::Io { .. }
            | ProbeError::Parse { .. } => ApiError::Internal(format!("probe: {e}")),
        }
    }
}

/// The blocking pool (gallery and search work) went away mid-request.
impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(format!("blocking pool: {e}"))
    }
}

// Whoever produced it: a handler ([`ApiError`]) or actix itself (a 405, a malformed
// request; see [`ErrorBody::for_status`]).
/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// This API's stable code, e.g. `bad_image`, `overloaded`.
    pub code: String,
    pub message: String,
    /// OpenAI's error class: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault, when there is one.
    pub param: Option<&'static str>,
}

impl ErrorBody {
    /// An error actix answered before any handler ran: its code is the status's name
    /// (`method_not_allowed`).
    pub fn for_status(status: StatusCode) -> Self {
        let message = status.canonical_reason().unwrap_or("error").to_string();
        ErrorBody {
            error: ErrorDetail {
                code: message.to_ascii_lowercase().replace(' ', "_"),
                message,
                kind: class(status.as_u16(), false),
                param: None,
            },
        }
    }
}

/// OpenAI's class of an error, from its status.
fn class(status: u16, model_not_found: bool) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 if !model_not_found => "not_found_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

impl ApiError {
    /// Stable machine-readable code, part of the API.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadImage { .. } => "bad_image",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BadRedirect(_) => "bad_redirect",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::InvalidParam { .. } => "invalid_parameter",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ApiError {
    /// OpenAI's class of the error, from its status.
    pub fn kind(&self) -> &'static str {
        class(
            self.status_code().as_u16(),
            matches!(self, ApiError::ModelNotFound(_)),
        )
    }

    /// The parameter at fault, when the error names one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidParam { param, .. } => Some(*param),
            ApiError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadImage { .. } | ApiError::BadRequest(_) | ApiError::BadRedirect(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) | ApiError::InvalidParam { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Overloaded { .. } | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Overloaded { .. } | ApiError::Unavailable(_)) {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn errors_are_json_with_code_and_message() {
        let res = ApiError::Overloaded { queued: 7 }.error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let body = to_bytes(res.into_body()).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "overloaded");
        assert!(v["error"]["message"].as_str().unwrap().contains("7 images"));
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["param"].is_null());
        let res = ApiError::ModelNotFound("gpt-4".into()).error_response();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let body = to_bytes(res.into_body()).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            (
                &v["error"]["code"],
                &v["error"]["type"],
                &v["error"]["param"]
            ),
            (
                &serde_json::json!("model_not_found"),
                &serde_json::json!("invalid_request_error"),
                &serde_json::json!("model")
            )
        );
    }

    #[test]
    fn each_kind_has_its_status() {
        let cases = [
            (
                ApiError::BadImage {
                    index: 0,
                    message: "x".into(),
                },
                400,
            ),
            (ApiError::BadRequest("x".into()), 400),
            (ApiError::BadRedirect("x".into()), 400),
            (ApiError::Unauthorized, 401),
            (ApiError::Forbidden, 403),
            (ApiError::NotFound("x".into()), 404),
            (ApiError::TooLarge("x".into()), 413),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415),
            (ApiError::Unprocessable("x".into()), 422),
            (
                ApiError::InvalidParam {
                    param: "encoding_format",
                    message: "x".into(),
                },
                422,
            ),
            (ApiError::ModelNotFound("x".into()), 404),
            (ApiError::Overloaded { queued: 1 }, 503),
            (ApiError::Timeout(1), 504),
            (ApiError::InsufficientStorage("x".into()), 507),
            (ApiError::Internal("x".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e:?}");
        }
    }

    #[test]
    fn pipeline_and_gallery_errors_map_to_their_statuses() {
        let image = |index| EmbedError::BadImage {
            index,
            message: "corrupt image: x".into(),
        };
        let cases = [
            (ApiError::from(image(2)), 400, "bad_image"),
            (
                EmbedError::TooLarge {
                    index: 0,
                    message: "image is 9×9".into(),
                }
                .into(),
                413,
                "too_large",
            ),
            (
                EmbedError::Overloaded { queued: 3 }.into(),
                503,
                "overloaded",
            ),
            (EmbedError::ShuttingDown.into(), 503, "unavailable"),
            (EmbedError::Model("x".into()).into(), 500, "internal"),
            (EmbedError::WorkerLost("x".into()).into(), 500, "internal"),
            (
                GalleryError::Dimension {
                    expected: 2,
                    found: 3,
                }
                .into(),
                422,
                "unprocessable",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(
                (e.status_code().as_u16(), e.code()),
                (status, code),
                "{e:?}"
            );
        }
        assert!(ApiError::from(image(2))
            .to_string()
            .starts_with("image 2: "));
    }

    /// ENOSPC and EDQUOT from any file the embedded gallery writes; the database's own
    /// "disk full" is mapped in `gallery::postgres` (tested there) to the same variant.
    #[actix_web::test]
    async fn a_full_disk_is_507_insufficient_storage_without_retry_after() {
        for errno in [28, 122] {
            let full = simsiam::files::FileError {
                path: "var/gallery/gallery.log.00000001".into(),
                source: std::io::Error::from_raw_os_error(errno),
            };
            let e = ApiError::from(GalleryError::from(full));
            assert_eq!(
                (e.status_code().as_u16(), e.code(), e.kind()),
                (507, "insufficient_storage", "server_error")
            );
            let message = e.to_string();
            assert!(message.contains("gallery.log.00000001"), "{message}");
            let res = e.error_response();
            assert!(res.headers().get(header::RETRY_AFTER).is_none());
        }
        let other = simsiam::files::FileError {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        let e = ApiError::from(GalleryError::from(other));
        assert_eq!(e.status_code().as_u16(), 500);
    }
}
