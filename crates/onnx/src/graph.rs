//! Writes a trained ResNet backbone as an ONNX encoder: images → (normalised) embedding.
//!
//! The structure is [`simsiam::arch::layout`], the same description the trainer's tch model
//! is built from, so no libtorch is needed: the caller hands over the variables by name,
//! and the same code serves the trainer (which reads a `VarStore`) and tests and fixture
//! bundles (which make weights up). Batch norm is folded into the
//! preceding convolution, so the graph has only Conv, Relu, MaxPool, Add, pooling and the
//! optional normalisation, all cheap to run and supported by every ONNX runtime.

use crate::builder::{attr_int, attr_ints, Dim, GraphBuilder, ModelMeta};
use crate::builder::{IR_VERSION, OPSET_VERSION};
use crate::error::OnnxError;
use crate::fold::fold_batch_norm;
use prost::Message;
use simsiam::arch::{layout, Backbone, Block, ConvBn, Layout};

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
        let wshape = [c.cout, c.cin, c.kernel, c.kernel];
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
        let pad = c.padding();
        let attrs = vec![
            attr_ints("kernel_shape", &[c.kernel, c.kernel]),
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
/// named as in [`simsiam::arch`] (`conv1.weight`, `layer2.0.downsample.1.running_var`,
/// ...); a missing or misshaped variable is an error.
pub fn export_encoder_with_info(
    spec: &EncoderSpec,
    weight: WeightFn<'_>,
) -> Result<(Vec<u8>, ExportInfo), OnnxError> {
    check(spec)?;
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
    let mut y = ex.g.input(INPUT_NAME, &dims)?;
    y = ex.stem(&y, &lay)?;
    for block in &lay.blocks {
        y = ex.residual_block(&y, block)?;
    }
    ex.head(&y, spec.l2_normalize)?;
    ex.g.output(OUTPUT_NAME, &[batch, Dim::Fixed(lay.feature_dim)])?;
    let info = ExportInfo {
        nodes: ex.g.node_count(),
        opset: OPSET_VERSION,
        ir_version: IR_VERSION,
        output_dim: lay.feature_dim as usize,
        parameters: ex.parameters,
    };
    let model = ex.g.finish("simsiam_encoder", model_meta(spec));
    Ok((model.encode_to_vec(), info))
}

fn check(spec: &EncoderSpec) -> Result<(), OnnxError> {
    if spec.input_size == 0 {
        return Err(OnnxError::Spec("input_size must be positive".into()));
    }
    if !(spec.bn_eps.is_finite() && spec.bn_eps >= 0.0) {
        return Err(OnnxError::Spec(format!(
            "bn_eps {} is invalid",
            spec.bn_eps
        )));
    }
    Ok(())
}

impl Exporter<'_> {
    /// Stem convolution, ReLU and (ImageNet stem) the 3×3/2 max-pool.
    fn stem(&mut self, x: &str, lay: &Layout) -> Result<String, OnnxError> {
        let y = self.conv_bn(x, &lay.stem)?;
        let y = self.relu(&y, "relu")?;
        if !lay.max_pool {
            return Ok(y);
        }
        let attrs = vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ];
        self.g.node("MaxPool", "maxpool", &[&y], attrs)
    }

    /// `relu(branch(x) + shortcut(x))`, ReLU between the branch's convolutions.
    fn residual_block(&mut self, x: &str, block: &Block) -> Result<String, OnnxError> {
        let mut z = x.to_owned();
        for (i, c) in block.convs.iter().enumerate() {
            z = self.conv_bn(&z, c)?;
            if i + 1 < block.convs.len() {
                z = self.relu(&z, &format!("{}.relu{}", block.name, i + 1))?;
            }
        }
        let shortcut = match &block.downsample {
            Some(d) => self.conv_bn(x, d)?,
            None => x.to_owned(),
        };
        let sum = self.g.node(
            "Add",
            &format!("{}.add", block.name),
            &[&z, &shortcut],
            vec![],
        )?;
        self.relu(&sum, &format!("{}.relu", block.name))
    }

    /// Global average pooling and flattening to `[batch, D]`, named [`OUTPUT_NAME`]; with
    /// `l2_normalize`, divided by `max(‖x‖₂, 1e-12)` (ReduceL2 → Max → Div), exactly what
    /// `F.normalize` computes, rather than `LpNormalization`, which divides by zero for a
    /// zero vector.
    fn head(&mut self, x: &str, l2_normalize: bool) -> Result<String, OnnxError> {
        let pooled = self.g.node("GlobalAveragePool", "avgpool", &[x], vec![])?;
        let flat_name = if l2_normalize { "flatten" } else { OUTPUT_NAME };
        let flat = self
            .g
            .node("Flatten", flat_name, &[&pooled], vec![attr_int("axis", 1)])?;
        if !l2_normalize {
            return Ok(flat);
        }
        let attrs = vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)];
        let norm = self.g.node("ReduceL2", "l2norm", &[&flat], attrs)?;
        let eps = self.g.initializer_f32("l2norm.eps", &[], &[L2_EPS])?;
        let clamped = self.g.node("Max", "l2norm.clamp", &[&norm, &eps], vec![])?;
        self.g.node("Div", OUTPUT_NAME, &[&flat, &clamped], vec![])
    }
}

fn model_meta(spec: &EncoderSpec) -> ModelMeta {
    let side = spec.input_size;
    ModelMeta {
        producer_name: spec.producer.clone(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        doc_string: format!(
            "SimSiam {} encoder, {side}x{side} input, BN folded{}",
            spec.backbone.name(),
            if spec.l2_normalize {
                ", L2-normalised output"
            } else {
                ""
            }
        ),
        metadata: spec.metadata.clone(),
    }
}
