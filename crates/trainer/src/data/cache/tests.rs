//! The cache's tests on files the tests write: good, misnamed, broken and missing images.

use super::*;
use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage};
use std::io::Cursor;
use tempfile::TempDir;

fn png_bytes(img: impl Into<DynamicImage>) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.into().write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg_bytes(img: impl Into<DynamicImage>) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100);
    img.into().write_with_encoder(encoder).unwrap();
    out
}

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

fn is_red(p: &Rgb<u8>) -> bool {
    p[0] > 200 && p[1] < 60 && p[2] < 60
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
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let jpeg = jpeg_bytes(quadrant_pattern());
    let files = [
        write("a_good.jpg", &jpeg),
        write("b_noise.jpg", &[0x42; 300]),
        write("c_png_named.jpg", &png_bytes(RgbImage::new(40, 20))),
        write("d_empty.jpg", &[]),
        write("e_truncated.jpg", &jpeg[..100]),
        dir.path().join("f_missing.jpg"),
        write("g_gray.jpg", &jpeg_bytes(GrayImage::new(8, 24))),
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
    assert!(is_red(out.images[0].get_pixel(4, 2)));
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
