//! Trainer configuration: defaults ← TOML file ← `SIMSIAM_*` environment ← CLI flags.
//!
//! Everything is resolved and validated once, at start-up, into [`TrainConfig`]; a bad
//! value fails fast with an error that names its key (`optim.batch`, `model.backbone`...).
//! Environment overrides use `SIMSIAM_<SECTION>__<KEY>`, e.g. `SIMSIAM_OPTIM__EPOCHS=3`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use simsiam::arch::Backbone;
use simsiam::config::layered;
pub use simsiam::config::{ConfigError, Override};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset root: Stanford Dogs layout or one folder per class.
    pub root: Option<PathBuf>,
    /// Keep only the first N breeds (labels 1..=N of the split files).
    pub breeds: Option<usize>,
    /// At most M images per breed in each split.
    pub max_per_breed: Option<usize>,
    /// Crop to the annotated bounding box (Stanford layout with `Annotation/`).
    pub bbox_crop: bool,
    /// Model input side in pixels.
    pub image_size: u32,
    /// Images are cached in memory with their shorter side at this size; views are cropped
    /// from it and evaluation centre-crops `image_size` from it. 0 means `image_size × 5/4`.
    pub resize: u32,
    /// ImageFolder layout: fraction of each class held out for evaluation.
    pub test_fraction: f64,
    /// Augmentation worker threads (0: one per two cores, at least one).
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: None,
            breeds: None,
            max_per_breed: None,
            bbox_crop: false,
            image_size: 64,
            resize: 0,
            test_fraction: 0.2,
            workers: 0,
            prefetch: 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backbone: Backbone,
    /// 3×3 stride-1 first convolution and no max-pool (CIFAR-size images).
    pub small_stem: bool,
    /// Projector depth: 3 (ImageNet recipe) or 2 (CIFAR recipe).
    pub proj_layers: usize,
    pub proj_dim: i64,
    /// Predictor bottleneck width.
    pub pred_hidden: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            small_stem: false,
            proj_layers: 3,
            proj_dim: 2048,
            pred_hidden: 512,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub epochs: usize,
    pub batch: usize,
    /// lr = base_lr × batch / 256.
    pub base_lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Linear warm-up epochs before the cosine decay.
    pub warmup_epochs: usize,
    /// Keep the predictor at the initial lr while the rest decays (the paper's option).
    pub fix_pred_lr: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch: 64,
            base_lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_epochs: 0,
            fix_pred_lr: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSwitches {
    /// Gaussian blur (p = 0.5); off for small images, as the CIFAR recipe does.
    pub blur: bool,
}

impl Default for AugmentSwitches {
    fn default() -> Self {
        Self { blur: true }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Weighted kNN top-1 on the evaluation split every N epochs (0: only at the end).
    pub knn_every: usize,
    pub knn_k: usize,
    pub knn_temperature: f64,
    /// Collapse alarm when std(l2-normalised z) falls below this fraction of 1/√d.
    pub collapse_ratio: f64,
    /// Collapse alarm when the effective rank of a batch's normalised z falls below this
    /// (all outputs moving along fewer than this many directions; 0 disables).
    pub collapse_rank: f64,
    /// Stop training when the collapse alarm fires.
    pub stop_on_collapse: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            knn_every: 5,
            knn_k: 20,
            knn_temperature: 0.1,
            collapse_ratio: 0.3,
            collapse_rank: 2.0,
            stop_on_collapse: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    pub device: DeviceChoice,
    /// Precision of the forward pass: `fp32`, `bf16` (Hopper GPUs; CPUs with
    /// AVX512-BF16) or `fp16` (older GPUs; with loss scaling).
    pub precision: crate::engine::amp::Precision,
    /// Channels-last memory format for convolutions.
    pub channels_last: bool,
    /// Compute threads for libtorch (0: libtorch's default).
    pub threads: usize,
    pub out: PathBuf,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            device: DeviceChoice::Auto,
            precision: crate::engine::amp::Precision::Fp32,
            channels_last: false,
            threads: 0,
            out: PathBuf::from("runs/simsiam"),
        }
    }
}

/// The supervised stage after pretraining (`trainer finetune`): the whole encoder plus a
/// linear breed head, trained with cross-entropy on the training split's labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate of the breed head (absolute, not scaled by the batch).
    pub head_lr: f64,
    /// Peak learning rate of the backbone: smaller than the head's, so pretrained
    /// features are adjusted rather than overwritten in the first steps.
    pub backbone_lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Linear warm-up epochs before the cosine decay (both by step).
    pub warmup_epochs: usize,
    /// Cross-entropy label smoothing (0 = none).
    pub label_smoothing: f64,
    /// Fraction of every breed's training images held out as the validation slice.
    pub val_fraction: f64,
    /// Labelled images per breed to fine-tune on (seeded; absent = all but validation).
    pub labels_per_breed: Option<usize>,
    /// RandomResizedCrop's smallest area fraction.
    pub crop_scale_min: f32,
    /// Colour jitter strength (brightness, contrast, saturation; hue a quarter), p = 0.8.
    pub color_jitter: f32,
    /// Probability of showing a view zoomed out: shrunk onto a padded canvas, as a dog
    /// that fills only part of a user's full-frame photo.
    pub zoom_out_p: f32,
    /// Smallest width of a zoomed-out view's image, as a fraction of the canvas.
    pub zoom_out_min: f32,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch: 64,
            head_lr: 0.05,
            backbone_lr: 0.025,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 1,
            label_smoothing: 0.1,
            val_fraction: 0.1,
            labels_per_breed: None,
            crop_scale_min: 0.25,
            color_jitter: 0.3,
            zoom_out_p: 0.3,
            zoom_out_min: 0.4,
        }
    }
}

