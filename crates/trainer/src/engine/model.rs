//! ResNet backbones and the SimSiam model (Chen & He, 2020), as functions of `nn::Path`.
//!
//! The backbone is built from [`simsiam::arch::layout`], so its variables carry
//! torchvision's names (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, ...)
//! and the ONNX writer, which walks the same layout, finds them by name.

use crate::config::ModelConfig;
use simsiam::arch::{self, Backbone};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A convolution without bias followed by batch normalisation.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
}

/// `root / "layer1" / "0" / "conv1"` for the dotted name `layer1.0.conv1` (tch paths
/// cannot contain dots).
fn sub<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let first = root.sub(parts.next().unwrap_or_default());
    parts.fold(first, |p, part| p / part)
}

impl ConvBn {
    /// The unit `spec` describes, under `root`. A `zero_init` batch norm starts at scale 0,
    /// so its residual block starts as the identity.
    fn new(root: &nn::Path, spec: &arch::ConvBn) -> Self {
        let cfg = nn::ConvConfig {
            stride: spec.stride,
            padding: spec.padding(),
            bias: false,
            // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            ..Default::default()
        };
        let bn_cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Const(if spec.zero_init { 0.0 } else { 1.0 }),
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(sub(root, &spec.conv), spec.cin, spec.cout, spec.kernel, cfg),
            bn: nn::batch_norm2d(sub(root, &spec.bn), spec.cout, bn_cfg),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// A residual block: 2 convolutions (basic) or 3 (bottleneck), ReLU between them,
/// plus an optional projection shortcut.
#[derive(Debug)]
pub struct Block {
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl Block {
    fn new(root: &nn::Path, spec: &arch::Block) -> Self {
        Self {
            convs: spec.convs.iter().map(|c| ConvBn::new(root, c)).collect(),
            downsample: spec.downsample.as_ref().map(|d| ConvBn::new(root, d)),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            y = c.forward_t(&y, train);
            if i + 1 < self.convs.len() {
                y = y.relu();
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.forward_t(x, train),
            None => x.shallow_clone(),
        };
        (y + identity).relu()
    }
}

/// ResNet without its classifier: images → global-average-pooled features, built from
/// [`arch::layout`], the description the ONNX writer walks too.
#[derive(Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    /// ImageNet stem (7×7/2 conv + 3×3/2 max-pool) or small-image stem (3×3/1, no pool).
    pub max_pool: bool,
    pub blocks: Vec<Block>,
    pub feature_dim: i64,
}

impl ResNet {
    pub fn new(p: &nn::Path, backbone: Backbone, small_stem: bool) -> Self {
        let layout = arch::layout(backbone, small_stem);
        Self {
            stem: ConvBn::new(p, &layout.stem),
            max_pool: layout.max_pool,
            blocks: layout.blocks.iter().map(|b| Block::new(p, b)).collect(),
            feature_dim: layout.feature_dim,
        }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train).relu();
        if self.max_pool {
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in &self.blocks {
            y = block.forward_t(&y, train);
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// A linear layer initialised as PyTorch's `nn.Linear`: weight and bias uniform in
/// ±1/√fan_in. tch's default (Kaiming uniform with the ReLU gain) is √6 ≈ 2.4× wider, which
/// changes how fast the projector and predictor move at the recipe's learning rate.
pub(crate) fn torch_linear(p: &nn::Path, din: i64, dout: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (din as f64).sqrt();
    let uniform = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        din,
        dout,
        nn::LinearConfig {
            ws_init: uniform,
            bs_init: Some(uniform),
            bias,
        },
    )
}

/// Linear (no bias) → BatchNorm, the unit of both MLPs.
#[derive(Debug)]
struct LinearBn {
    fc: nn::Linear,
    bn: nn::BatchNorm,
}

impl LinearBn {
    fn new(p: &nn::Path, idx: usize, din: i64, dout: i64, affine: bool) -> Self {
        let bn = nn::BatchNormConfig {
            affine,
            ..Default::default()
        };
        Self {
            fc: torch_linear(&(p / format!("fc{idx}")), din, dout, false),
            bn: nn::batch_norm1d(p / format!("bn{idx}"), dout, bn),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.fc).apply_t(&self.bn, train)
    }
}

/// Projection MLP: [Linear → BN → ReLU] × (layers − 1), then Linear → BN without affine.
#[derive(Debug)]
pub struct Projector {
    hidden: Vec<LinearBn>,
    out: LinearBn,
}

impl Projector {
    fn new(p: &nn::Path, din: i64, dim: i64, layers: usize) -> Self {
        let hidden = (1..layers)
            .map(|i| LinearBn::new(p, i, if i == 1 { din } else { dim }, dim, true))
            .collect();
        let out = LinearBn::new(p, layers, dim, dim, false);
        Self { hidden, out }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self
            .hidden
            .iter()
            .fold(x.shallow_clone(), |y, l| l.forward_t(&y, train).relu());
        self.out.forward_t(&y, train)
    }
}

/// Prediction MLP: Linear(dim → hidden, no bias) → BN → ReLU → Linear(hidden → dim).
/// The bottleneck (512 for 2048) matters, per the paper's ablation.
#[derive(Debug)]
pub struct Predictor {
    layer1: LinearBn,
    fc2: nn::Linear,
}

impl Predictor {
    fn new(p: &nn::Path, dim: i64, hidden: i64) -> Self {
        Self {
            layer1: LinearBn::new(p, 1, dim, hidden, true),
            fc2: torch_linear(&(p / "fc2"), hidden, dim, true),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.layer1.forward_t(x, train).relu().apply(&self.fc2)
    }
}

/// The whole SimSiam model: encoder f = backbone + projector, predictor h.
#[derive(Debug)]
pub struct SimSiam {
    pub backbone: ResNet,
    pub projector: Projector,
    pub predictor: Predictor,
}

/// Outputs of one symmetric step: predictions `p` and projections `z` of both views.
pub struct Views {
    pub p1: Tensor,
    pub p2: Tensor,
    pub z1: Tensor,
    pub z2: Tensor,
}

/// Variable-store group of the predictor's parameters (the "fix predictor lr" option
/// gives this group a constant learning rate).
pub const PREDICTOR_GROUP: usize = 1;

impl SimSiam {
    pub fn new(root: &nn::Path, cfg: &ModelConfig) -> Self {
        let backbone = ResNet::new(&(root / "backbone"), cfg.backbone, cfg.small_stem);
        let projector = Projector::new(
            &(root / "projector"),
            backbone.feature_dim,
            cfg.proj_dim,
            cfg.proj_layers,
        );
        let predictor = Predictor::new(
            &(root.set_group(PREDICTOR_GROUP) / "predictor"),
            cfg.proj_dim,
            cfg.pred_hidden,
        );
        Self {
            backbone,
            projector,
            predictor,
        }
    }

    /// z = projector(backbone(x)).
    pub fn project(&self, x: &Tensor, train: bool) -> Tensor {
        self.projector
            .forward_t(&self.backbone.forward_t(x, train), train)
    }

    /// Both views through the encoder and the predictor (separate passes, so batch
    /// statistics are per view, as in the reference implementation).
    pub fn forward_views(&self, x1: &Tensor, x2: &Tensor, train: bool) -> Views {
        let z1 = self.project(x1, train);
        let z2 = self.project(x2, train);
        let p1 = self.predictor.forward_t(&z1, train);
        let p2 = self.predictor.forward_t(&z2, train);
        Views { p1, p2, z1, z2 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn cfg(backbone: Backbone, small_stem: bool) -> ModelConfig {
        ModelConfig {
            backbone,
            small_stem,
            proj_layers: 2,
            proj_dim: 64,
            pred_hidden: 16,
        }
    }

    #[test]
    fn resnet18_shapes_names_and_zero_init() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = SimSiam::new(&vs.root(), &cfg(Backbone::Resnet18, false));
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let v = m.forward_views(&x, &x, true);
        assert_eq!(v.p1.size(), [2, 64]);
        assert_eq!(v.z2.size(), [2, 64]);
        assert_eq!(m.backbone.feature_dim, 512);
        let vars = vs.variables();
        assert!(vars.contains_key("backbone.layer1.0.conv1.weight"));
        assert!(vars.contains_key("backbone.layer2.0.downsample.0.weight"));
        assert!(vars.contains_key("backbone.layer2.0.downsample.1.running_var"));
        assert!(
            !vars.contains_key("projector.bn2.weight"),
            "last projector BN has no affine"
        );
        let zero = &vars["backbone.layer3.1.bn2.weight"];
        assert_eq!(zero.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let one = &vars["backbone.layer3.1.bn1.weight"];
        assert_eq!(one.mean(Kind::Float).double_value(&[]), 1.0);
        // 11.18M backbone parameters, as torchvision's resnet18 without fc
        let n: i64 = vars
            .iter()
            .filter(|(k, _)| {
                k.starts_with("backbone.") && !k.contains("running") && !k.contains("num_batches")
            })
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(n, 11_176_512);
    }

    #[test]
    fn resnet50_small_stem_keeps_resolution() {
        let vs = nn::VarStore::new(Device::Cpu);
        let r = ResNet::new(&vs.root(), Backbone::Resnet50, true);
        assert_eq!(r.feature_dim, 2048);
        assert!(!r.max_pool);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        assert_eq!(r.forward_t(&x, false).size(), [2, 2048]);
        assert!(vs.variables().contains_key("layer4.0.bn3.weight"));
    }
}
