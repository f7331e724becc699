//! HTTP routes, one module per resource, each with its own `configure`.

pub mod classify;
pub mod embed;
pub mod embeddings;
pub mod gallery;
pub mod ops;
pub mod search;

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

/// Runs a handler's work under the configured request timeout.
pub async fn within_timeout<T>(
    state: &AppState,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let secs = state.cfg.limits.request_timeout_s;
    tokio::time::timeout(Duration::from_secs(secs), work)
        .await
        .map_err(|_| ApiError::Timeout(secs))?
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
