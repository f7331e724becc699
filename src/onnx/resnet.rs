//! The ResNet structure the exporter walks, and batch-norm folding.
//!
//! Mirrors `ResNet::new` in `src/train/model.rs` (torchvision naming) without tch, so the
//! exporter, [`encoder_variables`] and tests share one description of the backbone.

use crate::config::Backbone;

/// A convolution without bias followed by batch norm, as in the trained model.
#[derive(Clone, Debug)]
pub(crate) struct ConvBn {
    pub conv: String,
    pub bn: String,
    pub cin: i64,
    pub cout: i64,
    pub k: i64,
    pub stride: i64,
}

impl ConvBn {
    fn new(conv: String, bn: String, (cin, cout, k, stride): (i64, i64, i64, i64)) -> Self {
        Self {
            conv,
            bn,
            cin,
            cout,
            k,
            stride,
        }
    }

    /// The variables this unit reads, with their shapes.
    fn variables(&self) -> Vec<(String, Vec<i64>)> {
        let mut v = vec![(
            format!("{}.weight", self.conv),
            vec![self.cout, self.cin, self.k, self.k],
        )];
        for p in ["weight", "bias", "running_mean", "running_var"] {
            v.push((format!("{}.{p}", self.bn), vec![self.cout]));
        }
        v
    }
}

/// One residual block: its convolutions in order and the optional projection shortcut.
pub(crate) struct Block {
    pub name: String,
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

/// A whole backbone, stem to last block.
pub(crate) struct Layout {
    pub stem: ConvBn,
    pub max_pool: bool,
    pub blocks: Vec<Block>,
    pub feature_dim: i64,
}

/// The backbone's units in forward order; the single description both the exporter and
/// [`encoder_variables`] walk, kept in step with `ResNet::new` in `src/train/model.rs`.
pub(crate) fn layout(backbone: Backbone, small_stem: bool) -> Layout {
    let stem_shape = if small_stem {
        (3, 64, 3, 1)
    } else {
        (3, 64, 7, 2)
    };
    let stem = ConvBn::new("conv1".into(), "bn1".into(), stem_shape);
    let (depths, bottleneck): (&[usize], bool) = match backbone {
        Backbone::Resnet18 => (&[2, 2, 2, 2], false),
        Backbone::Resnet50 => (&[3, 4, 6, 3], true),
    };
    let mut cin = 64;
    let mut blocks = Vec::new();
    for (i, &depth) in depths.iter().enumerate() {
        let width = 64 << i;
        for b in 0..depth {
            let name = format!("layer{}.{b}", i + 1);
            let stride = if b == 0 && i > 0 { 2 } else { 1 };
            let unit = |idx: usize, shape| {
                ConvBn::new(
                    format!("{name}.conv{idx}"),
                    format!("{name}.bn{idx}"),
                    shape,
                )
            };
            let (convs, cout) = if bottleneck {
                let units = vec![
                    unit(1, (cin, width, 1, 1)),
                    unit(2, (width, width, 3, stride)),
                    unit(3, (width, width * 4, 1, 1)),
                ];
                (units, width * 4)
            } else {
                let units = vec![
                    unit(1, (cin, width, 3, stride)),
                    unit(2, (width, width, 3, 1)),
                ];
                (units, width)
            };
            let downsample = (stride != 1 || cin != cout).then(|| {
                ConvBn::new(
                    format!("{name}.downsample.conv"),
                    format!("{name}.downsample.bn"),
                    (cin, cout, 1, stride),
                )
            });
            blocks.push(Block {
                name,
                convs,
                downsample,
            });
            cin = cout;
        }
    }
    Layout {
        stem,
        max_pool: !small_stem,
        blocks,
        feature_dim: cin,
    }
}

/// Embedding width of a backbone: 512 (ResNet-18) or 2048 (ResNet-50).
pub fn feature_dim(backbone: Backbone) -> usize {
    layout(backbone, false).feature_dim as usize
}

/// Every variable [`super::export_encoder`] reads, with its expected shape, names without the
/// `backbone.` prefix. Lets a caller check a checkpoint before exporting.
pub fn encoder_variables(backbone: Backbone, small_stem: bool) -> Vec<(String, Vec<i64>)> {
    let lay = layout(backbone, small_stem);
    let mut units = vec![&lay.stem];
    for b in &lay.blocks {
        units.extend(b.convs.iter().chain(b.downsample.as_ref()));
    }
    units.iter().flat_map(|u| u.variables()).collect()
}

/// Folds inference-mode batch norm into the convolution before it:
/// `W' = W·γ/√(var+eps)` per output channel and `b' = β − μ·γ/√(var+eps)`.
/// Computed in f64 so folding adds no error beyond the final rounding to f32.
/// Returns the channel whose result is not finite (e.g. `var + eps ≤ 0`) as the error.
pub fn fold_batch_norm(
    w: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Result<(Vec<f32>, Vec<f32>), usize> {
    let cout = gamma.len();
    let per_channel = w.len() / cout.max(1);
    let mut wf = Vec::with_capacity(w.len());
    let mut bias = Vec::with_capacity(cout);
    for c in 0..cout {
        let denom = f64::from(var[c]) + eps;
        let scale = f64::from(gamma[c]) / denom.sqrt();
        let b = f64::from(beta[c]) - f64::from(mean[c]) * scale;
        if denom <= 0.0 || !scale.is_finite() || !(b as f32).is_finite() {
            return Err(c);
        }
        bias.push(b as f32);
        let row = &w[c * per_channel..(c + 1) * per_channel];
        for &x in row {
            let v = (f64::from(x) * scale) as f32;
            if !v.is_finite() {
                return Err(c);
            }
            wf.push(v);
        }
    }
    Ok((wf, bias))
}
