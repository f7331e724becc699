//! SimSiam's training augmentations, on decoded images, seeded.
//!
//! The recipe is the one of facebookresearch/simsiam (`main_simsiam.py`), with
//! torchvision's semantics:
//!
//! 1. `RandomResizedCrop(size, scale=(0.2, 1.0))`
//! 2. `RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`
//! 3. `RandomGrayscale(p=0.2)`
//! 4. `RandomApply([GaussianBlur([0.1, 2.0])], p=0.5)`
//! 5. `RandomHorizontalFlip()`
//! 6. `Normalize(ImageNet)`, through [`preprocess::normalize_into`] so training views and
//!    evaluation/server inputs are normalised by the very same code.
//!
//! Every random number comes from the `rng` passed to [`view`], drawn in a fixed order,
//! and [`view_rng`] derives that RNG from the run seed and the view's coordinates only:
//! a run is reproducible whatever thread computes which view.
//!
//! ```
//! use simsiam_trainer::engine::augment::{self, AugmentConfig};
//! let img = image::RgbImage::from_pixel(80, 60, image::Rgb([200, 120, 40]));
//! let cfg = AugmentConfig::simsiam(64, true);
//! let mut out = vec![0.0; cfg.view_len()];
//! let record = augment::view(&img, &cfg, &mut augment::view_rng(7, 0, 42, 1), &mut out);
//! assert!(record.area_fraction >= 0.19);
//! ```

mod ops;

use std::time::Instant;

use image::RgbImage;
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use simsiam::preprocess;

/// Parameters of the augmentation pipeline; [`AugmentConfig::simsiam`] gives the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Output side in pixels; views are `size`×`size`.
    pub size: u32,
    /// RandomResizedCrop: range of the crop's area as a fraction of the image's.
    pub scale: (f32, f32),
    /// RandomResizedCrop: range of the crop's aspect ratio (width / height).
    pub ratio: (f32, f32),
    /// ColorJitter strengths: factors are drawn from [max(0, 1 − x), 1 + x] ...
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// ... and the hue shift, in turns, from [−hue, hue] (at most 0.5).
    pub hue: f32,
    /// Probability of applying the colour jitter.
    pub jitter_p: f32,
    /// Probability of converting the view to grayscale.
    pub grayscale_p: f32,
    /// Probability of the Gaussian blur; 0 switches it off (the CIFAR recipe).
    pub blur_p: f32,
    /// Range of the blur's standard deviation, in output pixels.
    pub blur_sigma: (f32, f32),
    /// Probability of a horizontal flip.
    pub flip_p: f32,
    /// Probability of a zoom-out: the crop shrunk onto a canvas of a random colour, as a
    /// dog that fills only part of a full-frame photo (0: never; SimSiam's recipe).
    pub zoom_out_p: f32,
    /// Smallest width of a zoomed-out crop, as a fraction of the view's side.
    pub zoom_out_min: f32,
    /// Normalisation, as in [`preprocess::normalize_into`].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid augmentation config: {0}")]
pub struct AugmentError(String);

impl AugmentConfig {
    /// The SimSiam ImageNet recipe at output side `size`; `blur: false` drops the blur, as
    /// the paper's CIFAR recipe does for small images.
    pub fn simsiam(size: u32, blur: bool) -> Self {
        Self {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            jitter_p: 0.8,
            grayscale_p: 0.2,
            blur_p: if blur { 0.5 } else { 0.0 },
            blur_sigma: (0.1, 2.0),
            flip_p: 0.5,
            zoom_out_p: 0.0,
            zoom_out_min: 1.0,
            mean: preprocess::IMAGENET_MEAN,
            std: preprocess::IMAGENET_STD,
        }
    }

    /// The supervised fine-tuning recipe of `cfg`: a milder crop and colour jitter than
    /// SimSiam's (the label, not view agreement, is the signal), no blur, and zoom-outs.
    pub fn finetune(size: u32, cfg: &crate::config::FinetuneConfig) -> Self {
        Self {
            scale: (cfg.crop_scale_min, 1.0),
            brightness: cfg.color_jitter,
            contrast: cfg.color_jitter,
            saturation: cfg.color_jitter,
            hue: cfg.color_jitter / 4.0,
            grayscale_p: 0.05,
            blur_p: 0.0,
            zoom_out_p: cfg.zoom_out_p,
            zoom_out_min: cfg.zoom_out_min,
            ..Self::simsiam(size, false)
        }
    }

