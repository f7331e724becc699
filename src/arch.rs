//! The ResNet backbones' layout: the one description of which convolutions and batch norms
//! a backbone has, in forward order, with their torchvision names and shapes.
//!
//! The trainer builds its tch model from it (`simsiam_trainer::model`) and the ONNX writer
//! walks it (`simsiam_onnx`), so the two cannot disagree about a layer. Names are
//! torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, ...), so a
//! checkpoint's variables read like a PyTorch `resnet18().state_dict()` without `fc`.
//!
//! ```
//! use simsiam::arch::{layout, Backbone};
//! let r18 = layout(Backbone::Resnet18, false);
//! assert_eq!(r18.blocks.len(), 8);
//! assert_eq!(r18.feature_dim, 512);
//! assert_eq!(r18.blocks[2].downsample.as_ref().map(|d| d.conv.as_str()), Some("layer2.0.downsample.0"));
//! ```

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    Resnet18,
    Resnet50,
}

impl Backbone {
    /// Embedding width: 512 (ResNet-18) or 2048 (ResNet-50).
    pub fn feature_dim(self) -> usize {
        layout(self, false).feature_dim as usize
    }

    /// The configuration spelling (`resnet18`, `resnet50`).
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet50 => "resnet50",
        }
    }
}

/// A convolution without bias followed by batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvBn {
    /// Dotted variable prefix of the convolution, e.g. `layer1.0.conv1`.
    pub conv: String,
    /// Dotted variable prefix of the batch norm, e.g. `layer1.0.bn1`.
    pub bn: String,
    pub cin: i64,
    pub cout: i64,
    pub kernel: i64,
    pub stride: i64,
    /// The last batch norm of a residual branch starts at scale 0, so each block starts as
    /// the identity (torchvision's `zero_init_residual`, part of the SimSiam recipe).
    pub zero_init: bool,
}

impl ConvBn {
    fn new(conv: String, bn: String, (cin, cout, kernel, stride): (i64, i64, i64, i64)) -> Self {
        Self {
            conv,
            bn,
            cin,
            cout,
            kernel,
            stride,
            zero_init: false,
        }
    }

    /// Same-size padding of this kernel.
    pub fn padding(&self) -> i64 {
        self.kernel / 2
    }

    /// The variables this unit owns, with their shapes.
    pub fn variables(&self) -> Vec<(String, Vec<i64>)> {
        let mut v = vec![(
            format!("{}.weight", self.conv),
            vec![self.cout, self.cin, self.kernel, self.kernel],
        )];
        for p in ["weight", "bias", "running_mean", "running_var"] {
            v.push((format!("{}.{p}", self.bn), vec![self.cout]));
        }
        v
    }
}

/// One residual block: its convolutions in order (ReLU between them) and the optional
/// projection shortcut.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Dotted name, e.g. `layer3.1`.
    pub name: String,
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

/// A whole backbone, stem to last block, without the classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub stem: ConvBn,
    /// ImageNet stem (7×7/2 convolution + 3×3/2 max-pool) or small-image stem (3×3/1,
    /// no pool).
    pub max_pool: bool,
    pub blocks: Vec<Block>,
    pub feature_dim: i64,
}

impl Layout {
    /// Every conv + BN unit in forward order (each block's shortcut after its branch).
    pub fn units(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem).chain(
            self.blocks
                .iter()
                .flat_map(|b| b.convs.iter().chain(b.downsample.as_ref())),
        )
    }

    /// Every variable of the backbone with its shape (names without any prefix).
    pub fn variables(&self) -> Vec<(String, Vec<i64>)> {
        self.units().flat_map(ConvBn::variables).collect()
    }
}

