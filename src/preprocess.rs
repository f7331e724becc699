//! The evaluation transform: resize, centre crop, normalise.
//!
//! This is the one place where pixels become model input outside training. The trainer's
//! evaluation, the exported bundle's parity check and the server's requests all call
//! [`EvalTransform::apply`], so the numbers they see cannot drift apart.
//!
//! `apply` computes only the pixels the crop keeps, in one pass over the source, with the
//! same arithmetic as `image`'s bilinear (`Triangle`) resize followed by a crop: the result
//! is bit-for-bit that of [`resize_shorter`] + [`center_crop`] + [`normalize_into`] (a test
//! holds it to that), several times faster. On a 2-core server this is CPU the model gets.

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
    ///
    /// A `resize` below `crop` is treated as `crop`, so the crop always fits.
    ///
    /// # Panics
    /// If `out.len() != self.tensor_len()`.
    pub fn apply(&self, img: &RgbImage, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.tensor_len(),
            "output buffer has the wrong length"
        );
        let side = self.resize.max(self.crop);
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            out.fill(0.0);
            return;
        }
        // (w, h) itself when the shorter side is already `side`: no resize along either axis.
        let (nw, nh) = shorter_side_dims(w, h, side);
        let crop = self.crop as usize;
        let (x0, y0) = ((nw - self.crop) / 2, (nh - self.crop) / 2);
        let cols = Taps::new(w, nw, x0, self.crop);
        let rows = Taps::new(h, nh, y0, self.crop);
        // Vertical pass over the source columns the kept output columns read.
        let (lo, hi) = cols.span();
        let width = (hi - lo) as usize;
        let src = img.as_raw();
        let stride = 3 * w as usize;
        let mut tmp = vec![0.0f32; crop * 3 * width];
        for (r, dst) in tmp.chunks_exact_mut(3 * width).enumerate() {
            for (i, &wt) in rows.weights(r).iter().enumerate() {
                let y = rows.first[r] as usize + i;
                let line = &src[y * stride + 3 * lo as usize..y * stride + 3 * hi as usize];
                for (acc, &v) in dst.iter_mut().zip(line) {
                    *acc += f32::from(v) * wt;
                }
            }
        }
        // Horizontal pass, rounding to u8 as the resize does, then normalisation.
        let plane = crop * crop;
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);
        for r in 0..crop {
            let line = &tmp[r * 3 * width..(r + 1) * 3 * width];
            for c in 0..crop {
                let mut t = [0.0f32; 3];
                for (i, &wt) in cols.weights(c).iter().enumerate() {
                    let x = (cols.first[c] - lo) as usize + i;
                    for ch in 0..3 {
                        t[ch] += line[3 * x + ch] * wt;
                    }
                }
                for ch in 0..3 {
                    let v = round_u8(t[ch]);
                    out[ch * plane + r * crop + c] = v * scale[ch] - shift[ch];
                }
            }
        }
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
    let (nw, nh) = shorter_side_dims(w, h, side);
    imageops::resize(img, nw, nh, FilterType::Triangle)
}

/// The size of a `w`×`h` image whose shorter side is scaled to `side` (aspect kept, rounded).
fn shorter_side_dims(w: u32, h: u32, side: u32) -> (u32, u32) {
    if w <= h {
        (
            side,
            ((h as u64 * side as u64 + w as u64 / 2) / w as u64).max(1) as u32,
        )
    } else {
        (
            ((w as u64 * side as u64 + h as u64 / 2) / h as u64).max(1) as u32,
            side,
        )
    }
}

/// Bilinear filter taps for output pixels `start..start + len` of a resize from `from` to
/// `to` pixels along one axis. The arithmetic is `image`'s `Triangle` filter to the letter
/// (same f32 operations in the same order), which keeps [`EvalTransform::apply`] bit-exact.
struct Taps {
    /// First source pixel of each output pixel.
    first: Vec<u32>,
    /// Where each output pixel's weights start in `weights`, plus a final end.
    offsets: Vec<usize>,
    weights: Vec<f32>,
}

