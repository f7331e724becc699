//! A small graph builder over the protobuf messages of [`super::proto`].
//!
//! It keeps the bookkeeping an exporter gets wrong by hand: unique value names, nodes in
//! the order they were added (which is topological when each node only consumes values
//! defined before it), typed attributes, and weights encoded as little-endian `raw_data`.

use super::f16::{f32_to_f16_bits, F16_MAX};
use super::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::error::OnnxError;
use std::collections::HashSet;

/// ONNX IR version written: 8 is read by every ONNX Runtime since 1.10.
pub const IR_VERSION: i64 = 8;
/// Default-domain operator set written: 17 (ONNX 1.12) has every operator used here with
/// its current semantics, and `ReduceL2` still takes `axes` as an attribute.
pub const OPSET_VERSION: i64 = 17;

/// One axis of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named size fixed only at run time (e.g. `batch`).
    Symbolic(String),
}

/// Model-level fields that are not part of the graph.
#[derive(Clone, Debug, Default)]
pub struct ModelMeta {
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
    /// Written as `metadata_props`; ONNX Runtime exposes them as custom metadata.
    pub metadata: Vec<(String, String)>,
}

/// Accumulates nodes, initializers, inputs and outputs of one graph.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    /// Every value name defined so far (inputs, initializers, node outputs).
    defined: HashSet<String>,
    /// Node names, which ONNX also wants unique.
    node_names: HashSet<String>,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nodes added so far.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn define(&mut self, name: &str) -> Result<(), OnnxError> {
        if self.defined.insert(name.to_owned()) {
            Ok(())
        } else {
            Err(OnnxError::DuplicateName(name.to_owned()))
        }
    }

    /// Declares a float graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Result<String, OnnxError> {
        self.define(name)?;
        self.inputs.push(value_info(name, dims));
        Ok(name.to_owned())
    }

    /// Declares an already defined value as a float graph output.
    pub fn output(&mut self, name: &str, dims: &[Dim]) -> Result<(), OnnxError> {
        if !self.defined.contains(name) {
            return Err(OnnxError::UndefinedValue(name.to_owned()));
        }
        self.outputs.push(value_info(name, dims));
        Ok(())
    }

    /// Adds a float32 constant.
    pub fn initializer_f32(
        &mut self,
        name: &str,
        dims: &[i64],
        values: &[f32],
    ) -> Result<String, OnnxError> {
        check_len(name, dims, values.len())?;
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, DataType::Float, raw)
    }

    /// Adds a float16 constant converted from `values`. Refuses values beyond the f16
    /// range rather than silently storing ∞.
    pub fn initializer_f16(
        &mut self,
        name: &str,
        dims: &[i64],
        values: &[f32],
    ) -> Result<String, OnnxError> {
        check_len(name, dims, values.len())?;
        if let Some(&v) = values.iter().find(|v| v.abs() > F16_MAX) {
            return Err(OnnxError::Fp16Overflow {
                name: name.to_owned(),
                value: v,
            });
        }
        let raw = values
            .iter()
            .flat_map(|&v| f32_to_f16_bits(v).to_le_bytes())
            .collect();
        self.push_initializer(name, dims, DataType::Float16, raw)
    }

    /// Adds an int64 constant (shapes, axes).
    pub fn initializer_i64(
        &mut self,
        name: &str,
        dims: &[i64],
        values: &[i64],
    ) -> Result<String, OnnxError> {
        check_len(name, dims, values.len())?;
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, DataType::Int64, raw)
    }

    fn push_initializer(
        &mut self,
        name: &str,
        dims: &[i64],
        data_type: DataType,
        raw_data: Vec<u8>,
    ) -> Result<String, OnnxError> {
        self.define(name)?;
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type as i32,
            name: name.to_owned(),
            raw_data,
            ..Default::default()
        });
        Ok(name.to_owned())
    }

    /// Adds a node with a single output named like the node itself, and returns that name.
    /// Every input must already be defined, so the node list stays topologically sorted.
    pub fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> Result<String, OnnxError> {
        if let Some(missing) = inputs.iter().find(|i| !self.defined.contains(**i)) {
            return Err(OnnxError::UndefinedValue((*missing).to_owned()));
        }
        if !self.node_names.insert(name.to_owned()) {
            return Err(OnnxError::DuplicateName(name.to_owned()));
        }
        self.define(name)?;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![name.to_owned()],
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attribute: attributes,
            ..Default::default()
        });
        Ok(name.to_owned())
    }

    /// Wraps the graph into a model with IR [`IR_VERSION`] and opset [`OPSET_VERSION`].
    pub fn finish(self, graph_name: &str, meta: ModelMeta) -> ModelProto {
        let graph = GraphProto {
            node: self.nodes,
            name: graph_name.to_owned(),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: meta.producer_name,
            producer_version: meta.producer_version,
            doc_string: meta.doc_string,
            graph: Some(graph),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET_VERSION,
            }],
            metadata_props: meta
                .metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

fn check_len(name: &str, dims: &[i64], len: usize) -> Result<(), OnnxError> {
    let expected: i64 = dims.iter().product();
    if dims.iter().any(|&d| d < 0) || expected as usize != len {
        return Err(OnnxError::Length {
            name: name.to_owned(),
            shape: dims.to_vec(),
            found: len,
        });
    }
    Ok(())
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An `INT` attribute.
pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// An `INTS` attribute (kernel shapes, strides, pads, axes).
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// A `FLOAT` attribute.
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}
