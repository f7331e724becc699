//! HTTP routes, one module per resource, each with its own `configure`.

pub mod classify;
pub mod embed;
pub mod embeddings;
pub mod gallery;
pub mod image_request;
pub mod ops;
pub mod search;

pub use image_request::{ImageParams, ImageRequest};

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::web;
use std::future::Future;
use std::time::Duration;

/// Shared state as handlers extract it.
pub type State = web::Data<AppState>;

/// All routes of the API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    embed::configure(cfg);
    embeddings::configure(cfg);
    search::configure(cfg);
    classify::configure(cfg);
    gallery::configure(cfg);
    ops::configure(cfg);
}

/// The end of a request's time (`limits.request_timeout_s`), counted from its arrival:
/// reading the body, fetching URLs, the model and the gallery all share it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: tokio::time::Instant,
    secs: u64,
}

impl Deadline {
    pub fn start(state: &AppState) -> Self {
        let secs = state.cfg.limits.request_timeout_s;
        Deadline {
            at: tokio::time::Instant::now() + Duration::from_secs(secs),
            secs,
        }
    }

    /// Runs `work` until the deadline; past it, the request is a 504.
    pub async fn run<T>(
        self,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| ApiError::Timeout(self.secs))?
    }
}

/// Checks a `k`-like parameter against `1..=limits.max_k`.
pub fn check_k(name: &str, k: usize, state: &AppState) -> Result<usize, ApiError> {
    let max = state.cfg.limits.max_k;
    if k == 0 || k > max {
        return Err(ApiError::Unprocessable(format!(
            "`{name}` must be between 1 and {max}, got {k}"
        )));
    }
    Ok(k)
}
