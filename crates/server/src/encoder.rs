//! The one thing the HTTP layer needs from a model, and its ONNX Runtime implementation.

use crate::config::{InferenceConfig, Provider};
use ort::ep::{ExecutionProvider, CUDA};
use ort::session::Session;
use simsiam::runtime::{self, RuntimeError};

/// Preprocessed images in, one l2-normalised embedding per image out.
///
/// Implementations are used from one dedicated inference thread each (never from the async
/// executor), so `embed` may block for as long as the model takes.
pub trait Encoder: Send {
    /// Length of one embedding.
    fn dim(&self) -> usize;
    /// `images` holds `n` CHW tensors back to back; returns `n × dim` values.
    fn embed(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError>;
}

/// An ONNX Runtime session over the bundle's `encoder.onnx`.
pub struct OrtEncoder {
    session: Session,
    side: usize,
    dim: usize,
}

/// Which execution provider a session ended up with (logged at start-up and shown in
/// `GET /v1/models`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveProvider {
    Cpu,
    Cuda,
}

impl std::fmt::Display for ActiveProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActiveProvider::Cpu => "CPU",
            ActiveProvider::Cuda => "CUDA",
        })
    }
}

impl OrtEncoder {
    /// Builds a session with the configured provider. `Auto` tries CUDA only when the loaded
    /// ONNX Runtime was built with it, and falls back to CPU with a log line saying why;
    /// `Cuda` fails instead of falling back.
    pub fn new(
        model: &[u8],
        side: u32,
        dim: usize,
        cfg: &InferenceConfig,
    ) -> Result<(Self, ActiveProvider), RuntimeError> {
        // Load the library first: ort panics if its API is touched before that.
        runtime::init()?;
        let (session, provider) = match cfg.provider {
            Provider::Cpu => (cpu_session(model, cfg)?, ActiveProvider::Cpu),
            Provider::Cuda => (cuda_session(model, cfg)?, ActiveProvider::Cuda),
            Provider::Auto => match CUDA::is_available() {
                Ok(true) => match cuda_session(model, cfg) {
                    Ok(s) => (s, ActiveProvider::Cuda),
                    Err(e) => {
                        log::warn!("CUDA provider unusable ({e}); running on CPU");
                        (cpu_session(model, cfg)?, ActiveProvider::Cpu)
                    }
                },
                _ => {
                    log::info!("this ONNX Runtime has no CUDA provider; running on CPU");
                    (cpu_session(model, cfg)?, ActiveProvider::Cpu)
                }
            },
        };
        let encoder = Self {
            session,
            side: side as usize,
            dim,
        };
        Ok((encoder, provider))
    }
}

fn cpu_session(model: &[u8], cfg: &InferenceConfig) -> Result<Session, RuntimeError> {
    runtime::session(model, cfg.threads, spin(cfg), &[])
}

fn cuda_session(model: &[u8], cfg: &InferenceConfig) -> Result<Session, RuntimeError> {
    runtime::session(
        model,
        cfg.threads,
        spin(cfg),
        &[CUDA::default().build().error_on_failure()],
    )
}

fn spin(cfg: &InferenceConfig) -> runtime::Spin {
    if cfg.spin {
        runtime::Spin::DuringRuns
    } else {
        runtime::Spin::Never
    }
}

impl Encoder for OrtEncoder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let (shape, values) =
            runtime::run_f32(&mut self.session, images, [n, 3, self.side, self.side])?;
        if shape != [n, self.dim] {
            return Err(RuntimeError::OutputShape {
                expected: vec![n, self.dim],
                found: shape,
            });
        }
        Ok(values)
    }
}
