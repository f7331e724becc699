//! What the host and the GPU do beside the server: the decode-bound limit, provider
//! parity, and the GPU's busy share while a level runs.

use anyhow::{bail, Result};
use rayon::prelude::*;
use simsiam::bundle::Bundle;
use simsiam_server::config::{InferenceConfig, Provider, ServerConfig};
use simsiam_server::encoder::{self, ActiveProvider};
use simsiam_server::metrics::Metrics;
use simsiam_server::pipeline::preprocess;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Images per second that all the host's cores decode and preprocess with the server's
/// own code, one image per call as a one-image request is handled: the most a server on
/// this host can serve, however fast its model.
pub fn decode_rate(cfg: &ServerConfig, jpegs: &[Vec<u8>], images: usize) -> Result<f64> {
    let t = Bundle::open(&cfg.model.dir)?.manifest.eval_transform();
    let metrics = Metrics::default();
    let max_pixels = cfg.limits.max_pixels;
    // Warm-up: every image once.
    for j in jpegs {
        preprocess(std::slice::from_ref(j), &t, max_pixels, &metrics)?;
    }
    let start = Instant::now();
    (0..images).into_par_iter().try_for_each(|i| {
        preprocess(
            std::slice::from_ref(&jpegs[i % jpegs.len()]),
            &t,
            max_pixels,
            &metrics,
        )
        .map(drop)
    })?;
    Ok(images as f64 / start.elapsed().as_secs_f64())
}

/// The server's provider against the CPU provider on the request images: the largest
/// absolute difference of their l2-normalised embeddings, which must stay within
/// `tolerance`.
pub fn parity(cfg: &ServerConfig, jpegs: &[Vec<u8>], tolerance: f32) -> Result<()> {
    let bundle = Bundle::open(&cfg.model.dir)?;
    let m = &bundle.manifest;
    let t = m.eval_transform();
    let images = preprocess(jpegs, &t, cfg.limits.max_pixels, &Metrics::default())?;
    let cpu = InferenceConfig {
        provider: Provider::Cpu,
        ..cfg.inference.clone()
    };
    let p = encoder::provider_parity(
        &bundle.encoder_bytes()?,
        t.crop,
        m.embedding.dim,
        &images,
        jpegs.len(),
        &cpu,
        &cfg.inference,
    )?;
    println!(
        "parity on {} images: {} vs {}: max |diff| {:.2e} (tolerance {tolerance:.0e})",
        jpegs.len(),
        p.reference,
        p.candidate,
        p.max_abs_diff
    );
    if p.candidate == ActiveProvider::Cpu {
        println!("(the configured provider ran on CPU: nothing to compare against a GPU here)");
    }
    if p.max_abs_diff.is_nan() || p.max_abs_diff > tolerance {
        bail!(
            "providers disagree: max |diff| {:.3e} > {tolerance:.0e}",
            p.max_abs_diff
        );
    }
    Ok(())
}

/// Samples the GPU's utilisation with `nvidia-smi` every 100 ms until stopped; absent
/// when there is no `nvidia-smi`.
pub struct GpuSampler {
    child: Child,
    reader: JoinHandle<()>,
    samples: Arc<Mutex<Vec<f64>>>,
}

impl GpuSampler {
    pub fn start(device: i32) -> Option<Self> {
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
                "-i",
                &device.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let out = child.stdout.take()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = line.trim().parse::<f64>() {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        Some(Self {
            child,
            reader,
            samples,
        })
    }

    /// The mean utilisation (0-1) while it ran.
    pub fn stop(mut self) -> Option<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64 / 100.0)
    }
}
