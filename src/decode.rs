//! Robust image decoding: any JPEG/PNG a user brings becomes an upright RGB8 image or a typed
//! error, never a panic or a runaway allocation.
//!
//! Real datasets are messy (Stanford Dogs has grayscale JPEGs and a 4-channel PNG named
//! `.jpg`), and the server decodes untrusted uploads, so the format is guessed from content,
//! the dimensions are checked before any pixel is decoded, and every colour type is
//! converted to RGB8. Bulk decoding for training (the trainer's `data::cache`) skips bad files
//! instead of aborting a run.

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// The pixel cap [`load_rgb`] applies: ~134 Mpx, far above any photo, well below the point
/// where an RGBA16 decode buffer (8 bytes per pixel) would exhaust memory.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 27;

/// Why an image could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read {}: {source}", path.as_deref().map_or("image data".into(), |p| p.display().to_string()))]
    Io {
        path: Option<PathBuf>,
        source: std::io::Error,
    },
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("image is {width}×{height}, more than the limit of {max_pixels} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl From<ImageError> for DecodeError {
    fn from(e: ImageError) -> Self {
        match e {
            // Decoding reads from memory, so an I/O error here means the data ended early.
            ImageError::IoError(e) => DecodeError::Corrupt(format!("truncated data: {e}")),
            ImageError::Unsupported(u)
                if u.format_hint() == image::error::ImageFormatHint::Unknown =>
            {
                DecodeError::UnknownFormat
            }
            other => DecodeError::Corrupt(other.to_string()),
        }
    }
}

/// Decodes JPEG or PNG bytes to an upright RGB8 image.
///
/// The format comes from the content, not a file name. With `max_pixels`, the header's
/// dimensions are checked before the pixel data is decoded, so a tiny file claiming
/// 100000×100000 pixels is refused without allocating for it. EXIF orientation is applied,
/// so phone photos come out the way their owner saw them.
pub fn decode_bytes(bytes: &[u8], max_pixels: Option<u64>) -> Result<RgbImage, DecodeError> {
    let (decoder, format) = open(bytes)?;
    finish(decoder, format, bytes, max_pixels)
}

/// A decoder over `bytes` with its headers read, and the format guessed from the content.
fn open(bytes: &[u8]) -> Result<(impl ImageDecoder + '_, ImageFormat), DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DecodeError::Io { path: None, source })?;
    let format = reader.format().ok_or(DecodeError::UnknownFormat)?;
    // The crate's default allocation limit would reject big images with an opaque message
    // before we see their size; our own check below replaces it.
    reader.no_limits();
    Ok((reader.into_decoder()?, format))
}

/// The rest of [`decode_bytes`] once the headers are read: checks, pixels, orientation.
fn finish(
    mut decoder: impl ImageDecoder,
    format: ImageFormat,
    bytes: &[u8],
    max_pixels: Option<u64>,
) -> Result<RgbImage, DecodeError> {
    let orientation = check_headers(&mut decoder, format, bytes, max_pixels)?;
    Ok(upright_rgb8(
        DynamicImage::from_decoder(decoder)?,
        orientation,
    ))
}

/// The checks made before any pixel is decoded: the header's size against `max_pixels`
/// (decompression bombs) and, for a JPEG, an end-of-image marker. Returns the EXIF
/// orientation.
fn check_headers(
    decoder: &mut impl ImageDecoder,
    format: ImageFormat,
    bytes: &[u8],
    max_pixels: Option<u64>,
) -> Result<image::metadata::Orientation, DecodeError> {
    let (width, height) = decoder.dimensions();
    match max_pixels {
        Some(max_pixels) if u64::from(width) * u64::from(height) > max_pixels => {
            return Err(DecodeError::TooLarge {
                width,
                height,
                max_pixels,
            })
        }
        _ => {}
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(DecodeError::Corrupt(
            "truncated JPEG: no end-of-image marker after the image data".into(),
        ));
    }
    // A broken EXIF block must not cost the image: fall back to "as stored".
    Ok(decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms))
}