    /// Number of f32 values in one view: 3 × size × size.
    pub fn view_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Checks every field's range, so a bad config file fails when it is loaded, with a
    /// message naming the field, rather than as odd views or a panic mid-training.
    pub fn validate(&self) -> Result<(), AugmentError> {
        let range = |(lo, hi): (f32, f32)| lo > 0.0 && lo <= hi && hi.is_finite();
        let prob = |p: f32| (0.0..=1.0).contains(&p);
        let strength = |x: f32| x >= 0.0 && x.is_finite();
        let checks = [
            (self.size > 0, "size must be positive"),
            (
                range(self.scale) && self.scale.1 <= 1.0,
                "scale must satisfy 0 < lo <= hi <= 1",
            ),
            (range(self.ratio), "ratio must satisfy 0 < lo <= hi"),
            (strength(self.brightness), "brightness must be >= 0"),
            (strength(self.contrast), "contrast must be >= 0"),
            (strength(self.saturation), "saturation must be >= 0"),
            ((0.0..=0.5).contains(&self.hue), "hue must lie in [0, 0.5]"),
            (prob(self.jitter_p), "jitter_p must lie in [0, 1]"),
            (prob(self.grayscale_p), "grayscale_p must lie in [0, 1]"),
            (prob(self.blur_p), "blur_p must lie in [0, 1]"),
            (prob(self.flip_p), "flip_p must lie in [0, 1]"),
            (prob(self.zoom_out_p), "zoom_out_p must lie in [0, 1]"),
            (
                self.zoom_out_min > 0.0 && self.zoom_out_min <= 1.0,
                "zoom_out_min must lie in (0, 1]",
            ),
            (
                range(self.blur_sigma) && self.blur_sigma.1 <= self.size as f32,
                "blur_sigma must satisfy 0 < lo <= hi <= size",
            ),
            (
                self.mean.iter().all(|m| m.is_finite()),
                "mean must be finite",
            ),
            (
                self.std.iter().all(|s| s.is_finite() && *s > 0.0),
                "std must be > 0",
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(AugmentError(msg.to_owned())),
            None => Ok(()),
        }
    }
}

/// What one view did: for statistics tests and debugging.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewRecord {
    /// The crop, `(x, y, w, h)` in source pixels.
    pub crop: (u32, u32, u32, u32),
    /// `w·h` over the source's area.
    pub area_fraction: f32,
    /// The colour jitter, when it was applied.
    pub jitter: Option<Jitter>,
    pub grayscale: bool,
    /// The blur's σ, when it was applied.
    pub blur_sigma: Option<f32>,
    pub flipped: bool,
    /// The zoomed-out crop's width as a fraction of the view, when it was zoomed out.
    pub zoom_out: Option<f32>,
}

/// The factors of one colour jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct Jitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue rotation in turns.
    pub hue: f32,
    /// Order of application: 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [u8; 4],
}

/// Writes one augmented, normalised CHW view of `img` (`cfg.view_len()` f32) into `out`.
///
/// Random numbers are drawn in pipeline order (crop, jitter, grayscale, blur, flip), so a
/// given RNG state always gives the same view.
///
/// # Panics
/// If `img` has no pixels or `out.len() != cfg.view_len()`. Only configurations that
/// pass [`AugmentConfig::validate`] are supported; others may panic or give odd views.
pub fn view(
    img: &RgbImage,
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
    out: &mut [f32],
) -> ViewRecord {
    assert!(
        img.width() > 0 && img.height() > 0,
        "cannot augment an empty image"
    );
    assert_eq!(
        out.len(),
        cfg.view_len(),
        "output buffer has the wrong length"
    );
    let side = cfg.size as usize;

    let crop = crop_params(img.width(), img.height(), cfg, rng);
    let mut px = ops::resize_region(img, crop, side);
    // Drawn only when enabled, so SimSiam's views are the same as without the option.
    let zoom_out = (cfg.zoom_out_p > 0.0 && rng.random::<f32>() < cfg.zoom_out_p).then(|| {
        let fraction = uniform(rng, (cfg.zoom_out_min, 1.0));
        let inner = ((side as f32 * fraction).round() as usize).clamp(1, side);
        let fill: [f32; 3] = [rng.random(), rng.random(), rng.random()];
        let at = (
            rng.random_range(0..=side - inner),
            rng.random_range(0..=side - inner),
        );
        px = ops::shrink_onto_canvas(&px, side, inner, at, fill);
        fraction
    });

    let jitter = (rng.random::<f32>() < cfg.jitter_p).then(|| draw_jitter(cfg, rng));
    if let Some(j) = &jitter {
        ops::color_jitter(&mut px, j);
    }
    let grayscale = rng.random::<f32>() < cfg.grayscale_p;
    if grayscale {
        ops::grayscale(&mut px);
    }
    let blur_sigma = (rng.random::<f32>() < cfg.blur_p).then(|| uniform(rng, cfg.blur_sigma));
    if let Some(sigma) = blur_sigma {
        ops::gaussian_blur(&mut px, side, side, sigma);
    }
    let flipped = rng.random::<f32>() < cfg.flip_p;
    if flipped {
        ops::flip_horizontal(&mut px, side);
    }

    // Quantise once, so the normalisation is exactly the evaluation transform's.
    let bytes = px.iter().map(|v| (v * 255.0 + 0.5) as u8).collect();
    let rgb = RgbImage::from_raw(cfg.size, cfg.size, bytes).expect("a view holds size² RGB pixels");
    preprocess::normalize_into(&rgb, &cfg.mean, &cfg.std, out);

    let area_fraction =
        (crop.2 as f32 * crop.3 as f32) / (img.width() as f32 * img.height() as f32);
    ViewRecord {
        crop,
        area_fraction,
        jitter,
        grayscale,
        blur_sigma,
        flipped,
        zoom_out,
    }
}