/// Switches for experiments that break the method on purpose.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Let gradients flow into the target branch: SimSiam then collapses (the paper's ablation).
    pub no_stop_grad: bool,
}

/// The whole, validated trainer configuration (also written to the run directory).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub augment: AugmentSwitches,
    pub monitor: MonitorConfig,
    pub run: RunConfig,
    pub debug: DebugConfig,
    pub finetune: FinetuneConfig,
}

/// The trainer's `SIMSIAM_*` environment variables: all of them except the server's
/// `SIMSIAM_SERVER_*`, which would otherwise read as unknown trainer keys.
fn trainer_env() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("SIMSIAM_") && !k.starts_with("SIMSIAM_SERVER_"))
        .collect()
}

impl TrainConfig {
    /// Layers the defaults, the file (if any), `SIMSIAM_*` variables and `overrides`,
    /// then validates. `file = None` reads `config/trainer.toml` when it exists.
    pub fn load(file: Option<&Path>, overrides: Vec<Override>) -> Result<Self, ConfigError> {
        let env = config::Environment::with_prefix("SIMSIAM")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(trainer_env()));
        let cfg: TrainConfig = layered(
            &TrainConfig::default(),
            file,
            "config/trainer.toml",
            env,
            overrides,
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This configuration (e.g. a run's, read from its checkpoint) with `overrides` applied
    /// and validated again.
    pub fn with_overrides(&self, overrides: Vec<Override>) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder().add_source(config::Config::try_from(self)?);
        for (key, value) in overrides {
            b = b.set_override(key, value)?;
        }
        let cfg: TrainConfig = b.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (d, m, o, mon) = (&self.data, &self.model, &self.optim, &self.monitor);
        let f = &self.finetune;
        let lr = |v: f64| v >= 0.0 && v.is_finite();
        // (key, the value is fine, what it must be)
        let rules = [
            (
                "data.image_size",
                d.image_size >= 16,
                "must be at least 16 pixels",
            ),
            (
                "data.resize",
                d.resize == 0 || d.resize >= d.image_size,
                "must be 0 (auto) or at least data.image_size",
            ),
            ("data.breeds", d.breeds != Some(0), "must be at least 1"),
            (
                "data.max_per_breed",
                d.max_per_breed != Some(0),
                "must be at least 1",
            ),
            (
                "data.test_fraction",
                (0.0..1.0).contains(&d.test_fraction),
                "must be in [0, 1)",
            ),
            ("data.prefetch", d.prefetch > 0, "must be at least 1"),
            (
                "model.proj_layers",
                (2..=3).contains(&m.proj_layers),
                "must be 2 or 3",
            ),
            (
                "model.proj_dim",
                m.proj_dim >= 2 && m.pred_hidden >= 1,
                "projector and predictor widths must be positive",
            ),
            ("optim.epochs", o.epochs > 0, "must be at least 1"),
            (
                "optim.batch",
                o.batch >= 2,
                "must be at least 2 (batch norm needs two samples)",
            ),
            (
                "optim.base_lr",
                o.base_lr > 0.0 && o.base_lr.is_finite(),
                "must be a positive number",
            ),
            (
                "optim.momentum",
                (0.0..1.0).contains(&o.momentum),
                "must be in [0, 1)",
            ),
            (
                "optim.weight_decay",
                o.weight_decay >= 0.0,
                "must not be negative",
            ),
            (
                "optim.warmup_epochs",
                o.warmup_epochs < o.epochs,
                "must be smaller than optim.epochs",
            ),
            ("finetune.epochs", f.epochs > 0, "must be at least 1"),
            (
                "finetune.batch",
                f.batch >= 2,
                "must be at least 2 (batch norm needs two samples)",
            ),
            (
                "finetune.head_lr",
                lr(f.head_lr) && f.head_lr > 0.0,
                "must be a positive number",
            ),
            (
                "finetune.backbone_lr",
                lr(f.backbone_lr),
                "must be a number >= 0 (0 freezes the backbone's weights)",
            ),
            (
                "finetune.momentum",
                (0.0..1.0).contains(&f.momentum),
                "must be in [0, 1)",
            ),
            (
                "finetune.weight_decay",
                lr(f.weight_decay),
                "must not be negative",
            ),
            (
                "finetune.warmup_epochs",
                f.warmup_epochs < f.epochs,
                "must be smaller than finetune.epochs",
            ),
            (
                "finetune.label_smoothing",
                (0.0..1.0).contains(&f.label_smoothing),
                "must be in [0, 1)",
            ),
            (
                "finetune.val_fraction",
                (0.0..0.9).contains(&f.val_fraction),
                "must be in [0, 0.9)",
            ),
            (
                "finetune.labels_per_breed",
                f.labels_per_breed != Some(0),
                "must be at least 1",
            ),
            (
                "finetune.crop_scale_min",
                f.crop_scale_min > 0.0 && f.crop_scale_min <= 1.0,
                "must be in (0, 1]",
            ),
            (
                "finetune.color_jitter",
                (0.0..=1.0).contains(&f.color_jitter),
                "must be in [0, 1]",
            ),
            (
                "finetune.zoom_out_p",
                (0.0..=1.0).contains(&f.zoom_out_p),
                "must be in [0, 1]",
            ),
            (
                "finetune.zoom_out_min",
                f.zoom_out_min > 0.0 && f.zoom_out_min <= 1.0,
                "must be in (0, 1]",
            ),
            ("monitor.knn_k", mon.knn_k > 0, "must be at least 1"),
            (
                "monitor.knn_temperature",
                mon.knn_temperature > 0.0,
                "must be positive",
            ),
            (
                "monitor.collapse_ratio",
                (0.0..1.0).contains(&mon.collapse_ratio),
                "must be in [0, 1)",
            ),
            (
                "monitor.collapse_rank",
                mon.collapse_rank >= 0.0,
                "must not be negative",
            ),
        ];
        simsiam::config::check_rules(rules)
    }

    /// The dataset selection of this configuration.
    pub fn dataset_options(&self) -> crate::engine::data::DatasetOptions {
        crate::engine::data::DatasetOptions {
            breeds: self.data.breeds,
            max_per_breed: self.data.max_per_breed,
            bbox_crop: self.data.bbox_crop,
            test_fraction: self.data.test_fraction,
            seed: self.run.seed,
        }
    }

    /// Augmentation worker threads: `data.workers`, or (0) half the cores on CPU, leaving
    /// the rest to libtorch's compute, and all but one core with a GPU doing the compute.
    pub fn augment_workers(&self, device: tch::Device) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.data.workers {
            // On a GPU libtorch needs one core to feed it; the rest make views.
            0 if device.is_cuda() => cores.saturating_sub(1).max(1),
            0 => (cores / 2).max(1),
            n => n,
        }
    }

