//! API keys. Each route declares the key it needs where it is registered
//! (`auth::read(web::post().to(embed))`), and its OpenAPI annotation names the same scope;
//! the end-to-end tests call every documented operation with each key to hold the two
//! together. Routes registered without a wrapper (health, readiness, the docs) are public.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, ResponseError, Route};

/// Which key a route needs (see [`crate::config::AuthConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Embed, search, classify, models, gallery counts: the read key or the admin key.
    Read,
    /// Gallery writes and metrics: the admin key.
    Admin,
}

/// `route` for callers with the read key (or the admin key).
pub fn read(route: Route) -> Route {
    require(Role::Read, route)
}

/// `route` for callers with the admin key.
pub fn admin(route: Route) -> Route {
    require(Role::Admin, route)
}

fn require(role: Role, route: Route) -> Route {
    route.wrap(from_fn(move |req, next| authorize(role, req, next)))
}

/// Bearer API keys, when any is configured, compared in constant time: 401 without a
/// valid key, 403 with the read key on an admin route.
async fn authorize(
    role: Role,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(auth) = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.cfg.auth.clone())
        .filter(|a| a.enabled())
    else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches = |key: &str| !key.is_empty() && constant_time_eq(given.as_bytes(), key.as_bytes());
    let refused = match role {
        _ if matches(&auth.admin_key) => None,
        Role::Read if matches(&auth.read_key) => None,
        Role::Admin if matches(&auth.read_key) => Some(ApiError::Forbidden),
        Role::Read | Role::Admin => Some(ApiError::Unauthorized),
    };
    match refused {
        Some(e) => Ok(req.into_response(e.error_response())),
        None => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}

/// Equal-length inputs take the same time whatever their content; the length itself is
/// not secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
