//! SimSiam image embeddings for dog breeds.
//!
//! The library holds all logic; the binaries in `src/bin/` only parse arguments.
//! Everything that links libtorch lives behind the `train` feature, so the server and
//! the data, augmentation and preprocessing code build and test without it.
//!
//! ```no_run
//! use simsiam::data::{self, DatasetOptions};
//! let ds = data::open(std::path::Path::new("../shared/data/stanford-dogs"), &DatasetOptions::default())?;
//! println!("{} classes, {} train, {} test", ds.classes.len(), ds.train.len(), ds.test.len());
//! # Ok::<(), simsiam::data::DataError>(())
//! ```

pub mod augment;
pub mod bundle;
pub mod config;
pub mod data;
pub mod knn;
pub mod metrics;
pub mod onnx;
pub mod plot;
pub mod preprocess;
pub mod probe;
pub mod report;
pub mod runtime;

#[cfg(feature = "train")]
pub mod train;

#[cfg(feature = "serve")]
pub mod server;
