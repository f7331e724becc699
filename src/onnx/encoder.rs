//! Writes a trained ResNet backbone as an ONNX encoder: images → (normalised) embedding.
//!
//! The structure mirrors `src/train/model.rs` (torchvision naming) without linking libtorch:
//! the caller hands over the variables by name, so the same code serves the trainer (which
//! reads a `VarStore`) and tests (which make weights up). Batch norm is folded into the
//! preceding convolution, so the graph has only Conv, Relu, MaxPool, Add, pooling and the
//! optional normalisation, all cheap to run and supported by every ONNX runtime.

use super::builder::{attr_int, attr_ints, Dim, GraphBuilder, ModelMeta};
use super::builder::{IR_VERSION, OPSET_VERSION};
use super::resnet::{fold_batch_norm, layout, ConvBn};
use super::OnnxError;
use crate::config::Backbone;
use prost::Message;

/// Name of the graph input: float `[batch, 3, S, S]`, preprocessed like training images.
pub const INPUT_NAME: &str = "images";
/// Name of the graph output: float `[batch, D]`.
pub const OUTPUT_NAME: &str = "embedding";
/// Name of the symbolic batch axis of input and output.
pub const BATCH_DIM: &str = "batch";
/// Lower bound on the L2 norm before dividing, as `torch.nn.functional.normalize` uses, so
/// an all-zero embedding maps to zero instead of NaN.
pub const L2_EPS: f32 = 1e-12;

/// What to export and how.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderSpec {
    pub backbone: Backbone,
    /// 3×3 stride-1 stem without max-pool (must match the trained model).
    pub small_stem: bool,
    /// Side of the square input the graph declares.
    pub input_size: u32,
    /// Divide the embedding by its L2 norm, so cosine similarity is a dot product.
    pub l2_normalize: bool,
    /// The epsilon of the trained batch norms (tch's default is 1e-5).
    pub bn_eps: f64,
    /// Store convolution weights as float16 (half the file) and cast them back at load.
    pub fp16_weights: bool,
    pub producer: String,
    /// Written into the model's `metadata_props` (e.g. preprocessing, training run).
    pub metadata: Vec<(String, String)>,
}

impl EncoderSpec {
    /// Defaults: ImageNet stem, L2-normalised output, eps 1e-5, float32 weights.
    pub fn new(backbone: Backbone, input_size: u32) -> Self {
        Self {
            backbone,
            small_stem: false,
            input_size,
            l2_normalize: true,
            bn_eps: 1e-5,
            fp16_weights: false,
            producer: "simsiam".to_owned(),
            metadata: Vec::new(),
        }
    }
}

/// Facts about a written model, for logs and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub nodes: usize,
    pub opset: i64,
    pub ir_version: i64,
    /// Embedding width D.
    pub output_dim: usize,
    /// Number of stored weight values (folded convolution weights and biases).
    pub parameters: usize,
}

/// The weight lookup of [`export_encoder`]: name → (shape, row-major values).
pub type WeightFn<'w> = &'w dyn Fn(&str) -> Option<(Vec<i64>, Vec<f32>)>;

/// Adds folded Conv(+BN) units to a graph, reading the trained variables by name.
pub(crate) struct Exporter<'w> {
    pub g: GraphBuilder,
    weight: WeightFn<'w>,
    eps: f64,
    fp16: bool,
    pub parameters: usize,
}

impl<'w> Exporter<'w> {
    pub fn new(weight: WeightFn<'w>, eps: f64, fp16: bool) -> Self {
        Self {
            g: GraphBuilder::new(),
            weight,
            eps,
            fp16,
            parameters: 0,
        }
    }

    fn fetch(&self, name: &str, shape: &[i64]) -> Result<Vec<f32>, OnnxError> {
        let (found, values) =
            (self.weight)(name).ok_or_else(|| OnnxError::MissingWeight(name.to_owned()))?;
        if found != shape {
            return Err(OnnxError::Shape {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found,
            });
        }
        if values.len() as i64 != shape.iter().product::<i64>() {
            return Err(OnnxError::Length {
                name: name.to_owned(),
                shape: found,
                found: values.len(),
            });
        }
        Ok(values)
    }

    /// Emits one Conv with the batch norm folded in, reading `x`; returns its output name
    /// (the convolution's variable prefix, e.g. `layer1.0.conv1`).
    pub fn conv_bn(&mut self, x: &str, c: &ConvBn) -> Result<String, OnnxError> {
        let wshape = [c.cout, c.cin, c.k, c.k];
        let w = self.fetch(&format!("{}.weight", c.conv), &wshape)?;
        let bn = |p: &str| self.fetch(&format!("{}.{p}", c.bn), &[c.cout]);
        let (gamma, beta, mean, var) = (
            bn("weight")?,
            bn("bias")?,
            bn("running_mean")?,
            bn("running_var")?,
        );
        let (wf, bias) =
            fold_batch_norm(&w, &gamma, &beta, &mean, &var, self.eps).map_err(|channel| {
                OnnxError::NonFinite {
                    name: c.bn.clone(),
                    channel,
                }
            })?;
        self.parameters += wf.len() + bias.len();
        let wname = format!("{}.weight", c.conv);
        let w_in = if self.fp16 {
            let half = self
                .g
                .initializer_f16(&format!("{wname}_fp16"), &wshape, &wf)?;
            // Cast's output is named like the float weight, so the Conv reads the same name.
            self.g
                .node("Cast", &wname, &[&half], vec![attr_int("to", 1)])?
        } else {
            self.g.initializer_f32(&wname, &wshape, &wf)?
        };
        let b = self
            .g
            .initializer_f32(&format!("{}.bias", c.conv), &[c.cout], &bias)?;
        let pad = c.k / 2;
        let attrs = vec![
            attr_ints("kernel_shape", &[c.k, c.k]),
            attr_ints("strides", &[c.stride, c.stride]),
            attr_ints("pads", &[pad, pad, pad, pad]),
        ];
        self.g.node("Conv", &c.conv, &[x, &w_in, &b], attrs)
    }

