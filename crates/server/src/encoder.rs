//! The one thing the HTTP layer needs from a model, and its ONNX Runtime implementation.

use crate::config::{ArenaExtend, ConvSearch, CudaConfig, InferenceConfig, Provider};
use ort::ep::cuda::ConvAlgorithmSearch;
use ort::ep::{ArenaExtendStrategy, ExecutionProvider, CUDA};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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
    /// Builds a session with the configured provider (see [`session`]).
    pub fn new(
        model: &[u8],
        side: u32,
        dim: usize,
        cfg: &InferenceConfig,
    ) -> Result<(Self, ActiveProvider), RuntimeError> {
        let (session, provider) = session(model, cfg)?;
        let encoder = Self {
            session,
            side: side as usize,
            dim,
        };
        Ok((encoder, provider))
    }
}

/// Whether the loaded ONNX Runtime was built with the CUDA provider (loading it first).
pub fn cuda_available() -> Result<bool, RuntimeError> {
    runtime::init()?;
    Ok(CUDA::is_available().unwrap_or(false))
}

/// A session on the configured provider, and which provider it got. `Auto` tries CUDA
/// only when the loaded ONNX Runtime was built with it, and falls back to CPU with a log
/// line saying why; `Cuda` fails instead, with a message that says what is missing.
pub fn session(
    model: &[u8],
    cfg: &InferenceConfig,
) -> Result<(Session, ActiveProvider), RuntimeError> {
    // Load the library first: ort panics if its API is touched before that.
    let library = runtime::init()?;
    let cuda_built = CUDA::is_available().unwrap_or(false);
    Ok(match cfg.provider {
        Provider::Cpu => (cpu_session(model, cfg)?, ActiveProvider::Cpu),
        Provider::Cuda if !cuda_built => {
            return Err(RuntimeError::NoProvider {
                provider: "CUDA",
                library,
                hint: "install onnxruntime-gpu (`SIMSIAM_CUDA=1 make setup`, or point \
                       ORT_DYLIB_PATH at its libonnxruntime.so), or set \
                       inference.provider = \"auto\" or \"cpu\"",
            })
        }
        Provider::Cuda => (cuda_session(model, cfg)?, ActiveProvider::Cuda),
        Provider::Auto if cuda_built => match cuda_session(model, cfg) {
            Ok(s) => (s, ActiveProvider::Cuda),
            Err(e) => {
                log::warn!("CUDA provider unusable ({e}); running on CPU");
                (cpu_session(model, cfg)?, ActiveProvider::Cpu)
            }
        },
        Provider::Auto => {
            log::info!("this ONNX Runtime has no CUDA provider; running on CPU");
            (cpu_session(model, cfg)?, ActiveProvider::Cpu)
        }
    })
}

fn cpu_session(model: &[u8], cfg: &InferenceConfig) -> Result<Session, RuntimeError> {
    runtime::session(model, cfg.threads, spin(cfg), &[])
}

fn cuda_session(model: &[u8], cfg: &InferenceConfig) -> Result<Session, RuntimeError> {
    runtime::session(
        model,
        cfg.threads,
        spin(cfg),
        &[cuda_provider(&cfg.cuda).build().error_on_failure()],
    )
}

/// The CUDA provider with the configured options.
pub fn cuda_provider(cfg: &CudaConfig) -> CUDA {
    let search = match cfg.conv_algorithm_search {
        ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
        ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
        ConvSearch::Default => ConvAlgorithmSearch::Default,
    };
    let arena = match cfg.arena_extend {
        ArenaExtend::NextPowerOfTwo => ArenaExtendStrategy::NextPowerOfTwo,
        ArenaExtend::SameAsRequested => ArenaExtendStrategy::SameAsRequested,
    };
    let mut ep = CUDA::default()
        .with_device_id(cfg.device_id)
        .with_conv_algorithm_search(search)
        .with_arena_extend_strategy(arena)
        .with_tf32(cfg.tf32);
    if cfg.memory_limit_mb > 0 {
        ep = ep.with_memory_limit(cfg.memory_limit_mb << 20);
    }
    ep
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

/// What [`provider_parity`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parity {
    pub reference: ActiveProvider,
    pub candidate: ActiveProvider,
    /// Largest |reference − candidate| over every value of every embedding.
    pub max_abs_diff: f32,
}

/// Embeds the same `n` preprocessed images (`images`: CHW tensors of side `side`, back
/// to back) through two provider configurations, one run each, and compares them: the
/// check that a GPU provider gives the CPU's answers.
pub fn provider_parity(
    model: &[u8],
    side: u32,
    dim: usize,
    images: &[f32],
    n: usize,
    reference: &InferenceConfig,
    candidate: &InferenceConfig,
) -> Result<Parity, RuntimeError> {
    let (mut a, pa) = OrtEncoder::new(model, side, dim, reference)?;
    let (mut b, pb) = OrtEncoder::new(model, side, dim, candidate)?;
    let (ea, eb) = (a.embed(images, n)?, b.embed(images, n)?);
    let max_abs_diff = ea
        .iter()
        .zip(&eb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    Ok(Parity {
        reference: pa,
        candidate: pb,
        max_abs_diff,
    })
}
