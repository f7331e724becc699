//! ResNet backbones and the SimSiam model (Chen & He, 2020), as functions of `nn::Path`.
//!
//! Layer names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, ...), so checkpoints
//! read like PyTorch ones and the ONNX exporter can walk the structure by name.

use simsiam::config::{Backbone, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A convolution without bias followed by batch normalisation.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
}

impl ConvBn {
    /// `zero_bn` initialises the BN scale to 0: the last BN of a residual branch, so each
    /// block starts as the identity (`zero_init_residual`, as in the SimSiam recipe).
    fn new(
        p: &nn::Path,
        idx: usize,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        zero_bn: bool,
    ) -> Self {
        Self::named(
            p,
            &format!("conv{idx}"),
            &format!("bn{idx}"),
            (cin, cout, k, stride),
            zero_bn,
        )
    }

    fn named(
        p: &nn::Path,
        conv: &str,
        bn: &str,
        (cin, cout, k, stride): (i64, i64, i64, i64),
        zero_bn: bool,
    ) -> Self {
        let padding = k / 2;
        let cfg = nn::ConvConfig {
            stride,
            padding,
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
            ws_init: nn::Init::Const(if zero_bn { 0.0 } else { 1.0 }),
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(p / conv, cin, cout, k, cfg),
            bn: nn::batch_norm2d(p / bn, cout, bn_cfg),
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
    fn basic(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let convs = vec![
            ConvBn::new(p, 1, cin, cout, 3, stride, false),
            ConvBn::new(p, 2, cout, cout, 3, 1, true),
        ];
        Self {
            convs,
            downsample: shortcut(p, cin, cout, stride),
        }
    }

    fn bottleneck(p: &nn::Path, cin: i64, width: i64, stride: i64) -> Self {
        let cout = width * 4;
        let convs = vec![
            ConvBn::new(p, 1, cin, width, 1, 1, false),
            ConvBn::new(p, 2, width, width, 3, stride, false),
            ConvBn::new(p, 3, width, cout, 1, 1, true),
        ];
        Self {
            convs,
            downsample: shortcut(p, cin, cout, stride),
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

fn shortcut(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Option<ConvBn> {
    (stride != 1 || cin != cout).then(|| {
        ConvBn::named(
            &(p / "downsample"),
            "conv",
            "bn",
            (cin, cout, 1, stride),
            false,
        )
    })
}

/// ResNet without its classifier: images → global-average-pooled features.
#[derive(Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    /// ImageNet stem (7×7/2 conv + 3×3/2 max-pool) or small-image stem (3×3/1, no pool).
    pub max_pool: bool,
    pub layers: Vec<Vec<Block>>,
    pub feature_dim: i64,
}

impl ResNet {
    pub fn new(p: &nn::Path, backbone: Backbone, small_stem: bool) -> Self {
        let stem = if small_stem {
            ConvBn::new(p, 1, 3, 64, 3, 1, false)
        } else {
            ConvBn::new(p, 1, 3, 64, 7, 2, false)
        };
        let (depths, bottleneck): (&[usize], bool) = match backbone {
            Backbone::Resnet18 => (&[2, 2, 2, 2], false),
            Backbone::Resnet50 => (&[3, 4, 6, 3], true),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let mut cin = 64;
        let mut layers = Vec::new();
        for (i, &depth) in depths.iter().enumerate() {
            let width = 64 << i;
            let lp = p / format!("layer{}", i + 1);
            let blocks = (0..depth)
                .map(|b| {
                    let stride = if b == 0 && i > 0 { 2 } else { 1 };
                    let bp = &lp / b.to_string();
                    let block = if bottleneck {
                        Block::bottleneck(&bp, cin, width, stride)
                    } else {
                        Block::basic(&bp, cin, width, stride)
                    };
                    cin = width * expansion;
                    block
                })
                .collect();
            layers.push(blocks);
        }
        Self {
            stem,
            max_pool: !small_stem,
            layers,
            feature_dim: cin,
        }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train).relu();
        if self.max_pool {
            y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in self.layers.iter().flatten() {
            y = block.forward_t(&y, train);
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// A linear layer initialised as PyTorch's `nn.Linear`: weight and bias uniform in
/// ±1/√fan_in. tch's default (Kaiming uniform with the ReLU gain) is √6 ≈ 2.4× wider, which
/// changes how fast the projector and predictor move at the recipe's learning rate.
fn torch_linear(p: &nn::Path, din: i64, dout: i64, bias: bool) -> nn::Linear {
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
        assert!(vars.contains_key("backbone.layer2.0.downsample.conv.weight"));
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
