//! Decoding tests on images the tests generate: every colour type a dataset may contain,
//! misnamed and broken files, EXIF orientation and the decompression-bomb guard.

use super::*;
use image::{GrayImage, ImageBuffer, ImageFormat, LumaA, Rgb, Rgba, RgbaImage};
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

fn is_blue(p: &Rgb<u8>) -> bool {
    p[0] < 60 && p[1] < 60 && p[2] > 200
}

/// An APP1 segment carrying a little-endian EXIF IFD with one Orientation entry.
fn exif_app1(orientation: u16) -> Vec<u8> {
    let mut tiff = b"II\x2a\x00\x08\x00\x00\x00".to_vec(); // header, IFD0 at offset 8
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&u32::from(orientation).to_le_bytes()); // value, left-aligned
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend(payload);
    seg
}

/// A PNG claiming `w`×`h` RGB8 pixels whose image data is a single empty zlib stream.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let empty_zlib = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    for (kind, data) in [
        (b"IHDR", &ihdr[..]),
        (b"IDAT", &empty_zlib[..]),
        (b"IEND", &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&chunk);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    out
}

#[test]
fn grayscale_jpeg_becomes_gray_rgb() {
    let gray = GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 30 } else { 220 }]));
    let rgb = decode_bytes(&jpeg_bytes(gray), None).unwrap();
    assert_eq!(rgb.dimensions(), (16, 16));
    let (dark, light) = (rgb.get_pixel(2, 2), rgb.get_pixel(13, 2));
    assert!(dark[0] < 50 && light[0] > 200, "{dark:?} {light:?}");
    assert!(dark[0] == dark[1] && dark[1] == dark[2]);
}

#[test]
fn alpha_and_16_bit_pngs_become_rgb8() {
    let rgba = RgbaImage::from_pixel(3, 2, Rgba([10, 20, 30, 128]));
    let rgb = decode_bytes(&png_bytes(rgba), None).unwrap();
    assert_eq!(rgb.get_pixel(2, 1), &Rgb([10, 20, 30]));

    let la = ImageBuffer::from_pixel(2, 2, LumaA([77u8, 0]));
    let rgb = decode_bytes(&png_bytes(DynamicImage::ImageLumaA8(la)), None).unwrap();
    assert_eq!(rgb.get_pixel(0, 0), &Rgb([77, 77, 77]));

    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(2, 2, Rgb([0xffff, 0x8080, 0]));
    let rgb = decode_bytes(&png_bytes(DynamicImage::ImageRgb16(deep)), None).unwrap();
    assert_eq!(rgb.get_pixel(1, 1), &Rgb([255, 128, 0]));
}

#[test]
fn png_named_jpg_is_detected_by_content() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("really_a_png.jpg");
    let rgba = RgbaImage::from_pixel(5, 4, Rgba([1, 2, 3, 255]));
    std::fs::write(&path, png_bytes(rgba)).unwrap();
    let rgb = load_rgb(&path).unwrap();
    assert_eq!(
        (rgb.dimensions(), rgb.get_pixel(4, 3)),
        ((5, 4), &Rgb([1, 2, 3]))
    );
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb() {
    // Left half: magenta + yellow ink (red); right half: no ink (white).
    let (w, h) = (16u16, 8u16);
    let data: Vec<u8> = (0..h)
        .flat_map(|_| {
            (0..w).flat_map(|x| {
                if x < 8 {
                    [0, 255, 255, 0]
                } else {
                    [0, 0, 0, 0]
                }
            })
        })
        .collect();
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 100)
        .encode(&data, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let rgb = decode_bytes(&bytes, None).unwrap();
    assert_eq!(rgb.dimensions(), (16, 8));
    assert!(is_red(rgb.get_pixel(2, 4)), "{:?}", rgb.get_pixel(2, 4));
    let white = rgb.get_pixel(13, 4);
    assert!(white.0.iter().all(|&c| c > 220), "{white:?}");
}

#[test]
fn exif_orientation_6_rotates_clockwise() {
    let plain = jpeg_bytes(quadrant_pattern());
    let stored = decode_bytes(&plain, None).unwrap();
    assert_eq!(stored.dimensions(), (32, 16));
    assert!(is_red(stored.get_pixel(4, 4)));

    let mut bytes = plain[..2].to_vec(); // SOI
    bytes.extend(exif_app1(6));
    bytes.extend_from_slice(&plain[2..]);
    let rgb = decode_bytes(&bytes, None).unwrap();
    // Rotating 90° clockwise takes the stored top-left quadrant to the top right.
    assert_eq!(rgb.dimensions(), (16, 32));
    assert!(is_red(rgb.get_pixel(12, 4)), "{:?}", rgb.get_pixel(12, 4));
    for (x, y) in [(4, 4), (4, 28), (12, 28)] {
        assert!(
            is_blue(rgb.get_pixel(x, y)),
            "({x},{y}) {:?}",
            rgb.get_pixel(x, y)
        );
    }
}

