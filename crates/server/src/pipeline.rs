//! The embedding pipeline's own terms: what can go wrong between a request's bytes and
//! its embeddings ([`EmbedError`]), and the first stage, decoding and preprocessing.
//!
//! The batcher and the application state speak this error; the HTTP layer turns it into
//! an [`crate::error::ApiError`] with one `From`, where each kind gets its status.

use crate::metrics::{Metrics, Stage};
use rayon::prelude::*;
use simsiam::decode::{decode_bytes_min_side, DecodeError};
use simsiam::preprocess::EvalTransform;
use std::time::Instant;

/// Why images could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Not an image we can decode, or a corrupt or truncated one.
    #[error("image {index}: {message}")]
    BadImage { index: usize, message: String },
    /// The image's header claims more pixels than `limits.max_pixels`.
    #[error("image {index}: {message}")]
    TooLarge { index: usize, message: String },
    /// The inference queue is full.
    #[error("the server is at capacity ({queued} images queued); retry shortly")]
    Overloaded { queued: usize },
    /// No new work is taken: the server is stopping, or its inference threads are gone.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// ONNX Runtime failed on a batch (every request of that run gets this).
    #[error("model run failed: {0}")]
    Model(String),
    /// A thread of the pipeline went away mid-request (a panic, a closed pool).
    #[error("{0}")]
    WorkerLost(String),
}

impl From<actix_web::error::BlockingError> for EmbedError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        EmbedError::WorkerLost(format!("preprocessing pool: {e}"))
    }
}

/// Decodes and preprocesses every image into `n` CHW tensors back to back. A
/// multi-image request fans out over rayon; a single image stays on the calling
/// (blocking-pool) thread, since handing it to another thread costs wake-ups and buys
/// nothing when many requests already run side by side.
pub fn preprocess(
    images: &[Vec<u8>],
    transform: &EvalTransform,
    max_pixels: u64,
    metrics: &Metrics,
) -> Result<Vec<f32>, EmbedError> {
    let len = transform.tensor_len();
    let mut out = vec![0.0f32; images.len() * len];
    let one = |(index, (slot, bytes)): (usize, (&mut [f32], &Vec<u8>))| {
        let t = Instant::now();
        let img = decode_bytes_min_side(bytes, Some(max_pixels), transform.resize).map_err(
            |e| match e {
                DecodeError::TooLarge { .. } => EmbedError::TooLarge {
                    index,
                    message: e.to_string(),
                },
                other => EmbedError::BadImage {
                    index,
                    message: other.to_string(),
                },
            },
        )?;
        metrics.record_stage(Stage::Decode, t.elapsed());
        let t = Instant::now();
        transform.apply(&img, slot);
        metrics.record_stage(Stage::Preprocess, t.elapsed());
        Ok::<(), EmbedError>(())
    };
    if images.len() == 1 {
        out.chunks_mut(len)
            .zip(images)
            .enumerate()
            .try_for_each(one)?;
    } else {
        out.par_chunks_mut(len)
            .zip(images.par_iter())
            .enumerate()
            .try_for_each(one)?;
    }
    Ok(out)
}
