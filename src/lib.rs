//! SimSiam image embeddings for dog breeds.
//!
//! The library holds all logic; the binaries in `src/bin/` only parse arguments.
//! Everything that links libtorch (model, training loop, export) lives in `src/train/`,
//! compiled into the `trainer` binary only: the library and the `server` binary never
//! reference libtorch, so the server does not link it.
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

#[cfg(feature = "serve")]
pub mod server;