#[test]
fn broken_inputs_are_typed_errors() {
    let jpeg = jpeg_bytes(quadrant_pattern());
    let truncated = decode_bytes(&jpeg[..jpeg.len().min(120)], None);
    assert!(
        matches!(truncated, Err(DecodeError::Corrupt(_))),
        "{truncated:?}"
    );
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(matches!(
        decode_bytes(&noise, None),
        Err(DecodeError::UnknownFormat)
    ));
    assert!(matches!(
        decode_bytes(&[], None),
        Err(DecodeError::UnknownFormat)
    ));
    let missing = load_rgb(Path::new("/nonexistent/dog.jpg")).unwrap_err();
    assert!(matches!(missing, DecodeError::Io { path: Some(_), .. }));
    assert!(
        missing.to_string().contains("/nonexistent/dog.jpg"),
        "{missing}"
    );
}

#[test]
fn max_pixels_refuses_a_bomb_before_decoding() {
    // The file has no pixel data at all, so reaching TooLarge proves nothing was decoded.
    let bomb = png_header_only(100_000, 100_000);
    assert!(matches!(
        decode_bytes(&png_header_only(4, 4), None),
        Err(DecodeError::Corrupt(_))
    ));
    match decode_bytes(&bomb, Some(1 << 24)) {
        Err(DecodeError::TooLarge {
            width,
            height,
            max_pixels,
        }) => {
            assert_eq!((width, height, max_pixels), (100_000, 100_000, 1 << 24));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let small = png_bytes(RgbImage::new(10, 10));
    assert!(decode_bytes(&small, Some(100)).is_ok());
    assert!(matches!(
        decode_bytes(&small, Some(99)),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn jpeg_cut_mid_scan_is_refused_but_trailing_bytes_are_fine() {
    let img = RgbImage::from_fn(64, 64, |x, y| Rgb([(x ^ y) as u8, (x * 3) as u8, y as u8]));
    let jpeg = jpeg_bytes(img);
    for cut in [jpeg.len() / 2, jpeg.len() - 2] {
        let result = decode_bytes(&jpeg[..cut], None);
        assert!(
            matches!(&result, Err(DecodeError::Corrupt(m)) if m.contains("truncated")),
            "{result:?}"
        );
    }
    // Data appended after the EOI (as phones append motion-photo videos) is ignored, even
    // when it looks like a scan that never ends.
    let mut appended = jpeg.clone();
    appended.extend_from_slice(&[0, 0, 0xFF, 0xDA, 0, 4, 1, 2, 0xFF, 0xD8, 9, 9]);
    assert_eq!(
        decode_bytes(&appended, None).unwrap().dimensions(),
        (64, 64)
    );
    // A thumbnail's EOI inside APP1 does not make a cut-off main image complete.
    let thumbnail = [0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 7, 0xFF, 0xD9];
    let mut with_thumb = jpeg[..2].to_vec();
    with_thumb.extend_from_slice(&[0xFF, 0xE1, 0, (thumbnail.len() + 2) as u8]);
    with_thumb.extend_from_slice(&thumbnail);
    with_thumb.extend_from_slice(&jpeg[2..]);
    assert_eq!(
        decode_bytes(&with_thumb, None).unwrap().dimensions(),
        (64, 64)
    );
    let cut = with_thumb.len() / 2;
    assert!(matches!(
        decode_bytes(&with_thumb[..cut], None),
        Err(DecodeError::Corrupt(_))
    ));
}

/// A smooth 600×400 photo-like JPEG (gradients and a soft disc).
fn big_photo() -> Vec<u8> {
    let img = RgbImage::from_fn(600, 400, |x, y| {
        let d = ((x as f32 - 300.0).powi(2) + (y as f32 - 200.0).powi(2)).sqrt();
        let disc = if d < 120.0 { 180 } else { 40 };
        Rgb([(x * 255 / 600) as u8, (y * 255 / 400) as u8, disc])
    });
    jpeg_bytes(img)
}

#[test]
fn large_jpegs_decode_at_a_reduced_scale_that_still_covers_the_resize() {
    let bytes = big_photo();
    let full = decode_bytes(&bytes, None).unwrap();
    let small = decode_bytes_min_side(&bytes, None, 80).unwrap();
    assert_eq!(full.dimensions(), (600, 400));
    // 1/4 scale: 150×100, the smallest DCT scale with a shorter side ≥ 80.
    assert_eq!(small.dimensions(), (150, 100));
    // After the model's resize both paths give nearly the same pixels.
    let a = crate::preprocess::resize_shorter(&full, 80);
    let b = crate::preprocess::resize_shorter(&small, 80);
    assert_eq!(a.dimensions(), b.dimensions());
    let mean_diff = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as f32 - *y as f32).abs())
        .sum::<f32>()
        / a.as_raw().len() as f32;
    assert!(mean_diff < 3.0, "mean |diff| {mean_diff} of 255");
    // Small images, PNGs and the checks are those of decode_bytes.
    assert_eq!(
        decode_bytes_min_side(&bytes, None, 300)
            .unwrap()
            .dimensions(),
        (600, 400)
    );
    let png = png_bytes(quadrant_pattern());
    assert_eq!(
        decode_bytes_min_side(&png, None, 4).unwrap(),
        quadrant_pattern()
    );
    assert!(matches!(
        decode_bytes_min_side(&bytes, Some(1000), 80),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_bytes_min_side(&bytes[..bytes.len() / 2], None, 80),
        Err(DecodeError::Corrupt(_))
    ));
}
