use std::collections::HashMap;

use image::Rgb;

use super::*;

const DRAWS: usize = 5000;

fn random_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(width, height, |_, _| Rgb(rng.random()))
}

/// Every random step switched off and a crop that is always the whole (square) image.
fn plain(size: u32) -> AugmentConfig {
    AugmentConfig {
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        jitter_p: 0.0,
        grayscale_p: 0.0,
        blur_p: 0.0,
        flip_p: 0.0,
        ..AugmentConfig::simsiam(size, true)
    }
}

/// Runs `DRAWS` views of `img`, each with its own [`view_rng`]; returns records and outputs.
fn many_views(
    img: &RgbImage,
    cfg: &AugmentConfig,
    keep_outputs: bool,
) -> Vec<(ViewRecord, Vec<f32>)> {
    let mut out = vec![0.0; cfg.view_len()];
    (0..DRAWS as u64)
        .map(|i| {
            let rec = view(img, cfg, &mut view_rng(3, 1, i, 0), &mut out);
            (
                rec,
                if keep_outputs {
                    out.clone()
                } else {
                    Vec::new()
                },
            )
        })
        .collect()
}

/// Back to [0, 255] pixel values, indexed `[channel][pixel]`.
fn denormalise(out: &[f32], cfg: &AugmentConfig) -> Vec<Vec<f32>> {
    let plane = out.len() / 3;
    (0..3)
        .map(|c| {
            out[c * plane..][..plane]
                .iter()
                .map(|v| (v * cfg.std[c] + cfg.mean[c]) * 255.0)
                .collect()
        })
        .collect()
}

fn assert_rate(hits: usize, p: f64, what: &str) {
    let rate = hits as f64 / DRAWS as f64;
    let se = (p * (1.0 - p) / DRAWS as f64).sqrt();
    assert!(
        (rate - p).abs() < 4.0 * se,
        "{what}: rate {rate:.4}, expected {p} ± {:.4}",
        4.0 * se
    );
}

fn variance(v: &[f32]) -> f64 {
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64
}

/// RandomResizedCrop's mean area fraction, by a separate f64 Monte-Carlo of the rule.
fn expected_area_fraction(width: f64, height: f64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let n = 200_000;
    let area = width * height;
    let (lo, hi) = ((0.75f64).ln(), (4.0f64 / 3.0).ln());
    let total: f64 = (0..n)
        .map(|_| {
            for _ in 0..10 {
                let a = area * (0.2 + 0.8 * rng.random::<f64>());
                let r = (lo + (hi - lo) * rng.random::<f64>()).exp();
                let (w, h) = ((a * r).sqrt().round(), (a / r).sqrt().round());
                if w >= 1.0 && w <= width && h >= 1.0 && h <= height {
                    return w * h / area;
                }
            }
            // Wider than 4:3, so the fallback is the full height at ratio 4/3.
            (height * 4.0 / 3.0).round() * height / area
        })
        .sum();
    total / n as f64
}

#[test]
fn crop_area_matches_independent_monte_carlo() {
    let img = random_image(96, 64, 1);
    let views = many_views(&img, &AugmentConfig::simsiam(16, true), false);
    let fractions: Vec<f64> = views.iter().map(|(r, _)| r.area_fraction as f64).collect();
    // 0.2 up to rounding each side by half a pixel (sides are >= 30 pixels here).
    assert!(fractions.iter().all(|&f| (0.19..=1.0).contains(&f)));
    let n = fractions.len() as f64;
    let mean = fractions.iter().sum::<f64>() / n;
    let sd = (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n).sqrt();
    let expected = expected_area_fraction(96.0, 64.0);
    assert!(
        (mean - expected).abs() < 4.0 * sd / n.sqrt() + 0.002,
        "mean {mean:.4} vs expected {expected:.4}"
    );
}

#[test]
fn crops_lie_inside_the_image_with_ratio_in_range() {
    let img = random_image(96, 64, 2);
    for (rec, _) in many_views(&img, &AugmentConfig::simsiam(16, true), false) {
        let (x, y, w, h) = rec.crop;
        assert!(
            w > 0 && h > 0 && x + w <= 96 && y + h <= 64,
            "{:?}",
            rec.crop
        );
        // w and h are each rounded, so the unrounded ratio may differ by half a pixel.
        let (w, h) = (w as f32, h as f32);
        assert!(
            (w + 0.5) / (h - 0.5) >= 0.75 && (w - 0.5) / (h + 0.5) <= 4.0 / 3.0,
            "{w}×{h}"
        );
    }
}

