//! SimSiam image embeddings for dog breeds: the core that the trainer and the server share.
//!
//! The workspace has three more crates, and this one is what they agree on:
//! `simsiam-trainer` (libtorch: pretraining, evaluation, export) writes a model
//! [`bundle`]; `simsiam-server` (ONNX Runtime, no libtorch) serves it; `simsiam-onnx`
//! writes the bundle's encoder. What both sides must compute identically lives here, so
//! they cannot drift apart: image [`decode`]-ing, the evaluation transform
//! ([`preprocess`]), the linear [`probe`], the backbone's layout ([`arch`]) and the
//! bundle's format. [`runtime`] loads ONNX Runtime; [`config`] layers settings; [`vector`]
//! holds the dot product that the probe, the gallery and the kNN evaluation share.
//!
//! ```no_run
//! use simsiam::{bundle::Bundle, decode, runtime};
//! let bundle = Bundle::open(std::path::Path::new("models/default"))?;
//! let t = bundle.manifest.eval_transform();
//! let img = decode::load_rgb(std::path::Path::new("dog.jpg"))?;
//! let mut session = runtime::cpu_session(&bundle.encoder_bytes()?, 0)?;
//! let side = t.crop as usize;
//! let (_, embedding) = runtime::run_f32(&mut session, &t.to_vec(&img), [1, 3, side, side])?;
//! let probs = bundle.probe()?.probabilities(&embedding)?;
//! println!("{} → {:.2}", bundle.manifest.classes[0], probs[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod arch;
pub mod bundle;
pub mod classes;
pub mod config;
pub mod decode;
pub mod files;
pub mod preprocess;
pub mod probe;
pub mod runtime;
pub mod vector;