    fn relu(&mut self, x: &str, name: &str) -> Result<String, OnnxError> {
        self.g.node("Relu", name, &[x], vec![])
    }
}

/// Writes the encoder as ONNX bytes. See [`export_encoder_with_info`].
pub fn export_encoder(spec: &EncoderSpec, weight: WeightFn<'_>) -> Result<Vec<u8>, OnnxError> {
    export_encoder_with_info(spec, weight).map(|(bytes, _)| bytes)
}

/// Writes the encoder as ONNX bytes: input [`INPUT_NAME`] `[batch, 3, S, S]`, output
/// [`OUTPUT_NAME`] `[batch, D]`. `weight(name)` returns a variable of the trained backbone,
/// named as in `src/train/model.rs` without the `backbone.` prefix (`conv1.weight`,
/// `layer2.0.downsample.bn.running_var`, ...); a missing or misshaped variable is an error.
///
/// L2 normalisation is `x / max(‖x‖₂, 1e-12)` (ReduceL2 → Max → Div), exactly what
/// `F.normalize` computes, rather than `LpNormalization`, which divides by zero for a zero
/// vector.
pub fn export_encoder_with_info(
    spec: &EncoderSpec,
    weight: WeightFn<'_>,
) -> Result<(Vec<u8>, ExportInfo), OnnxError> {
    if spec.input_size == 0 {
        return Err(OnnxError::Spec("input_size must be positive".into()));
    }
    if !(spec.bn_eps.is_finite() && spec.bn_eps >= 0.0) {
        return Err(OnnxError::Spec(format!(
            "bn_eps {} is invalid",
            spec.bn_eps
        )));
    }
    let lay = layout(spec.backbone, spec.small_stem);
    let mut ex = Exporter::new(weight, spec.bn_eps, spec.fp16_weights);
    let batch = Dim::Symbolic(BATCH_DIM.to_owned());
    let side = i64::from(spec.input_size);
    let dims = [
        batch.clone(),
        Dim::Fixed(3),
        Dim::Fixed(side),
        Dim::Fixed(side),
    ];
    let x = ex.g.input(INPUT_NAME, &dims)?;

    let mut y = ex.conv_bn(&x, &lay.stem)?;
    y = ex.relu(&y, "relu")?;
    if lay.max_pool {
        let attrs = vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ];
        y = ex.g.node("MaxPool", "maxpool", &[&y], attrs)?;
    }
    for block in &lay.blocks {
        let mut z = y.clone();
        for (i, c) in block.convs.iter().enumerate() {
            z = ex.conv_bn(&z, c)?;
            if i + 1 < block.convs.len() {
                z = ex.relu(&z, &format!("{}.relu{}", block.name, i + 1))?;
            }
        }
        let shortcut = match &block.downsample {
            Some(d) => ex.conv_bn(&y, d)?,
            None => y.clone(),
        };
        let sum = ex.g.node(
            "Add",
            &format!("{}.add", block.name),
            &[&z, &shortcut],
            vec![],
        )?;
        y = ex.relu(&sum, &format!("{}.relu", block.name))?;
    }
    y = ex.g.node("GlobalAveragePool", "avgpool", &[&y], vec![])?;
    let flat_name = if spec.l2_normalize {
        "flatten"
    } else {
        OUTPUT_NAME
    };
    y =
        ex.g.node("Flatten", flat_name, &[&y], vec![attr_int("axis", 1)])?;
    if spec.l2_normalize {
        let attrs = vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)];
        let norm = ex.g.node("ReduceL2", "l2norm", &[&y], attrs)?;
        let eps = ex.g.initializer_f32("l2norm.eps", &[], &[L2_EPS])?;
        let clamped = ex.g.node("Max", "l2norm.clamp", &[&norm, &eps], vec![])?;
        ex.g.node("Div", OUTPUT_NAME, &[&y, &clamped], vec![])?;
    }
    let output_dim = lay.feature_dim as usize;
    ex.g.output(OUTPUT_NAME, &[batch, Dim::Fixed(lay.feature_dim)])?;

    let info = ExportInfo {
        nodes: ex.g.node_count(),
        opset: OPSET_VERSION,
        ir_version: IR_VERSION,
        output_dim,
        parameters: ex.parameters,
    };
    let meta = ModelMeta {
        producer_name: spec.producer.clone(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        doc_string: format!(
            "SimSiam {:?} encoder, {side}x{side} input, BN folded{}",
            spec.backbone,
            if spec.l2_normalize {
                ", L2-normalised output"
            } else {
                ""
            }
        ),
        metadata: spec.metadata.clone(),
    };
    let model = ex.g.finish("simsiam_encoder", meta);
    Ok((model.encode_to_vec(), info))
}