#[test]
fn crop_is_taken_from_the_recorded_region_and_flip_mirrors_it() {
    // R encodes x and G encodes y, so the view's mean colour locates its crop.
    let img = RgbImage::from_fn(128, 96, |x, y| Rgb([(2 * x) as u8, (2 * y) as u8, 0]));
    let cfg = AugmentConfig {
        scale: (0.2, 1.0),
        ratio: (0.75, 4.0 / 3.0),
        ..plain(32)
    };
    let mut out = vec![0.0; cfg.view_len()];
    let mut flipped = vec![0.0; cfg.view_len()];
    for i in 0..50 {
        let rec = view(&img, &cfg, &mut view_rng(9, 0, i, 0), &mut out);
        let px = denormalise(&out, &cfg);
        let (x, y, w, h) = rec.crop;
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(
            (mean(&px[0]) - (2 * x + w - 1) as f32).abs() < 2.0,
            "x: {:?} {}",
            rec.crop,
            mean(&px[0])
        );
        assert!(
            (mean(&px[1]) - (2 * y + h - 1) as f32).abs() < 2.0,
            "y: {:?} {}",
            rec.crop,
            mean(&px[1])
        );

        // The flip is the last draw, so forcing it keeps the crop and mirrors the output.
        let rec2 = view(
            &img,
            &AugmentConfig {
                flip_p: 1.0,
                ..cfg.clone()
            },
            &mut view_rng(9, 0, i, 0),
            &mut flipped,
        );
        assert_eq!((rec2.crop, rec2.flipped), (rec.crop, true));
        for (row, frow) in out.chunks_exact(32).zip(flipped.chunks_exact(32)) {
            assert!(row.iter().eq(frow.iter().rev()));
        }
    }
}

#[test]
fn random_steps_fire_at_their_rates() {
    let img = random_image(24, 20, 3);
    let views = many_views(&img, &AugmentConfig::simsiam(16, true), false);
    let count = |f: fn(&ViewRecord) -> bool| views.iter().filter(|(r, _)| f(r)).count();
    assert_rate(count(|r| r.flipped), 0.5, "flip");
    assert_rate(count(|r| r.grayscale), 0.2, "grayscale");
    assert_rate(count(|r| r.jitter.is_some()), 0.8, "jitter");
    assert_rate(count(|r| r.blur_sigma.is_some()), 0.5, "blur");
    assert!(views
        .iter()
        .filter_map(|(r, _)| r.blur_sigma)
        .all(|s| (0.1..2.0).contains(&s)));

    let no_blur = many_views(&img, &AugmentConfig::simsiam(16, false), false);
    assert!(no_blur.iter().all(|(r, _)| r.blur_sigma.is_none()));
}

#[test]
fn jitter_orders_cover_all_permutations_and_factors_stay_in_range() {
    let img = random_image(24, 20, 4);
    let mut counts: HashMap<[u8; 4], usize> = HashMap::new();
    let mut jittered = 0;
    for (rec, _) in many_views(&img, &AugmentConfig::simsiam(16, true), false) {
        let Some(j) = rec.jitter else { continue };
        jittered += 1;
        *counts.entry(j.order).or_default() += 1;
        for f in [j.brightness, j.contrast, j.saturation] {
            assert!((0.6..=1.4).contains(&f), "{f}");
        }
        assert!((-0.1..=0.1).contains(&j.hue), "{}", j.hue);
    }
    assert_eq!(counts.len(), 24, "all 4! orders occur");
    let expected = jittered as f64 / 24.0; // ≈ 167; one standard error ≈ 13
    for (order, &n) in &counts {
        assert!(
            (n as f64 - expected).abs() < 0.4 * expected,
            "{order:?}: {n} vs {expected:.0}"
        );
    }
}

