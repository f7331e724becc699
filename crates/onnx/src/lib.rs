//! ONNX export of SimSiam encoders, written without libtorch.
//!
//! tch has no ONNX exporter, and TorchScript tracing bakes in the batch size, so the
//! trainer writes the `ModelProto` itself: [`proto`] declares the protobuf messages,
//! [`builder`] assembles graphs, [`fold`] merges batch norm into convolutions, and
//! [`graph`] writes the whole encoder by walking [`simsiam::arch::layout`], the backbone
//! description the trainer's model is built from. The server then runs the file through
//! ONNX Runtime ([`simsiam::runtime`]) with no libtorch at all.
//!
//! This crate is its own so that both sides can use it: the trainer exports trained
//! weights, and the server's tests build a whole bundle from seeded random weights
//! ([`fixture`]) without libtorch or a training run.
//!
//! ```no_run
//! use simsiam::arch::Backbone;
//! use simsiam_onnx::{export_encoder, EncoderSpec};
//! # fn lookup(_: &str) -> Option<(Vec<i64>, Vec<f32>)> { None }
//! let spec = EncoderSpec::new(Backbone::Resnet18, 64);
//! let bytes = export_encoder(&spec, &lookup)?;
//! std::fs::write("encoder.onnx", bytes)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod builder;
pub mod error;
pub mod f16;
pub mod fixture;
pub mod fold;
pub mod graph;
pub mod proto;

pub use builder::{Dim, GraphBuilder, ModelMeta, IR_VERSION, OPSET_VERSION};
pub use error::OnnxError;
pub use fold::fold_batch_norm;
pub use graph::{
    export_encoder, export_encoder_with_info, EncoderSpec, ExportInfo, WeightFn, BATCH_DIM,
    INPUT_NAME, OUTPUT_NAME,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_graph;
