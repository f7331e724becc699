//! The pixel operations behind [`super::view`], each on an interleaved RGB f32 buffer
//! with values in [0, 1] (HWC, row-major).
//!
//! Keeping the view in f32 between steps avoids re-quantising after every operation; the
//! buffer is rounded to u8 once, just before the shared normalisation.

use image::RgbImage;

use super::Jitter;

/// Luma weights (ITU-R 601-2), the ones PIL and torchvision use for grayscale.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

fn luma(p: &[f32]) -> f32 {
    LUMA[0] * p[0] + LUMA[1] * p[1] + LUMA[2] * p[2]
}

/// Filter taps of a 1-D resampling from `len` source pixels to `out` pixels.
struct Taps {
    /// Per output pixel: first source index and number of taps.
    spans: Vec<(usize, usize)>,
    /// Per output pixel, `stride` weights of which the first `spans[i].1` are used.
    weights: Vec<f32>,
    stride: usize,
}

/// Bilinear (triangle) taps in PIL's style: when shrinking, the triangle widens to the
/// scale factor so every source pixel contributes (antialiasing); when enlarging it is
/// plain bilinear interpolation. Weights are normalised, so flat regions stay flat.
fn triangle_taps(len: usize, out: usize, gain: f32) -> Taps {
    let scale = len as f32 / out as f32;
    let support = scale.max(1.0);
    let stride = support.ceil() as usize * 2 + 1;
    let mut spans = Vec::with_capacity(out);
    let mut weights = vec![0.0; out * stride];
    for (i, w) in weights.chunks_exact_mut(stride).enumerate() {
        let center = (i as f32 + 0.5) * scale;
        let lo = (center - support + 0.5).floor().max(0.0) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(len);
        let mut sum = 0.0;
        for (wk, x) in w.iter_mut().zip(lo..hi) {
            *wk = (1.0 - ((x as f32 + 0.5 - center) / support).abs()).max(0.0);
            sum += *wk;
        }
        w.iter_mut().for_each(|wk| *wk *= gain / sum);
        spans.push((lo, hi - lo));
    }
    Taps {
        spans,
        weights,
        stride,
    }
}

/// A `side`×`side` view shrunk to `inner`×`inner` and placed at `at` (top-left corner) on
/// a canvas of colour `fill` (values in [0, 1]).
pub(super) fn shrink_onto_canvas(
    px: &[f32],
    side: usize,
    inner: usize,
    at: (usize, usize),
    fill: [f32; 3],
) -> Vec<f32> {
    let bytes = px.iter().map(|v| (v * 255.0 + 0.5) as u8).collect();
    let Some(img) = RgbImage::from_raw(side as u32, side as u32, bytes) else {
        return px.to_vec();
    };
    let small = resize_region(&img, (0, 0, side as u32, side as u32), inner);
    let mut canvas: Vec<f32> = fill.iter().copied().cycle().take(side * side * 3).collect();
    for (row, src) in small.chunks_exact(inner * 3).enumerate() {
        let start = ((at.1 + row) * side + at.0) * 3;
        canvas[start..start + inner * 3].copy_from_slice(src);
    }
    canvas
}

/// Resamples the region `(x, y, w, h)` of `img` to `side`×`side`, straight from the source
/// (no intermediate crop copy), into f32 in [0, 1].
pub(super) fn resize_region(
    img: &RgbImage,
    (x0, y0, w, h): (u32, u32, u32, u32),
    side: usize,
) -> Vec<f32> {
    let (x0, y0, w, h) = (x0 as usize, y0 as usize, w as usize, h as usize);
    let xt = triangle_taps(w, side, 1.0);
    let yt = triangle_taps(h, side, 1.0 / 255.0);
    let src_row = img.width() as usize * 3;
    let raw = img.as_raw();
    // Horizontal pass over the h source rows of the region: h × side pixels.
    let mut rows = vec![0.0f32; h * side * 3];
    for (dst, src) in rows
        .chunks_exact_mut(side * 3)
        .zip(raw.chunks_exact(src_row).skip(y0))
    {
        for ((d, &(first, n)), wts) in dst
            .chunks_exact_mut(3)
            .zip(&xt.spans)
            .zip(xt.weights.chunks_exact(xt.stride))
        {
            let taps = src[(x0 + first) * 3..][..n * 3].chunks_exact(3);
            let mut acc = [0.0f32; 3]; // in registers, not through `d`
            for (p, &wk) in taps.zip(wts) {
                acc.iter_mut()
                    .zip(p)
                    .for_each(|(a, &v)| *a += wk * v as f32);
            }
            d.copy_from_slice(&acc);
        }
    }
    // Vertical pass: whole rows at a time, which the compiler vectorises.
    let mut out = vec![0.0f32; side * side * 3];
    for ((dst, &(first, n)), wts) in out
        .chunks_exact_mut(side * 3)
        .zip(&yt.spans)
        .zip(yt.weights.chunks_exact(yt.stride))
    {
        for (src, &wk) in rows.chunks_exact(side * 3).skip(first).take(n).zip(wts) {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += wk * s);
        }
    }
    out
}