/// `img` shrunk to `fraction` of its width and height and centred on a canvas of its own
/// size filled with `fill`: a tight crop of a dog turned into a photo where the dog fills
/// that fraction of the frame. `trainer eval --zoom-out` measures the model on these.
pub fn zoomed_out(img: &RgbImage, fraction: f32, fill: image::Rgb<u8>) -> RgbImage {
    let (w, h) = img.dimensions();
    let inner = |side: u32| ((side as f32 * fraction).round() as u32).clamp(1, side);
    let small = image::imageops::resize(
        img,
        inner(w),
        inner(h),
        image::imageops::FilterType::Triangle,
    );
    let mut canvas = RgbImage::from_pixel(w, h, fill);
    let (x, y) = ((w - small.width()) / 2, (h - small.height()) / 2);
    image::imageops::replace(&mut canvas, &small, x.into(), y.into());
    canvas
}

/// The RNG for view `view` (0 or 1) of sample `index` in `epoch`: derived from the run seed
/// only, so views are reproducible whatever thread computes them and in whatever order.
///
/// The four numbers form the ChaCha key itself, so distinct tuples give independent
/// streams without any hashing step that could collide.
pub fn view_rng(seed: u64, epoch: u64, index: u64, view: u32) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key
        .chunks_exact_mut(8)
        .zip([seed, epoch, index, view as u64])
    {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Single-threaded views per second of the SimSiam recipe (with blur) on a random
/// square image of side `size × 5/4` (80 for 64, the evaluation resize), output `size`.
/// The trainer's benchmark prints it to show whether augmentation can feed the GPU.
pub fn bench_views(n: usize, size: u32) -> f64 {
    let src = preprocess::resize_for_crop(size);
    let mut rng = view_rng(0, 0, 0, 0);
    let img = RgbImage::from_fn(src, src, |_, _| image::Rgb(rng.random()));
    let cfg = AugmentConfig::simsiam(size, true);
    let mut out = vec![0.0; cfg.view_len()];
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(view(&img, &cfg, &mut view_rng(1, 0, i as u64, 0), &mut out));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Uniform draw from `[lo, hi)`; never panics, whatever the range.
fn uniform(rng: &mut impl Rng, (lo, hi): (f32, f32)) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a random area and
/// log-uniform aspect ratio, then a central crop with the ratio clamped to the range.
fn crop_params(
    width: u32,
    height: u32,
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
) -> (u32, u32, u32, u32) {
    let (wf, hf) = (width as f32, height as f32);
    let log_ratio = (cfg.ratio.0.ln(), cfg.ratio.1.ln());
    for _ in 0..10 {
        let area = wf * hf * uniform(rng, cfg.scale);
        let r = uniform(rng, log_ratio).exp();
        let w = (area * r).sqrt().round() as u32;
        let h = (area / r).sqrt().round() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let x = rng.random_range(0..=width - w);
            let y = rng.random_range(0..=height - h);
            return (x, y, w, h);
        }
    }
    let (w, h) = if wf / hf < cfg.ratio.0 {
        (width, (wf / cfg.ratio.0).round() as u32)
    } else if wf / hf > cfg.ratio.1 {
        ((hf * cfg.ratio.1).round() as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// torchvision's `ColorJitter.get_params`: a random order, then the four factors.
fn draw_jitter(cfg: &AugmentConfig, rng: &mut impl Rng) -> Jitter {
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    let range = |x: f32| ((1.0 - x).max(0.0), 1.0 + x);
    Jitter {
        brightness: uniform(rng, range(cfg.brightness)),
        contrast: uniform(rng, range(cfg.contrast)),
        saturation: uniform(rng, range(cfg.saturation)),
        hue: uniform(rng, (-cfg.hue, cfg.hue)),
        order,
    }
}

#[cfg(test)]
mod tests;