#[test]
fn views_are_reproducible_and_keyed_by_all_coordinates() {
    let img = random_image(40, 30, 5);
    let cfg = AugmentConfig::simsiam(16, true);
    let run = |seed, epoch, index, v| {
        let mut out = vec![0.0; cfg.view_len()];
        view(&img, &cfg, &mut view_rng(seed, epoch, index, v), &mut out);
        out
    };
    let base = run(1, 2, 3, 0);
    assert_eq!(base.len(), 3 * 16 * 16);
    assert!(base
        .iter()
        .zip(run(1, 2, 3, 0))
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    for other in [
        run(9, 2, 3, 0),
        run(1, 9, 3, 0),
        run(1, 2, 9, 0),
        run(1, 2, 3, 1),
    ] {
        assert_ne!(base, other);
    }
}

#[test]
fn grayscale_views_have_equal_channels_and_others_do_not() {
    let img = random_image(40, 30, 6);
    let cfg = AugmentConfig::simsiam(16, true);
    let (mut grey, mut colour) = (0, 0);
    for (rec, out) in many_views(&img, &cfg, true).into_iter().take(500) {
        let px = denormalise(&out, &cfg);
        let max_diff = (0..px[0].len())
            .map(|i| (px[0][i] - px[1][i]).abs().max((px[1][i] - px[2][i]).abs()))
            .fold(0.0f32, f32::max);
        if rec.grayscale {
            grey += 1;
            assert!(
                max_diff < 1e-3,
                "grayscale view has channel difference {max_diff}"
            );
        } else {
            colour += 1;
            assert!(max_diff >= 1.0, "colour view came out grey");
        }
    }
    assert!(grey > 0 && colour > 0);
}

#[test]
fn output_stays_within_normalised_pixel_range() {
    let img = random_image(40, 30, 7);
    let cfg = AugmentConfig::simsiam(16, true);
    let plane = 16 * 16;
    for (_, out) in many_views(&img, &cfg, true).into_iter().take(500) {
        assert_eq!(out.len(), 3 * plane);
        for (c, chan) in out.chunks_exact(plane).enumerate() {
            let (lo, hi) = (-cfg.mean[c] / cfg.std[c], (1.0 - cfg.mean[c]) / cfg.std[c]);
            assert!(chan.iter().all(|v| (lo - 1e-5..=hi + 1e-5).contains(v)));
        }
    }
}

#[test]
fn plain_view_equals_the_shared_normalisation() {
    let img = random_image(24, 24, 8);
    let cfg = plain(24);
    let mut out = vec![0.0; cfg.view_len()];
    let rec = view(&img, &cfg, &mut view_rng(0, 0, 0, 0), &mut out);
    assert_eq!(rec.crop, (0, 0, 24, 24));
    let mut expect = vec![0.0; cfg.view_len()];
    preprocess::normalize_into(&img, &cfg.mean, &cfg.std, &mut expect);
    assert_eq!(out, expect);
}

#[test]
fn blur_reduces_checkerboard_variance_and_off_keeps_it() {
    let board = RgbImage::from_fn(32, 32, |x, y| Rgb([((x + y) % 2 * 255) as u8; 3]));
    let mut out = vec![0.0; 3 * 32 * 32];
    let off = plain(32);
    view(&board, &off, &mut view_rng(0, 0, 0, 0), &mut out);
    let original = variance(&out);
    assert!(original > 1.0);

    let on = AugmentConfig {
        blur_p: 1.0,
        blur_sigma: (1.0, 2.0),
        ..off
    };
    let rec = view(&board, &on, &mut view_rng(0, 0, 0, 0), &mut out);
    assert!(rec.blur_sigma.is_some());
    assert!(
        variance(&out) < 0.1 * original,
        "{} vs {original}",
        variance(&out)
    );
}

#[test]
fn degenerate_images_still_give_full_views() {
    let cfg = AugmentConfig::simsiam(8, true);
    let mut out = vec![0.0; cfg.view_len()];
    for (w, h) in [(1, 1), (1, 50), (50, 1), (3, 2)] {
        let rec = view(
            &random_image(w, h, 9),
            &cfg,
            &mut view_rng(0, 0, 0, 0),
            &mut out,
        );
        assert!(rec.crop.0 + rec.crop.2 <= w && rec.crop.1 + rec.crop.3 <= h);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn config_defaults_validation_and_serde() {
    let cfg = AugmentConfig::simsiam(64, true);
    assert_eq!(
        (cfg.scale, cfg.jitter_p, cfg.blur_p, cfg.hue),
        ((0.2, 1.0), 0.8, 0.5, 0.1)
    );
    assert_eq!(AugmentConfig::simsiam(64, false).blur_p, 0.0);
    assert!(cfg.validate().is_ok());
    let bad = [
        AugmentConfig {
            scale: (0.5, 0.2),
            ..cfg.clone()
        },
        AugmentConfig {
            hue: 0.7,
            ..cfg.clone()
        },
        AugmentConfig {
            flip_p: 1.5,
            ..cfg.clone()
        },
        AugmentConfig {
            size: 0,
            ..cfg.clone()
        },
        AugmentConfig {
            blur_sigma: (0.0, 2.0),
            ..cfg.clone()
        },
        AugmentConfig {
            blur_sigma: (0.1, 100.0),
            ..cfg.clone()
        },
    ];
    for b in bad {
        assert!(b.validate().is_err(), "{b:?} should be rejected");
    }
    let json = serde_json::to_string(&cfg).expect("serialise");
    assert_eq!(
        serde_json::from_str::<AugmentConfig>(&json).expect("deserialise"),
        cfg
    );
}

/// `cargo test --release -p simsiam-trainer --lib bench_views -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run in release"]
fn bench_views_prints_throughput() {
    let rate = bench_views(20_000, 64);
    println!("augment: {rate:.0} views/s (80×80 → 64×64, one thread)");
    assert!(rate > 0.0);
}

#[test]
fn a_zoom_out_shrinks_the_crop_onto_a_plain_canvas() {
    // A flat orange image: the shrunk crop stays orange, the canvas is one other colour.
    let img = RgbImage::from_pixel(80, 80, Rgb([230, 120, 20]));
    let cfg = AugmentConfig {
        zoom_out_p: 1.0,
        zoom_out_min: 0.4,
        ..plain(40)
    };
    let mut out = vec![0.0; cfg.view_len()];
    for i in 0..20 {
        let rec = view(&img, &cfg, &mut view_rng(5, 0, i, 0), &mut out);
        let f = rec.zoom_out.expect("p = 1 always zooms out");
        assert!((0.4..=1.0).contains(&f), "{f}");
        let px = denormalise(&out, &cfg);
        let orange = (0..px[0].len())
            .filter(|&k| {
                (px[0][k] - 230.0).abs() < 2.0
                    && (px[1][k] - 120.0).abs() < 2.0
                    && (px[2][k] - 20.0).abs() < 2.0
            })
            .count();
        let inner = (40.0 * f).round();
        assert!(
            (orange as f32 - inner * inner).abs() <= 2.0 * inner + 2.0,
            "{orange} orange pixels for a {inner}-pixel square (f = {f})"
        );
    }
    // Off (SimSiam's recipe): no zoom, and no random number drawn for it.
    let off = AugmentConfig {
        zoom_out_min: 0.4,
        ..AugmentConfig::simsiam(40, false)
    };
    let mut a = vec![0.0; off.view_len()];
    let mut b = vec![0.0; off.view_len()];
    let rec = view(&img, &off, &mut view_rng(5, 0, 1, 0), &mut a);
    view(
        &img,
        &AugmentConfig::simsiam(40, false),
        &mut view_rng(5, 0, 1, 0),
        &mut b,
    );
    assert_eq!((rec.zoom_out, a), (None, b));
}

#[test]
fn zoomed_out_centres_the_image_on_the_fill() {
    let img = RgbImage::from_pixel(40, 30, Rgb([255, 0, 0]));
    let z = zoomed_out(&img, 0.5, Rgb([124, 116, 104]));
    assert_eq!(z.dimensions(), (40, 30));
    assert_eq!(z.get_pixel(0, 0).0, [124, 116, 104]);
    assert_eq!(z.get_pixel(39, 29).0, [124, 116, 104]);
    assert_eq!(z.get_pixel(20, 15).0, [255, 0, 0]);
    let red = z.pixels().filter(|p| p.0 == [255, 0, 0]).count();
    assert_eq!(red, 20 * 15, "half the width and half the height");
}
