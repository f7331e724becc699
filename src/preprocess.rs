//! The evaluation transform: resize, centre crop, normalise.
//!
//! This is the one place where pixels become model input outside training. The trainer's
//! evaluation, the exported bundle's parity check and the server's requests all call
//! [`EvalTransform::apply`], so the numbers they see cannot drift apart.

use image::{imageops, imageops::FilterType, RgbImage};
use serde::{Deserialize, Serialize};

/// ImageNet channel means (RGB), the normalisation of the SimSiam recipe.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Resize the shorter side to `resize`, centre-crop `crop`×`crop`, normalise to CHW f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalTransform {
    pub resize: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalTransform {
    /// The default policy for a model input of `crop` pixels: resize to `crop × 5/4`
    /// (64 → 80, as in the reference benchmark), ImageNet normalisation.
    pub fn for_crop(crop: u32) -> Self {
        Self {
            resize: resize_for_crop(crop),
            crop,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Number of f32 values one image occupies: 3 × crop × crop.
    pub fn tensor_len(&self) -> usize {
        3 * (self.crop as usize) * (self.crop as usize)
    }

    /// Writes the CHW tensor of `img` into `out` (length [`Self::tensor_len`]).
    pub fn apply(&self, img: &RgbImage, out: &mut [f32]) {
        let resized = resize_shorter(img, self.resize);
        let cropped = center_crop(&resized, self.crop);
        normalize_into(&cropped, &self.mean, &self.std, out);
    }

    /// Convenience wrapper around [`Self::apply`] that allocates.
    pub fn to_vec(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = vec![0.0; self.tensor_len()];
        self.apply(img, &mut out);
        out
    }
}

/// The resize side that goes with a crop size: `crop × 5/4`, rounded.
pub fn resize_for_crop(crop: u32) -> u32 {
    (crop * 5).div_ceil(4)
}

/// Resizes so that the shorter side is `side`, keeping the aspect ratio (bilinear).
pub fn resize_shorter(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.min(h) == side {
        return img.clone();
    }
    let (nw, nh) = if w <= h {
        (
            side,
            ((h as u64 * side as u64 + w as u64 / 2) / w as u64).max(1) as u32,
        )
    } else {
        (
            ((w as u64 * side as u64 + h as u64 / 2) / h as u64).max(1) as u32,
            side,
        )
    };
    imageops::resize(img, nw, nh, FilterType::Triangle)
}

/// Crops the central `size`×`size` square (the whole image if it is smaller).
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (size.min(w), size.min(h));
    let x = (w - cw) / 2;
    let y = (h - ch) / 2;
    imageops::crop_imm(img, x, y, cw, ch).to_image()
}

/// Writes `img` as normalised CHW f32 (`(v/255 - mean) / std`) into `out`.
///
/// # Panics
/// If `out.len() != 3 × width × height`.
pub fn normalize_into(img: &RgbImage, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer has the wrong length");
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
    for (i, px) in img.pixels().enumerate() {
        r[i] = px[0] as f32 * scale[0] - shift[0];
        g[i] = px[1] as f32 * scale[1] - shift[1];
        b[i] = px[2] as f32 * scale[2] - shift[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn normalises_per_channel_in_chw_order() {
        let img = RgbImage::from_pixel(2, 1, Rgb([255, 0, 128]));
        let mut out = vec![0.0; 6];
        normalize_into(&img, &IMAGENET_MEAN, &IMAGENET_STD, &mut out);
        let expect = |v: f32, c: usize| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!((out[0] - expect(255.0, 0)).abs() < 1e-5);
        assert!((out[1] - expect(255.0, 0)).abs() < 1e-5);
        assert!((out[2] - expect(0.0, 1)).abs() < 1e-5);
        assert!((out[4] - expect(128.0, 2)).abs() < 1e-5);
    }

    #[test]
    fn eval_transform_keeps_aspect_and_crops_centre() {
        // 200×100 image: left half black, right half white; the centre crop straddles both.
        let img = RgbImage::from_fn(
            200,
            100,
            |x, _| if x < 100 { Rgb([0; 3]) } else { Rgb([255; 3]) },
        );
        let resized = resize_shorter(&img, 80);
        assert_eq!(resized.dimensions(), (160, 80));
        let crop = center_crop(&resized, 64);
        assert_eq!(crop.dimensions(), (64, 64));
        assert_eq!(crop.get_pixel(0, 32)[0], 0);
        assert_eq!(crop.get_pixel(63, 32)[0], 255);
        let t = EvalTransform::for_crop(64);
        assert_eq!((t.resize, t.tensor_len()), (80, 3 * 64 * 64));
        assert_eq!(t.to_vec(&img).len(), t.tensor_len());
    }
}
