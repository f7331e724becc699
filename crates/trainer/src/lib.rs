//! SimSiam pretraining with tch (libtorch), and everything around it: datasets,
//! augmentation, evaluation, reports and export to a model bundle.
//!
//! This crate holds all the code that links libtorch, plus the code only training needs
//! (dataset readers with their MAT and XML parsers, augmentation, plots), so the server
//! (`simsiam-server`) depends on none of it. What both sides must agree on (decoding,
//! preprocessing, the probe, the backbone layout, the bundle format) lives in the core
//! crate, [`simsiam`]; the ONNX writer in [`simsiam_onnx`].
//!
//! The `trainer` binary is a thin command line over [`commands`], one module per
//! subcommand; they are built from the parts in [`engine`] (the model, loss, data,
//! augmentation, optimiser, checkpoints, evaluation and reports):
//!
//! | command | module |
//! |---|---|
//! | `trainer pretrain` | [`commands::pretrain`] (with [`engine::session`], [`engine::model`], [`engine::loss`], [`engine::loader`], [`engine::augment`], [`engine::checkpoint`]) |
//! | `trainer finetune` | [`commands::finetune`] (with [`engine::labelled`]) |
//! | `trainer eval` | [`commands::eval`] (with [`engine::knn`], [`engine::probe_fit`], [`engine::report`]) |
//! | `trainer export` | [`commands::export`] |
//! | `trainer gallery` | [`commands::seed_gallery`] |
//! | `trainer embed` | [`commands::embed`] |
//! | `trainer bench` | [`commands::bench`] |
//! | `trainer pack` | [`commands::pack`] |
//!
//! ```no_run
//! use simsiam_trainer::config::TrainConfig;
//! use simsiam_trainer::commands::pretrain::{pretrain, PretrainOptions};
//! let cfg = TrainConfig::load(None, vec![("data.root", "../shared/data/stanford-dogs".into())])?;
//! let summary = pretrain(&cfg, &PretrainOptions::default())?;
//! println!("loss {:.3} after {} epochs", summary.loss, summary.epochs_done);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod commands;
pub mod config;
pub mod engine;

mod error;
pub use error::TrainError;