    /// The side at which images are cached and from which views are cropped.
    pub fn cache_side(&self) -> u32 {
        match self.data.resize {
            0 => simsiam::preprocess::resize_for_crop(self.data.image_size),
            r => r,
        }
    }

    /// lr = base_lr × batch / 256 (the linear scaling rule).
    pub fn lr(&self) -> f64 {
        self.optim.base_lr * self.optim.batch as f64 / 256.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn layers_file_then_overrides() {
        let f = file("[optim]\nepochs = 7\nbatch = 32\n[model]\nbackbone = \"resnet50\"\n");
        let cfg =
            TrainConfig::load(Some(f.path()), vec![("optim.batch", 16i64.into())]).expect("valid");
        assert_eq!(cfg.optim.epochs, 7);
        assert_eq!(cfg.optim.batch, 16);
        assert_eq!(cfg.model.backbone, Backbone::Resnet50);
        assert_eq!(cfg.model.proj_layers, 3, "unset keys keep their defaults");
        assert!((cfg.lr() - 0.05 * 16.0 / 256.0).abs() < 1e-12);
    }

    #[test]
    fn the_project_configuration_files_load_and_validate() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
        for name in [
            "trainer.toml",
            "bench-10breeds.toml",
            "default-model.toml",
            "cpu-96-model.toml",
            "gpu-model.toml",
        ] {
            let path = Path::new(dir).join(name);
            let cfg = TrainConfig::load(Some(&path), vec![])
                .unwrap_or_else(|e| panic!("config/{name}: {e}"));
            assert!(cfg.optim.epochs > 0, "{name}");
        }
    }

    #[test]
    fn errors_name_the_bad_key() {
        let f = file("[optim]\nbatch = 1\n");
        let err = TrainConfig::load(Some(f.path()), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("optim.batch"), "{err}");
        let f = file("[model]\nbackbone = \"vgg\"\n");
        let err = TrainConfig::load(Some(f.path()), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("backbone") && err.contains("vgg"), "{err}");
        let f = file("[optim]\nepochz = 3\n");
        let err = TrainConfig::load(Some(f.path()), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochz"), "{err}");
        let err = TrainConfig::load(Some(Path::new("/nonexistent.toml")), vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
