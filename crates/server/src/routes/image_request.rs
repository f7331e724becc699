//! The one way an image route reads its request: [`ImageRequest`] is an extractor that
//! announces the request to the batcher, reads the body within the request's deadline
//! (multipart, JSON or a raw image; see [`crate::input`]), fetches image URLs, checks the
//! image count and parses the route's typed parameters.

use super::{Deadline, State};
use crate::batcher::Ticket;
use crate::error::ApiError;
use crate::input;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

/// A route's parameters, from the JSON body, the multipart text fields or the query string.
pub trait ImageParams: DeserializeOwned + 'static {
    /// Whether the request must carry images. `/v1/search` may send vectors instead, and
    /// `/v1/embeddings` carries its images in its `input` parameter.
    const REQUIRES_IMAGES: bool = true;
}

/// An image request, read: its images in order, its parameters, the batcher ticket taken
/// when it arrived, and its deadline.
pub struct ImageRequest<P> {
    pub images: Vec<Vec<u8>>,
    pub params: P,
    pub ticket: Ticket,
    pub deadline: Deadline,
}

impl<P: ImageParams> FromRequest for ImageRequest<P> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = web::Payload::from_request(&req, payload).into_inner();
        Box::pin(async move {
            let state = req
                .app_data::<State>()
                .cloned()
                .ok_or_else(|| ApiError::Internal("no application state".into()))?;
            let payload = payload.map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let ticket = state.ticket();
            let deadline = Deadline::start(&state);
            let limits = &state.cfg.limits;
            let input = deadline
                .run(input::read(&req, payload, limits, state.fetcher.as_ref()))
                .await?;
            if P::REQUIRES_IMAGES {
                input.require_images(limits)?;
            }
            Ok(ImageRequest {
                params: input.params()?,
                images: input.images,
                ticket,
                deadline,
            })
        })
    }
}
