//! The ceiling the server is measured against: a bare ONNX Runtime session.

use anyhow::Result;
use simsiam::bundle::Bundle;
use simsiam::runtime::{self, Session};
use simsiam_server::config::ServerConfig;
use simsiam_server::encoder::{self, ActiveProvider};
use std::time::Instant;

/// Intra-op threads of the bare session: all the server's inference threads together
/// (`sessions × threads`), so two 1-thread sessions are compared with one 2-thread session.
pub fn bare_threads(cfg: &ServerConfig) -> usize {
    cfg.inference.threads * cfg.inference.sessions
}

/// The bundle's encoder in one session on the provider the server gets, with as many
/// intra-op threads as the server's sessions have together, run on full batches of
/// already decoded and preprocessed images. On CPU it keeps ONNX Runtime's default
/// settings; on CUDA it takes the server's provider options.
///
/// A fresh session per measurement: an idle session's threads keep spinning for a while
/// (ONNX Runtime's default), and would otherwise slow the server run that follows.
pub struct BareSession {
    model: Vec<u8>,
    cfg: ServerConfig,
    pub provider: ActiveProvider,
    batch: Vec<f32>,
    shape: [usize; 4],
}

impl BareSession {
    pub fn new(cfg: &ServerConfig, jpegs: &[Vec<u8>], b: usize) -> Result<Self> {
        let bundle = Bundle::open(&cfg.model.dir)?;
        let t = bundle.manifest.eval_transform();
        let metrics = simsiam_server::metrics::Metrics::default();
        let tensors = simsiam_server::pipeline::preprocess(jpegs, &t, u64::MAX, &metrics)?;
        let per = t.tensor_len();
        let mut batch = Vec::with_capacity(b * per);
        for i in 0..b {
            let k = i % jpegs.len();
            batch.extend_from_slice(&tensors[k * per..(k + 1) * per]);
        }
        let side = t.crop as usize;
        let model = bundle.encoder_bytes()?;
        // Which provider the server's settings give, found once.
        let (_, provider) = encoder::session(&model, &cfg.inference)?;
        Ok(Self {
            model,
            cfg: cfg.clone(),
            provider,
            batch,
            shape: [b, 3, side, side],
        })
    }

    fn session(&self) -> Result<Session> {
        let threads = bare_threads(&self.cfg);
        Ok(match self.provider {
            ActiveProvider::Cpu => runtime::cpu_session(&self.model, threads)?,
            ActiveProvider::Cuda => {
                let mut inference = self.cfg.inference.clone();
                inference.threads = threads;
                encoder::session(&self.model, &inference)?.0
            }
        })
    }

    /// Images per run.
    pub fn batch(&self) -> usize {
        self.shape[0]
    }

    /// Images per second over full batches covering at least `images` images, after one
    /// warm-up run; the session is dropped (its threads joined) before returning.
    pub fn rate(&self, images: usize) -> Result<f64> {
        let mut session = self.session()?;
        runtime::run_f32(&mut session, &self.batch, self.shape)?;
        let b = self.shape[0];
        let runs = images.div_ceil(b);
        let start = Instant::now();
        for _ in 0..runs {
            runtime::run_f32(&mut session, &self.batch, self.shape)?;
        }
        Ok((runs * b) as f64 / start.elapsed().as_secs_f64())
    }
}
