//! The request images: JPEGs from a folder, or synthetic photos.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Up to `n` JPEG files under `dir`, or generated ones; and where they came from.
pub fn request_images(dir: Option<&Path>, n: usize) -> Result<(Vec<Vec<u8>>, String)> {
    let mut files = Vec::new();
    if let Some(d) = dir {
        collect_jpegs(d, &mut files, n);
    }
    if let (false, Some(d)) = (files.is_empty(), dir) {
        files.sort();
        let jpegs = files
            .iter()
            .map(|f| std::fs::read(f).with_context(|| f.display().to_string()))
            .collect::<Result<_>>()?;
        return Ok((jpegs, d.display().to_string()));
    }
    let source = match dir {
        Some(d) => format!("synthetic 500×375 photos (no JPEGs under {})", d.display()),
        None => "synthetic 500×375 photos".to_string(),
    };
    Ok(((0..n).map(|i| synthetic_jpeg(i as u32)).collect(), source))
}

fn collect_jpegs(dir: &Path, out: &mut Vec<PathBuf>, n: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if out.len() >= n {
            return;
        }
        if p.is_dir() {
            collect_jpegs(&p, out, n);
        } else if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        {
            out.push(p);
        }
    }
}

/// A 500×375 photo-like JPEG (quality 75, the encoder's default): smooth colour fields, a
/// soft subject and mild grain, about the size of a web photo at that resolution.
fn synthetic_jpeg(seed: u32) -> Vec<u8> {
    let (cx, cy) = (
        150.0 + (seed % 7) as f32 * 30.0,
        120.0 + (seed % 5) as f32 * 30.0,
    );
    let img = image::RgbImage::from_fn(500, 375, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
        let subject = (1.0 - (d / 110.0).min(1.0)) * 120.0;
        let grain =
            ((x.wrapping_mul(73) ^ y.wrapping_mul(151) ^ seed.wrapping_mul(31)) % 17) as f32;
        let r = 60.0 + fx * 0.25 + subject + grain;
        let g = 80.0 + fy * 0.3 + subject * 0.6 + grain;
        let b = 120.0 - fy * 0.15 + grain;
        image::Rgb([
            r.min(255.0) as u8,
            g.min(255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory image cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Jpeg);
    out.into_inner()
}
