//! ONNX export of trained encoders, written without libtorch.
//!
//! tch has no ONNX exporter, and TorchScript tracing bakes in the batch size, so the
//! trainer writes the `ModelProto` itself: [`proto`] declares the protobuf messages,
//! [`builder`] assembles graphs, [`resnet`] describes the backbone and folds batch norm,
//! and [`encoder`] writes the whole encoder. The server then runs the file through ONNX Runtime
//! (see [`crate::runtime`]) with no libtorch at all.
//!
//! ```no_run
//! use simsiam::config::Backbone;
//! use simsiam::onnx::{export_encoder, EncoderSpec};
//! # fn lookup(_: &str) -> Option<(Vec<i64>, Vec<f32>)> { None }
//! let spec = EncoderSpec::new(Backbone::Resnet18, 64);
//! let bytes = export_encoder(&spec, &lookup)?;
//! std::fs::write("encoder.onnx", bytes)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod builder;
pub mod encoder;
pub mod f16;
pub mod proto;
pub mod resnet;

pub use builder::{Dim, GraphBuilder, ModelMeta, IR_VERSION, OPSET_VERSION};
pub use encoder::{
    export_encoder, export_encoder_with_info, EncoderSpec, ExportInfo, WeightFn, BATCH_DIM,
    INPUT_NAME, OUTPUT_NAME,
};
pub use resnet::{encoder_variables, feature_dim, fold_batch_norm};

/// Errors while writing an ONNX model. Each names the variable or value concerned.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("variable `{0}` is missing from the trained weights")]
    MissingWeight(String),
    #[error("variable `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("tensor `{name}` of shape {shape:?} was given {found} values")]
    Length {
        name: String,
        shape: Vec<i64>,
        found: usize,
    },
    #[error(
        "batch norm `{name}`, channel {channel}: folding gives a non-finite value \
         (running_var + eps must be positive and the weights finite)"
    )]
    NonFinite { name: String, channel: usize },
    #[error(
        "`{name}`: folded weight {value} is outside the float16 range (±65504); \
         export with float32 weights"
    )]
    Fp16Overflow { name: String, value: f32 },
    #[error("graph name `{0}` is defined twice")]
    DuplicateName(String),
    #[error("graph value `{0}` is used before it is defined")]
    UndefinedValue(String),
    #[error("invalid export settings: {0}")]
    Spec(String),
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_encoder;
