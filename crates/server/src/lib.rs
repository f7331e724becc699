//! The embedding server: actix-web over ONNX Runtime, with dynamic batching, an HNSW
//! gallery and the linear-probe classifier. Its dependency tree has no libtorch, plotting,
//! XML or MAT code: it needs only the core crate, [`simsiam`], and a model bundle.
//!
//! A request flows: [`input`] (multipart / JSON / raw body) → decode and preprocess on the
//! blocking pool ([`pipeline::preprocess`], the trainer's evaluation transform) →
//! [`batcher::Batcher`] → an [`encoder::Encoder`] on its own thread → the gallery
//! ([`gallery::Gallery`]: embedded or PostgreSQL) or the probe → JSON. The pipeline fails with
//! [`pipeline::EmbedError`], the gallery with [`gallery::GalleryError`]; the HTTP layer
//! turns both into [`error::ApiError`], mapped to statuses in one table.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use simsiam_server::config::ServerConfig;
//! let cfg = ServerConfig::load(None, vec![("http.port", 9000u64.into())])?;
//! simsiam_server::serve(cfg).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod batcher;
pub mod config;
pub mod encoder;
pub mod error;
pub mod fetch;
pub mod gallery;
pub mod health;
pub mod input;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod priority;
pub mod routes;
pub mod state;
pub mod timing;
pub mod watch;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use config::ServerConfig;
use error::{ApiError, ErrorBody};
use state::{AppState, StartError};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server stopped with an error: {0}")]
    Run(std::io::Error),
}

/// Starts everything, serves until SIGINT/SIGTERM, drains in-flight requests, then flushes
/// the gallery and stops the inference threads.
pub async fn serve(cfg: ServerConfig) -> Result<(), ServeError> {
    let addr = cfg.bind_address();
    let priority = cfg.http.request_priority;
    // Multi-image requests decode on rayon's pool: request threads too.
    let pool = rayon::ThreadPoolBuilder::new()
        .start_handler(move |_| priority::lower_this_thread(priority))
        .build_global();
    if let Err(e) = pool {
        log::debug!("rayon's pool keeps its priority: {e}");
    }
    let state = AppState::start(cfg.clone())?;
    let data = web::Data::from(state.clone());
    let workers = if cfg.http.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.http.workers
    };
    let origins = cfg.cors.allowed_origins.clone();
    let server = HttpServer::new(move || {
        // Runs once on each worker thread, before it serves anything.
        priority::lower_this_thread(priority);
        App::new()
            .app_data(data.clone())
            // Outermost last: metrics see everything; CORS headers reach 401s too (API
            // keys are checked per route: `auth`).
            .wrap(cors(&origins))
            .wrap(from_fn(observe))
            .configure(routes::configure)
            .default_service(web::to(|| async {
                ApiError::NotFound("no such route; see GET /openapi.json".into()).error_response()
            }))
    })
    .workers(workers)
    .shutdown_timeout(cfg.http.shutdown_timeout_s)
    // Signals are ours (below): readiness must turn 503 the moment shutdown begins.
    .disable_signals()
    .bind(&addr)
    .map_err(|source| ServeError::Bind {
        addr: addr.clone(),
        source,
    })?;
    for a in server.addrs() {
        log::info!("listening on http://{a}/ (API page; JSON routes under /v1)");
    }
    let server = server.run();
    actix_web::rt::spawn(stop_on_signal(server.handle(), state.clone()));
    server.await.map_err(ServeError::Run)?;
    log::info!("stopped accepting requests; flushing the gallery");
    if let Err(e) = state.gallery.flush() {
        log::error!("{e}");
    }
    Ok(())
}

/// On SIGINT or SIGTERM: readiness turns 503, new connections are refused, and requests
/// in flight get `http.shutdown_timeout_s` to finish.
async fn stop_on_signal(server: actix_web::dev::ServerHandle, state: std::sync::Arc<AppState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot listen for SIGTERM/SIGINT: stop the server with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info!("{name} received: not ready any more; finishing the requests in flight");
    state.health.begin_shutdown();
    server.stop(true).await;
}

fn cors(origins: &[String]) -> actix_cors::Cors {
    if origins.is_empty() {
        // No cross-origin access: the browser's same-origin policy stays in force.
        return actix_cors::Cors::default();
    }
    let mut c = actix_cors::Cors::default()
        .allow_any_method()
        .allow_any_header()
        .expose_headers([
            "x-preprocess-time",
            "x-queue-time",
            "x-inference-time",
            "x-total-time",
        ])
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        c = c.allow_any_origin();
    } else {
        for o in origins {
            c = c.allowed_origin(o);
        }
    }
    c
}

/// Request counts and latency per route and status, the [`timing`] headers; gives error
/// responses produced by actix itself (405, payload errors) the JSON error body every
/// other error has.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let start = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let (res, timings) = timing::scope(next.call(req)).await;
    let mut res = res?.map_into_boxed_body();
    for (name, value) in timings.headers(start.elapsed()) {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            res.headers_mut()
                .insert(header::HeaderName::from_static(name), value);
        }
    }
    let status = res.status();
    let res = if (status.is_client_error() || status.is_server_error())
        && !res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        let (req, old) = res.into_parts();
        let mut new = HttpResponse::build(status);
        for (k, v) in old.headers() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                new.insert_header((k.clone(), v.clone()));
            }
        }
        let body = new.json(ErrorBody::for_status(status));
        ServiceResponse::new(req, body)
    } else {
        res
    };
    if let Some(state) = state {
        state
            .metrics
            .record_request(&route, res.status().as_u16(), start.elapsed());
    }
    Ok(res)
}
