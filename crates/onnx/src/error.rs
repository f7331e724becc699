//! What can go wrong while writing an ONNX model: a missing or misshapen weight, a value
//! float16 cannot hold, a graph name defined twice or used undefined.

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