/// Applies the four colour operations in `j.order` (0 brightness, 1 contrast,
/// 2 saturation, 3 hue), clamping to [0, 1] after each as torchvision does.
pub(super) fn color_jitter(px: &mut [f32], j: &Jitter) {
    for op in j.order {
        match op {
            0 => px
                .iter_mut()
                .for_each(|v| *v = (*v * j.brightness).clamp(0.0, 1.0)),
            1 => {
                // torchvision blends with the mean grey level of the whole image.
                let n = (px.len() / 3).max(1) as f32;
                let mean = px.chunks_exact(3).map(luma).sum::<f32>() / n;
                blend(px, j.contrast, |_| mean);
            }
            2 => blend(px, j.saturation, luma),
            _ => {
                let sextants = hue_sextants(j.hue);
                px.chunks_exact_mut(3).for_each(|p| shift_hue(p, sextants));
            }
        }
    }
}

/// `v ← factor·v + (1 − factor)·other(pixel)`, clamped: PIL's `ImageEnhance` blend.
fn blend(px: &mut [f32], factor: f32, other: impl Fn(&[f32]) -> f32) {
    for p in px.chunks_exact_mut(3) {
        let o = (1.0 - factor) * other(p);
        p.iter_mut()
            .for_each(|v| *v = (factor * *v + o).clamp(0.0, 1.0));
    }
}

/// A hue shift of `turns` as sextants of the colour wheel in [0, 6), the unit of
/// [`shift_hue`]; computed once per image so the per-pixel code needs no `fmod`.
pub(super) fn hue_sextants(turns: f32) -> f32 {
    (6.0 * turns).rem_euclid(6.0)
}

/// Rotates the hue of one pixel by `sextants` ∈ [0, 6) (2 takes red to green), keeping
/// HSV saturation and value. Written without data-dependent branches on the sextant:
/// this runs for every pixel of most views, and noisy hues defeat branch prediction.
pub(super) fn shift_hue(p: &mut [f32], sextants: f32) {
    let [r, g, b] = [p[0], p[1], p[2]];
    let max = r.max(g).max(b);
    let chroma = max - r.min(g).min(b);
    let inv = if chroma > 0.0 { 1.0 / chroma } else { 0.0 }; // grey: nothing to rotate
    let hue = if max == r {
        (g - b) * inv
    } else if max == g {
        (b - r) * inv + 2.0
    } else {
        (r - g) * inv + 4.0
    };
    let hue = wrap_sextants(hue + sextants);
    // HSV → RGB: channel n (5 red, 3 green, 1 blue) drops from the value by the chroma
    // where k = n + hue (mod 6) lies in [1, 3], ramping linearly in [0, 1] and [3, 4].
    for (v, n) in p.iter_mut().zip([5.0, 3.0, 1.0]) {
        let k = wrap_sextants(n + hue);
        *v = max - chroma * k.min(4.0 - k).clamp(0.0, 1.0);
    }
}

/// Brings a hue in [−6, 12) back to [0, 6).
fn wrap_sextants(h: f32) -> f32 {
    if h >= 6.0 {
        h - 6.0
    } else if h < 0.0 {
        h + 6.0
    } else {
        h
    }
}