impl Taps {
    fn new(from: u32, to: u32, start: u32, len: u32) -> Self {
        let mut taps = Taps {
            first: Vec::with_capacity(len as usize),
            offsets: vec![0],
            weights: Vec::new(),
        };
        if from == to {
            // No resize along this axis: one tap of weight 1.
            for out in start..start + len {
                taps.first.push(out);
                taps.weights.push(1.0);
                taps.offsets.push(taps.weights.len());
            }
            return taps;
        }
        let ratio = from as f32 / to as f32;
        let sratio = if ratio < 1.0 { 1.0 } else { ratio };
        let support = sratio; // the triangle's support is 1
        for out in start..start + len {
            let centre = (out as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, i64::from(from) - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, i64::from(from));
            let centre = centre - 0.5;
            let begin = taps.weights.len();
            let mut sum = 0.0;
            for i in left..right {
                let x = (i as f32 - centre) / sratio;
                let w = if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 };
                taps.weights.push(w);
                sum += w;
            }
            for w in &mut taps.weights[begin..] {
                *w /= sum;
            }
            taps.first.push(left as u32);
            taps.offsets.push(taps.weights.len());
        }
        taps
    }

    fn weights(&self, out: usize) -> &[f32] {
        &self.weights[self.offsets[out]..self.offsets[out + 1]]
    }

    /// The source range `[lo, hi)` all outputs read.
    fn span(&self) -> (u32, u32) {
        let lo = self.first.iter().copied().min().unwrap_or(0);
        let hi = (0..self.first.len())
            .map(|o| self.first[o] + (self.offsets[o + 1] - self.offsets[o]) as u32)
            .max()
            .unwrap_or(lo);
        (lo, hi)
    }
}

/// `v` clamped to 0..=255 and rounded half away from zero, as `f32::round` would, returned
/// as f32. For `v ≥ 0` the truncation is the floor and `v - floor` is exact, so comparing
/// the fraction with ½ gives `round` without a libm call per channel.
fn round_u8(v: f32) -> f32 {
    let v = v.clamp(0.0, 255.0);
    let floor = (v as u32) as f32;
    if v - floor >= 0.5 {
        floor + 1.0
    } else {
        floor
    }
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

    /// Pseudo-random pixels (a fixed LCG): noise exercises every rounding case.
    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(w, h, |_, _| {
            let mut px = [0u8; 3];
            for v in &mut px {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = (state >> 24) as u8;
            }
            Rgb(px)
        })
    }

    #[test]
    fn apply_is_bit_exact_with_resize_crop_and_normalise() {
        let sizes = [
            (128, 128),
            (500, 375),
            (375, 500),
            (125, 94),
            (81, 200),
            (80, 80),
            (80, 97),
            (79, 79),
            (50, 40),
            (1, 1),
            (3000, 81),
        ];
        for (k, &(w, h)) in sizes.iter().enumerate() {
            for t in [EvalTransform::for_crop(64), EvalTransform::for_crop(7)] {
                let img = noise(w, h, k as u32);
                let resized = resize_shorter(&img, t.resize);
                let mut expect = vec![0.0; t.tensor_len()];
                normalize_into(&center_crop(&resized, t.crop), &t.mean, &t.std, &mut expect);
                let got = t.to_vec(&img);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&got) == bits(&expect), "{w}×{h}, crop {}", t.crop);
            }
        }
    }

    #[test]
    fn a_resize_below_the_crop_still_fills_the_tensor() {
        let t = EvalTransform {
            resize: 10,
            ..EvalTransform::for_crop(16)
        };
        let v = t.to_vec(&noise(30, 20, 1));
        assert_eq!(v.len(), 3 * 16 * 16);
        assert!(v.iter().all(|x| x.is_finite()));
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
