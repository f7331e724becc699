//! PNG plots of training curves: loss, projector std against 1/√d, kNN accuracy for
//! pretraining; loss and accuracy on training views and the validation slice for
//! fine-tuning.
//!
//! Drawn with plotters' bitmap backend and a bundled font (DejaVu Sans), so plots look the
//! same on every machine and need no system font library.

use crate::engine::history::{EpochMetrics, FinetuneMetrics};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

static FONT: Once = Once::new();

pub(crate) fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        // Only fails on an unparsable font, which the bundled one is not.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Writes a three-panel PNG (loss; std with its healthy level; kNN top-1) to `path`.
pub fn training_curves(metrics: &[EpochMetrics], path: &Path) -> Result<(), PlotError> {
    register_font();
    draw(metrics, path).map_err(|e| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes a two-panel PNG (loss; top-1, each for training views and validation) to `path`.
pub fn finetune_curves(metrics: &[FinetuneMetrics], path: &Path) -> Result<(), PlotError> {
    register_font();
    draw_finetune(metrics, path).map_err(|e| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn draw_finetune(metrics: &[FinetuneMetrics], path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, (1000, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let last = metrics.iter().map(|m| m.epoch).max().unwrap_or(1).max(1) as f64;
    let series = |f: &dyn Fn(&FinetuneMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let (loss, val_loss) = (series(&|m| m.loss), series(&|m| m.val_loss));
    let train = series(&|m| m.train_top1 * 100.0);
    let val = series(&|m| m.val_top1 * 100.0);
    panel(
        &panels[0],
        "cross-entropy",
        "loss",
        last,
        &[
            ("train (augmented)", &loss, BLUE),
            ("validation", &val_loss, RED),
        ],
    )?;
    panel(
        &panels[1],
        "top-1 accuracy (%)",
        "top-1 %",
        last,
        &[
            ("train (augmented)", &train, BLUE),
            ("validation", &val, RED),
        ],
    )?;
    root.present()?;
    Ok(())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// A named, coloured series of (epoch, value) points.
type Line<'a> = (&'a str, &'a Vec<(f64, f64)>, RGBColor);

fn draw(metrics: &[EpochMetrics], path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let last = metrics.iter().map(|m| m.epoch).max().unwrap_or(1).max(1) as f64;
    let series = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
            .collect()
    };
    let loss = series(&|m| Some(m.loss));
    let std = series(&|m| Some(m.z_std));
    let healthy = series(&|m| Some(m.z_std_healthy));
    let knn = series(&|m| m.knn_top1.map(|v| v * 100.0));
    panel(
        &panels[0],
        "SimSiam loss",
        "loss",
        last,
        &[("loss", &loss, BLUE)],
    )?;
    panel(
        &panels[1],
        "std of l2-normalised z",
        "std",
        last,
        &[("z std", &std, RED), ("1/sqrt(d)", &healthy, BLACK)],
    )?;
    panel(
        &panels[2],
        "weighted kNN top-1 (%)",
        "top-1 %",
        last,
        &[("kNN", &knn, GREEN)],
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    ylabel: &str,
    last: f64,
    lines: &[Line],
) -> DrawResult {
    let ys = lines.iter().flat_map(|(_, pts, _)| pts.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..last, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(ylabel)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, pts, color) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("curves.png");
        let metrics: Vec<_> = (1..=4)
            .map(|e| EpochMetrics {
                epoch: e,
                step: e * 5,
                loss: -0.1 * e as f64,
                z_std: 0.02,
                z_std_healthy: 0.0221,
                z_rank: 30.0,
                lr: 0.05,
                img_per_s: 30.0,
                epoch_seconds: 2.0,
                data_wait: 0.0,
                knn_top1: (e % 2 == 0).then_some(0.2 + 0.01 * e as f64),
                collapse_alarm: false,
            })
            .collect();
        training_curves(&metrics, &path).expect("plot");
        let img = image::open(&path).expect("valid png");
        assert_eq!((img.width(), img.height()), (1500, 450));
        let ft: Vec<_> = (1..=3)
            .map(|e| FinetuneMetrics {
                epoch: e,
                step: e * 5,
                loss: 4.0 - e as f64,
                train_top1: 0.1 * e as f64,
                val_loss: 4.2 - e as f64,
                val_top1: 0.08 * e as f64,
                backbone_lr: 0.05,
                head_lr: 0.1,
                img_per_s: 60.0,
                epoch_seconds: 1.0,
                data_wait: 0.0,
            })
            .collect();
        let ft_path = dir.path().join("finetune.png");
        finetune_curves(&ft, &ft_path).expect("plot");
        let ft_img = image::open(&ft_path).expect("valid png").to_rgb8();
        assert_eq!(ft_img.dimensions(), (1000, 450));
        assert!(
            ft_img.pixels().filter(|p| p.0 == [255, 0, 0]).count() > 50,
            "validation in red"
        );
        // Not blank: some pixels are coloured.
        let rgb = img.to_rgb8();
        assert!(rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
    }
}
