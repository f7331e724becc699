//! SimSiam pretraining with tch (libtorch), and everything around it: datasets,
//! augmentation, evaluation, reports and export to a model bundle.
//!
//! This crate holds all the code that links libtorch, plus the code only training needs
//! (dataset readers with their MAT and XML parsers, augmentation, plots), so the server
//! (`simsiam-server`) depends on none of it. What both sides must agree on (decoding,
//! preprocessing, the probe, the backbone layout, the bundle format) lives in the core
//! crate, [`simsiam`]; the ONNX writer in [`simsiam_onnx`].
//!
//! The `trainer` binary is a thin command line over these modules:
//!
//! | command | module |
//! |---|---|
//! | `trainer pretrain` | [`pretrain`] (with [`session`], [`model`], [`loss`], [`loader`], [`augment`], [`checkpoint`]) |
//! | `trainer finetune` | [`finetune`] (with [`labelled`]) |
//! | `trainer eval` | [`eval`] (with [`knn`], [`probe_fit`], [`report`]) |
//! | `trainer export` | [`export`] |
//! | `trainer gallery` | [`seed_gallery`] |
//! | `trainer embed` | [`embed`] |
//! | `trainer bench` | [`bench`] |
//! | `trainer pack` | [`pack`] |
//!
//! ```no_run
//! use simsiam_trainer::config::TrainConfig;
//! use simsiam_trainer::pretrain::{pretrain, PretrainOptions};
//! let cfg = TrainConfig::load(None, vec![("data.root", "../shared/data/stanford-dogs".into())])?;
//! let summary = pretrain(&cfg, &PretrainOptions::default())?;
//! println!("loss {:.3} after {} epochs", summary.loss, summary.epochs_done);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod amp;
pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod embed;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod history;
pub mod knn;
pub mod labelled;
pub mod loader;
pub mod loss;
pub mod model;
pub mod pack;
pub mod plot;
pub mod pretrain;
pub mod probe_fit;
pub mod report;
pub mod schedule;
pub mod seed_gallery;
pub mod session;
pub mod sgd;

mod error;
pub use error::TrainError;