/// Replaces every pixel by its luma on all three channels.
pub(super) fn grayscale(px: &mut [f32]) {
    for p in px.chunks_exact_mut(3) {
        p.fill(luma(p));
    }
}

/// Separable Gaussian blur with standard deviation `sigma` pixels, kernel radius
/// ⌈3σ⌉ and edge clamping. A σ that gives radius 0 (σ ≤ 0 or NaN) leaves `px` as is.
pub(super) fn gaussian_blur(px: &mut [f32], width: usize, height: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as usize;
    if radius == 0 || width == 0 || height == 0 {
        return;
    }
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|k| (-((k as f32 - radius as f32).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let clamp = |i: usize, n: usize| i.saturating_sub(radius).min(n - 1);

    // Rows are padded by edge replication, so each tap is one vectorisable row update.
    let mut tmp = vec![0.0f32; px.len()];
    let mut padded = vec![0.0f32; (width + 2 * radius) * 3];
    for (dst, src) in tmp
        .chunks_exact_mut(width * 3)
        .zip(px.chunks_exact(width * 3))
    {
        for (x, p) in padded.chunks_exact_mut(3).enumerate() {
            p.copy_from_slice(&src[clamp(x, width) * 3..][..3]);
        }
        for (k, &wk) in kernel.iter().enumerate() {
            dst.iter_mut()
                .zip(&padded[k * 3..])
                .for_each(|(d, s)| *d += wk * s);
        }
    }
    px.fill(0.0);
    for (y, dst) in px.chunks_exact_mut(width * 3).enumerate() {
        for (k, &wk) in kernel.iter().enumerate() {
            let src = &tmp[clamp(y + k, height) * width * 3..][..width * 3];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += wk * s);
        }
    }
}

/// Mirrors the image left to right.
pub(super) fn flip_horizontal(px: &mut [f32], width: usize) {
    for row in px.chunks_exact_mut(width * 3) {
        for x in 0..width / 2 {
            let (a, b) = (x * 3, (width - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn variance(v: &[f32]) -> f32 {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32
    }

    fn checkerboard(side: usize) -> Vec<f32> {
        (0..side * side)
            .flat_map(|i| [((i / side + i % side) % 2) as f32; 3])
            .collect()
    }

    fn jitter(brightness: f32, contrast: f32, saturation: f32, hue: f32) -> Jitter {
        Jitter {
            brightness,
            contrast,
            saturation,
            hue,
            order: [0, 1, 2, 3],
        }
    }

    #[test]
    fn neutral_jitter_is_identity_in_every_order() {
        let px: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut out = px.clone();
            color_jitter(
                &mut out,
                &Jitter {
                    order,
                    ..jitter(1.0, 1.0, 1.0, 0.0)
                },
            );
            for (a, b) in px.iter().zip(&out) {
                assert!((a - b).abs() < 1e-6, "{a} became {b}");
            }
        }
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn hue_shift_rotates_primaries() {
        let mut p = [1.0, 0.0, 0.0];
        shift_hue(&mut p, hue_sextants(1.0 / 3.0));
        assert!(close(&p, &[0.0, 1.0, 0.0]), "red + 1/3 turn = {p:?}");
        shift_hue(&mut p, hue_sextants(1.0 / 3.0));
        assert!(close(&p, &[0.0, 0.0, 1.0]), "green + 1/3 turn = {p:?}");
        // Half a turn is the complement: max and min kept, the middle one mirrored.
        let mut p = [0.8, 0.4, 0.2];
        shift_hue(&mut p, hue_sextants(-0.5));
        assert!(close(&p, &[0.2, 0.6, 0.8]), "{p:?}");
    }

    #[test]
    fn hue_shift_round_trips_and_keeps_value_and_chroma() {
        for i in 0..200 {
            let orig = [
                (i * 7 % 11) as f32 / 10.0,
                (i * 3 % 7) as f32 / 6.0,
                (i % 5) as f32 / 4.0,
            ];
            let turns = i as f32 / 200.0 - 0.5;
            let mut p = orig;
            shift_hue(&mut p, hue_sextants(turns));
            let extremes = |q: &[f32; 3]| [q[0].max(q[1]).max(q[2]), q[0].min(q[1]).min(q[2])];
            assert!(close(&extremes(&p), &extremes(&orig)), "{orig:?} → {p:?}");
            shift_hue(&mut p, hue_sextants(-turns));
            assert!(close(&p, &orig), "{orig:?} → {p:?} after ±{turns}");
        }
    }

    #[test]
    fn extreme_factors_reach_black_grey_and_flat() {
        let px = vec![0.9, 0.2, 0.1, 0.1, 0.5, 0.7];
        let mut dark = px.clone();
        color_jitter(&mut dark, &jitter(0.0, 1.0, 1.0, 0.0));
        assert!(dark.iter().all(|&v| v == 0.0));

        let mut grey = px.clone();
        color_jitter(&mut grey, &jitter(1.0, 1.0, 0.0, 0.0));
        for p in grey.chunks_exact(3) {
            assert!((p[0] - p[1]).abs() < 1e-6 && (p[1] - p[2]).abs() < 1e-6);
        }

        let mut flat = px.clone();
        color_jitter(&mut flat, &jitter(1.0, 0.0, 1.0, 0.0));
        let mean = (luma(&px[..3]) + luma(&px[3..])) / 2.0;
        assert!(flat.iter().all(|v| (v - mean).abs() < 1e-6));

        let mut bright = px.clone();
        color_jitter(&mut bright, &jitter(3.0, 1.0, 1.0, 0.0));
        assert!(bright.iter().all(|&v| v <= 1.0), "brightness must clamp");
    }

    #[test]
    fn grayscale_uses_luma_weights() {
        let mut px = vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        grayscale(&mut px);
        assert_eq!(px, vec![0.299, 0.299, 0.299, 0.114, 0.114, 0.114]);
    }

    #[test]
    fn blur_smooths_checkerboard_and_keeps_flat_images() {
        let board = checkerboard(16);
        let mut blurred = board.clone();
        gaussian_blur(&mut blurred, 16, 16, 1.0);
        assert!(variance(&blurred) < 0.1 * variance(&board));
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean(&blurred) - mean(&board)).abs() < 1e-3);

        let mut same = board.clone();
        gaussian_blur(&mut same, 16, 16, 0.0);
        assert_eq!(same, board);

        let mut flat = vec![0.3; 8 * 5 * 3];
        gaussian_blur(&mut flat, 8, 5, 2.0); // kernel wider than the image: clamping
        assert!(flat.iter().all(|v| (v - 0.3).abs() < 1e-6));
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut px: Vec<f32> = (0..9).map(|v| v as f32).collect(); // one row, 3 pixels
        flip_horizontal(&mut px, 3);
        assert_eq!(px, vec![6.0, 7.0, 8.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
    }

    #[test]
    fn resize_is_exact_at_scale_one_and_antialiases_when_shrinking() {
        let img = RgbImage::from_fn(6, 4, |x, y| Rgb([(x * 40) as u8, (y * 60) as u8, 7]));
        let same = resize_region(&img, (1, 0, 4, 4), 4);
        for (i, p) in same.chunks_exact(3).enumerate() {
            let src = img.get_pixel(1 + i as u32 % 4, i as u32 / 4);
            for (v, s) in p.iter().zip(src.0) {
                assert!((v * 255.0 - s as f32).abs() < 1e-4, "{v} vs {s}");
            }
        }
        let board = RgbImage::from_fn(16, 16, |x, y| Rgb([((x + y) % 2 * 255) as u8; 3]));
        let half = resize_region(&board, (0, 0, 16, 16), 8);
        // Away from the border (where the triangle is cut off) every output pixel averages
        // equal amounts of black and white: antialiased, not point-sampled.
        for y in 1..7 {
            for x in 1..7 {
                let v = half[(y * 8 + x) * 3];
                assert!((v - 0.5).abs() < 1e-4, "({x}, {y}) = {v}");
            }
        }
        let grown = resize_region(&RgbImage::from_pixel(3, 3, Rgb([51; 3])), (0, 0, 3, 3), 10);
        assert!(grown.iter().all(|v| (v - 0.2).abs() < 1e-6));
    }
}
