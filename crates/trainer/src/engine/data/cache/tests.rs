//! The cache's tests on files the tests write: good, misnamed, broken and missing images.

use super::*;
use image::{GrayImage, ImageFormat, Rgb};
use tempfile::TempDir;

/// 32×16 (w×h): the top-left 16×8 quadrant red, the rest blue.
fn quadrant_pattern() -> RgbImage {
    RgbImage::from_fn(32, 16, |x, y| {
        if x < 16 && y < 8 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

#[test]
fn crop_to_box_clamps_and_falls_back() {
    let img = RgbImage::from_fn(10, 8, |x, y| Rgb([x as u8, y as u8, 0]));
    let crop = crop_to_box(
        &img,
        BBox {
            xmin: 2,
            ymin: 3,
            xmax: 6,
            ymax: 100,
        },
    );
    assert_eq!(crop.dimensions(), (4, 5));
    assert_eq!(crop.get_pixel(0, 0), &Rgb([2, 3, 0]));
    let degenerate = crop_to_box(
        &img,
        BBox {
            xmin: 7,
            ymin: 0,
            xmax: 7,
            ymax: 8,
        },
    );
    assert_eq!(degenerate.dimensions(), (10, 8));
    let outside = crop_to_box(
        &img,
        BBox {
            xmin: 50,
            ymin: 50,
            xmax: 60,
            ymax: 60,
        },
    );
    assert_eq!(outside.dimensions(), (10, 8));
}

#[test]
fn decode_samples_keeps_good_files_in_order_and_names_bad_ones() {
    let dir = TempDir::new().unwrap();
    let path = |name: &str| dir.path().join(name);
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(path(name), bytes).unwrap();
        path(name)
    };
    let save = |name: &str, img: image::DynamicImage, format| {
        img.save_with_format(path(name), format).unwrap();
        path(name)
    };
    let good = save("a_good.jpg", quadrant_pattern().into(), ImageFormat::Jpeg);
    let jpeg = std::fs::read(&good).unwrap();
    let files = [
        good,
        write("b_noise.jpg", &[0x42; 300]),
        save(
            "c_png_named.jpg",
            RgbImage::new(40, 20).into(),
            ImageFormat::Png,
        ),
        write("d_empty.jpg", &[]),
        write("e_truncated.jpg", &jpeg[..100]),
        path("f_missing.jpg"),
        save(
            "g_gray.jpg",
            GrayImage::new(8, 24).into(),
            ImageFormat::Jpeg,
        ),
    ];
    let bbox = Some(BBox {
        xmin: 0,
        ymin: 0,
        xmax: 16,
        ymax: 8,
    });
    let samples: Vec<Sample> = files
        .iter()
        .enumerate()
        .map(|(i, path)| Sample {
            path: path.clone(),
            label: i,
            bbox: if i == 0 { bbox } else { None },
        })
        .collect();
    let out = decode_samples(&samples, Some(4), "test");
    assert_eq!(out.labels, [0, 2, 6]);
    assert_eq!(
        out.paths,
        [files[0].clone(), files[2].clone(), files[6].clone()]
    );
    // The box crops the red 16×8 quadrant, then the shorter side becomes 4.
    assert_eq!(out.images[0].dimensions(), (8, 4));
    let p = out.images[0].get_pixel(4, 2);
    assert!(p[0] > 200 && p[1] < 60 && p[2] < 60, "red: {p:?}");
    assert_eq!(out.images[1].dimensions(), (8, 4));
    assert_eq!(out.images[2].dimensions(), (4, 12));
    let skipped: Vec<&PathBuf> = out.skipped.iter().map(|s| &s.path).collect();
    assert_eq!(skipped, [&files[1], &files[3], &files[4], &files[5]]);
    assert!(out.skipped.iter().all(|s| !s.reason.is_empty()));
}

#[test]
fn skipped_summary_lists_twenty_then_counts() {
    let skipped: Vec<Skipped> = (0..23)
        .map(|i| Skipped {
            path: PathBuf::from(format!("img{i}.jpg")),
            reason: "bad".into(),
        })
        .collect();
    let msg = skipped_summary("train", 100, &skipped);
    assert!(msg.starts_with("train: skipped 23 of 100"), "{msg}");
    assert!(
        msg.contains("img19.jpg: bad") && !msg.contains("img20.jpg"),
        "{msg}"
    );
    assert!(msg.ends_with("… and 3 more"), "{msg}");
}