/// The layout of `backbone`, with the ImageNet stem or the small-image one.
pub fn layout(backbone: Backbone, small_stem: bool) -> Layout {
    let stem_shape = if small_stem {
        (3, 64, 3, 1)
    } else {
        (3, 64, 7, 2)
    };
    let (depths, bottleneck): (&[usize], bool) = match backbone {
        Backbone::Resnet18 => (&[2, 2, 2, 2], false),
        Backbone::Resnet50 => (&[3, 4, 6, 3], true),
    };
    let mut cin = 64;
    let mut blocks = Vec::new();
    for (stage, &depth) in depths.iter().enumerate() {
        for index in 0..depth {
            let name = format!("layer{}.{index}", stage + 1);
            let stride = if index == 0 && stage > 0 { 2 } else { 1 };
            let block = block(name, cin, 64 << stage, stride, bottleneck);
            cin = block.convs.last().map_or(cin, |c| c.cout);
            blocks.push(block);
        }
    }
    Layout {
        stem: ConvBn::new("conv1".into(), "bn1".into(), stem_shape),
        max_pool: !small_stem,
        blocks,
        feature_dim: cin,
    }
}

/// A basic block (two 3×3 convolutions) or a bottleneck (1×1, 3×3, 1×1 with 4× expansion),
/// the stride on the 3×3 as in torchvision, and a 1×1 shortcut when the shape changes.
fn block(name: String, cin: i64, width: i64, stride: i64, bottleneck: bool) -> Block {
    let unit = |idx: usize, shape| {
        ConvBn::new(
            format!("{name}.conv{idx}"),
            format!("{name}.bn{idx}"),
            shape,
        )
    };
    let mut convs = if bottleneck {
        vec![
            unit(1, (cin, width, 1, 1)),
            unit(2, (width, width, 3, stride)),
            unit(3, (width, width * 4, 1, 1)),
        ]
    } else {
        vec![
            unit(1, (cin, width, 3, stride)),
            unit(2, (width, width, 3, 1)),
        ]
    };
    if let Some(last) = convs.last_mut() {
        last.zero_init = true;
    }
    let cout = convs.last().map_or(width, |c| c.cout);
    let downsample = (stride != 1 || cin != cout).then(|| {
        ConvBn::new(
            format!("{name}.downsample.0"),
            format!("{name}.downsample.1"),
            (cin, cout, 1, stride),
        )
    });
    Block {
        name,
        convs,
        downsample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(l: &Layout) -> i64 {
        l.variables()
            .iter()
            .filter(|(name, _)| !name.contains("running"))
            .map(|(_, shape)| shape.iter().product::<i64>())
            .sum()
    }

    #[test]
    fn parameter_counts_match_torchvision_without_fc() {
        // torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters, of which
        // fc has 513,000 and 2,049,000.
        assert_eq!(parameters(&layout(Backbone::Resnet18, false)), 11_176_512);
        assert_eq!(parameters(&layout(Backbone::Resnet50, false)), 23_508_032);
    }

    #[test]
    fn names_strides_and_zero_init_follow_torchvision() {
        let l = layout(Backbone::Resnet50, false);
        let names: Vec<&str> = l.units().map(|u| u.conv.as_str()).collect();
        assert_eq!(
            &names[..5],
            [
                "conv1",
                "layer1.0.conv1",
                "layer1.0.conv2",
                "layer1.0.conv3",
                "layer1.0.downsample.0"
            ]
        );
        let l2 = &l.blocks[3];
        assert_eq!(l2.name, "layer2.0");
        assert_eq!((l2.convs[0].stride, l2.convs[1].stride), (1, 2));
        assert!(l
            .blocks
            .iter()
            .all(|b| b.convs.last().is_some_and(|c| c.zero_init)));
        assert_eq!(l.units().filter(|u| u.zero_init).count(), 16);
        let small = layout(Backbone::Resnet18, true);
        assert_eq!(
            (small.stem.kernel, small.stem.stride, small.max_pool),
            (3, 1, false)
        );
        assert!(small.blocks[0].downsample.is_none());
        assert_eq!(Backbone::Resnet50.feature_dim(), 2048);
    }
}
