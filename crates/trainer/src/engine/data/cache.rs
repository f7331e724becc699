//! The in-memory image cache of a run: every sample decoded once, cropped to its box and
//! shrunk to training size, with the files that failed listed rather than fatal.

use super::{BBox, Sample};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use simsiam::decode::load_rgb;
use std::path::PathBuf;

/// How many bad files the end-of-scan warning names before summarising.
const MAX_LISTED: usize = 20;

/// A file [`decode_samples`] left out, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The images that decoded, in input order, with their labels and paths (parallel vectors).
#[derive(Clone, Debug, Default)]
pub struct DecodedImages {
    pub images: Vec<RgbImage>,
    pub labels: Vec<usize>,
    pub paths: Vec<PathBuf>,
    pub skipped: Vec<Skipped>,
}

/// Decodes every sample once, in parallel, into an in-memory cache.
///
/// Each image is cropped to its box (if any) and, with `shorter_side`, shrunk so that the
/// cache holds training-size pixels rather than full photos. One bad file in twenty thousand
/// must not end a training run, so failures are collected in `skipped` and reported in a
/// single warning at the end; `what` names the scan in the progress bar and the warning.
pub fn decode_samples(samples: &[Sample], shorter_side: Option<u32>, what: &str) -> DecodedImages {
    let bar = ProgressBar::new(samples.len() as u64);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})");
    bar.set_style(style.unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(format!("decoding {what}"));
    let results: Vec<Result<RgbImage, String>> = samples
        .par_iter()
        .map(|sample| {
            let result = load_rgb(&sample.path)
                .map_err(|e| e.to_string())
                .map(|img| {
                    let img = match sample.bbox {
                        Some(b) => crop_to_box(&img, b),
                        None => img,
                    };
                    match shorter_side {
                        Some(side) => simsiam::preprocess::resize_shorter(&img, side),
                        None => img,
                    }
                });
            bar.inc(1);
            result
        })
        .collect();
    bar.finish_and_clear();

    let mut out = DecodedImages::default();
    for (sample, result) in samples.iter().zip(results) {
        match result {
            Ok(img) => {
                out.images.push(img);
                out.labels.push(sample.label);
                out.paths.push(sample.path.clone());
            }
            Err(reason) => out.skipped.push(Skipped {
                path: sample.path.clone(),
                reason,
            }),
        }
    }
    if !out.skipped.is_empty() {
        log::warn!("{}", skipped_summary(what, samples.len(), &out.skipped));
    }
    out
}

/// The one warning for a scan: counts, then up to [`MAX_LISTED`] files with reasons.
fn skipped_summary(what: &str, total: usize, skipped: &[Skipped]) -> String {
    let mut msg = format!(
        "{what}: skipped {} of {total} images that could not be decoded:",
        skipped.len()
    );
    for s in skipped.iter().take(MAX_LISTED) {
        msg.push_str(&format!("\n  {}: {}", s.path.display(), s.reason));
    }
    if skipped.len() > MAX_LISTED {
        msg.push_str(&format!("\n  … and {} more", skipped.len() - MAX_LISTED));
    }
    msg
}

/// Crops to `b` (end-exclusive, clamped to the image); a box with no area after clamping
/// falls back to the whole image, because a wrong box should not cost the sample.
pub fn crop_to_box(img: &RgbImage, b: BBox) -> RgbImage {
    let (w, h) = img.dimensions();
    let (x0, x1) = (b.xmin.min(w), b.xmax.min(w));
    let (y0, y1) = (b.ymin.min(h), b.ymax.min(h));
    if x1 <= x0 || y1 <= y0 {
        return img.clone();
    }
    image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image()
}

#[cfg(test)]
mod tests;