/// `img` turned the way its EXIF orientation says, as RGB8.
fn upright_rgb8(mut img: DynamicImage, orientation: image::metadata::Orientation) -> RgbImage {
    img.apply_orientation(orientation);
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// [`decode_bytes`] for a consumer that will shrink the image to a shorter side of
/// `min_side` anyway (the server, `trainer embed`): a JPEG at least twice that size is
/// decoded at 1/2, 1/4 or 1/8 scale inside the inverse DCT, the smallest scale that keeps
/// the shorter side ≥ `min_side`. For a 500×375 photo and an 80-pixel resize that is a
/// quarter-size decode, several times cheaper, and the bilinear resize that follows starts
/// from a sharper, already band-limited image. Everything else (checks, orientation, other
/// formats and colour types) is as in [`decode_bytes`].
pub fn decode_bytes_min_side(
    bytes: &[u8],
    max_pixels: Option<u64>,
    min_side: u32,
) -> Result<RgbImage, DecodeError> {
    let (mut decoder, format) = open(bytes)?;
    let (width, height) = decoder.dimensions();
    let short = width.min(height);
    if format != ImageFormat::Jpeg || min_side == 0 || short < 2 * min_side {
        return finish(decoder, format, bytes, max_pixels);
    }
    let orientation = check_headers(&mut decoder, format, bytes, max_pixels)?;
    let want = |side: u32| {
        (u64::from(side) * u64::from(min_side))
            .div_ceil(u64::from(short))
            .min(u64::from(u16::MAX)) as u16
    };
    let mut jpeg = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let corrupt = |e: jpeg_decoder::Error| DecodeError::Corrupt(e.to_string());
    jpeg.scale(want(width), want(height)).map_err(corrupt)?;
    let pixels = jpeg.decode().map_err(corrupt)?;
    let info = jpeg
        .info()
        .ok_or_else(|| DecodeError::Corrupt("JPEG without a frame header".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let img = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
        }
        // CMYK and 16-bit JPEGs are rare: the general path handles them.
        _ => return decode_bytes(bytes, max_pixels),
    }
    .ok_or_else(|| DecodeError::Corrupt("JPEG decoder returned a short buffer".into()))?;
    Ok(upright_rgb8(img, orientation))
}

/// Whether the JPEG's marker structure reaches an end-of-image marker (FF D9).
///
/// The JPEG decoder fills a cut-off scan with grey and reports success, so an interrupted
/// download would otherwise enter the training set as a half-grey image. The segments are
/// walked by their lengths, so an EXIF thumbnail's own EOI (inside APP1) does not count and
/// data appended after the real EOI (phones append motion-photo videos) is never looked at.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let seg_len = |at: usize| {
        Some(usize::from(u16::from_be_bytes([
            *b.get(at)?,
            *b.get(at + 1)?,
        ])))
    };
    let mut pos = 2; // after SOI
    loop {
        // Tolerate stray bytes between segments, as decoders do: resync on the next 0xFF.
        let Some(ff) = b
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
        else {
            return false;
        };
        pos += ff;
        while b.get(pos) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        let Some(&marker) = b.get(pos) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            0x00 | 0x01 | 0xD0..=0xD7 => pos += 1, // no length field
            _ => {
                let Some(len) = seg_len(pos + 1) else {
                    return false;
                };
                pos += 1 + len;
                if marker == 0xDA {
                    // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a restart
                    // marker until the next real marker.
                    loop {
                        let Some(ff) = b.get(pos..).and_then(|r| r.iter().position(|&x| x == 0xFF))
                        else {
                            return false;
                        };
                        pos += ff;
                        match b.get(pos + 1) {
                            None => return false,
                            Some(0x00 | 0xD0..=0xD7) => pos += 2,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Reads a JPEG/PNG file to an upright RGB8 image, capped at [`DEFAULT_MAX_PIXELS`].
pub fn load_rgb(path: &Path) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io {
        path: Some(path.to_path_buf()),
        source,
    })?;
    decode_bytes(&bytes, Some(DEFAULT_MAX_PIXELS))
}

#[cfg(test)]
mod tests;
