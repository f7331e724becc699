//! The report's PNGs: the linear probe's confusion matrix and kNN accuracy over training.
//!
//! Both use plotters' bitmap backend with the bundled font, as [`crate::engine::plot`] does, so
//! they look the same on every machine.

use super::{cluster_order, ReportError};
use crate::engine::history::EpochMetrics;
use crate::engine::plot::register_font;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use simsiam::classes::display_name as class_display_name;
use std::path::Path;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn plot_err(path: &Path) -> impl FnOnce(Box<dyn std::error::Error>) -> ReportError + '_ {
    move |e| ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The darkest colour of the map (matplotlib's "Blues" end), for a row share of 100%.
const DARK_BLUE: (u8, u8, u8) = (8, 48, 107);

/// Colour of a row share `v` in [0, 1], white to dark blue. The square root spreads the
/// small shares apart: most confusions are a few percent of a row, which a linear map
/// would leave indistinguishable from white.
fn heat_color(v: f64) -> RGBColor {
    let t = v.clamp(0.0, 1.0).sqrt();
    let mix = |dark: u8| (255.0 + (f64::from(dark) - 255.0) * t).round() as u8;
    RGBColor(mix(DARK_BLUE.0), mix(DARK_BLUE.1), mix(DARK_BLUE.2))
}

/// Pixel geometry of the confusion PNG, fixed by the number of classes alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Geometry {
    /// Side of one matrix cell in pixels.
    pub cell: u32,
    /// Left edge and top edge of the matrix.
    pub left: u32,
    pub top: u32,
    /// Font size of the breed names.
    pub font: u32,
}

/// Space for breed names beside and below the matrix; longer names are shortened to fit.
const LABEL_AREA: u32 = 250;
/// Space for the axis titles ("true breed", "predicted breed").
const AXIS_TITLE: u32 = 40;
const TITLE: u32 = 70;
/// Colour bar with its tick labels, right of the matrix.
const COLOR_BAR: u32 = 130;

impl Geometry {
    pub(super) fn new(n: usize) -> Self {
        // Beyond 40 classes a 1800 px matrix keeps cells (15 px at 120 classes) tall
        // enough for one line of readable text each.
        let side = if n > 40 { 1800 } else { 800 };
        let cell = (side / n.max(1) as u32).max(1);
        Self {
            cell,
            left: AXIS_TITLE + LABEL_AREA,
            top: TITLE,
            font: (cell * 4 / 5).clamp(8, 16),
        }
    }

    /// Side of the matrix in pixels.
    pub(super) fn side(&self, n: usize) -> u32 {
        self.cell * n as u32
    }

    /// Width and height of the whole PNG.
    pub(super) fn canvas(&self, n: usize) -> (u32, u32) {
        let side = self.side(n);
        (
            self.left + side + COLOR_BAR,
            self.top + side + LABEL_AREA + AXIS_TITLE,
        )
    }

    /// Top-left pixel of the cell in display row `r`, display column `c`.
    pub(super) fn cell_origin(&self, r: usize, c: usize) -> (i32, i32) {
        (
            (self.left + c as u32 * self.cell) as i32,
            (self.top + r as u32 * self.cell) as i32,
        )
    }
}

/// Draws the confusion matrix as a heat map of row shares, rows and columns in
/// [`cluster_order`], with breed display names as tick labels.
///
/// `confusion[t][p]` = count of test images of true class t predicted as p; `classes`
/// holds the class names in label order. Rows are normalised because breeds have
/// different numbers of test images, and a share reads the same for all of them.
pub fn confusion_png(
    confusion: &[Vec<u32>],
    classes: &[String],
    title: &str,
    path: &Path,
) -> Result<(), ReportError> {
    let n = classes.len();
    let shape_err = |message: String| ReportError::Shape {
        path: path.to_path_buf(),
        message,
    };
    if n == 0 {
        return Err(shape_err("no classes".into()));
    }
    if confusion.len() != n || confusion.iter().any(|row| row.len() != n) {
        return Err(shape_err(format!(
            "confusion matrix must be {n}x{n} for {n} classes"
        )));
    }
    register_font();
    draw_confusion(confusion, classes, title, path).map_err(plot_err(path))
}

type Canvas<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_confusion(
    confusion: &[Vec<u32>],
    classes: &[String],
    title: &str,
    path: &Path,
) -> DrawResult {
    let n = classes.len();
    let order = cluster_order(confusion);
    let geometry = Geometry::new(n);
    let root = BitMapBackend::new(path, geometry.canvas(n)).into_drawing_area();
    root.fill(&WHITE)?;
    let side = geometry.side(n) as i32;
    root.draw(&Text::new(
        title.to_string(),
        (geometry.left as i32 + side / 2, TITLE as i32 / 2),
        ("sans-serif", 28)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    draw_cells(&root, &geometry, confusion, &order)?;
    draw_breed_names(&root, &geometry, classes, &order)?;
    draw_color_bar(&root, &geometry, n)?;
    root.present()?;
    Ok(())
}

/// The matrix: one cell per (true, predicted) pair in display order, coloured by its
/// share of the row; with room to spare, the share in percent is written into each
/// non-empty cell.
fn draw_cells(
    root: &Canvas,
    geometry: &Geometry,
    confusion: &[Vec<u32>],
    order: &[usize],
) -> DrawResult {
    let cell = geometry.cell as i32;
    let cell_font = (cell / 3).min(16) as f64;
    for (r, &t) in order.iter().enumerate() {
        let total: u32 = confusion[t].iter().sum();
        for (c, &p) in order.iter().enumerate() {
            let share = if total > 0 {
                f64::from(confusion[t][p]) / f64::from(total)
            } else {
                0.0
            };
            let (x, y) = geometry.cell_origin(r, c);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                heat_color(share).filled(),
            ))?;
            if cell >= 40 && confusion[t][p] > 0 {
                let ink = if share > 0.25 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    format!("{:.0}", share * 100.0),
                    (x + cell / 2, y + cell / 2),
                    ("sans-serif", cell_font)
                        .into_font()
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))?;
            }
        }
    }
    let (left, top, side) = (
        geometry.left as i32,
        geometry.top as i32,
        geometry.side(order.len()) as i32,
    );
    root.draw(&Rectangle::new(
        [(left, top), (left + side, top + side)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

/// Breed names: rows at the left, columns below and rotated to read bottom-up; then
/// the two axis titles.
fn draw_breed_names(
    root: &Canvas,
    geometry: &Geometry,
    classes: &[String],
    order: &[usize],
) -> DrawResult {
    let (left, top, cell) = (
        geometry.left as i32,
        geometry.top as i32,
        geometry.cell as i32,
    );
    let side = geometry.side(order.len()) as i32;
    let font = ("sans-serif", geometry.font).into_font();
    let fit = LABEL_AREA as i32 - 8;
    for (i, &class) in order.iter().enumerate() {
        let name = shorten(&class_display_name(&classes[class]), &font, fit)?;
        let centre = i as i32 * cell + cell / 2;
        root.draw(&Text::new(
            name.clone(),
            (left - 6, top + centre),
            font.color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        root.draw(&Text::new(
            name,
            (left + centre, top + side + 6),
            font.color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center))
                .transform(FontTransform::Rotate270),
        ))?;
    }
    let axis_font = ("sans-serif", 20).into_font().color(&BLACK);
    root.draw(&Text::new(
        "predicted breed",
        (
            left + side / 2,
            top + side + LABEL_AREA as i32 + AXIS_TITLE as i32 / 2,
        ),
        axis_font.pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    root.draw(&Text::new(
        "true breed",
        (AXIS_TITLE as i32 / 2, top + side / 2),
        axis_font
            .pos(Pos::new(HPos::Center, VPos::Center))
            .transform(FontTransform::Rotate270),
    ))?;
    Ok(())
}

/// The colour bar right of the matrix: position is linear in the row share, so the
/// ticks are evenly spaced.
fn draw_color_bar(root: &Canvas, geometry: &Geometry, n: usize) -> DrawResult {
    let (top, side) = (geometry.top as i32, geometry.side(n) as i32);
    let bar_x = geometry.left as i32 + side + 20;
    for y in 0..side {
        let share = 1.0 - f64::from(y) / f64::from(side.max(2) - 1);
        root.draw(&Rectangle::new(
            [(bar_x, top + y), (bar_x + 24, top + y + 1)],
            heat_color(share).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bar_x, top), (bar_x + 24, top + side)],
        BLACK.stroke_width(1),
    ))?;
    for pct in [0, 25, 50, 75, 100] {
        let y = top + side - side * pct / 100;
        root.draw(&Text::new(
            format!("{pct}%"),
            (bar_x + 30, y),
            ("sans-serif", 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// `name`, cut and ended with "…" if it is wider than `max_px` in `font`.
fn shorten(name: &str, font: &FontDesc, max_px: i32) -> Result<String, Box<dyn std::error::Error>> {
    let fits = |s: &str| -> Result<bool, Box<dyn std::error::Error>> {
        Ok(font.box_size(s)?.0 as i32 <= max_px)
    };
    if fits(name)? {
        return Ok(name.to_string());
    }
    let mut chars: Vec<char> = name.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().chain(['…'].iter()).collect();
        if fits(&candidate)? {
            return Ok(candidate);
        }
    }
    Ok("…".to_string())
}

/// Size of the kNN curve PNG.
pub(super) const KNN_CURVE_SIZE: (u32, u32) = (900, 500);
/// Colour of the random-init reference line.
pub(super) const REFERENCE_COLOR: RGBColor = RED;

/// Draws kNN top-1 (%) against epoch from the training metrics (epochs without a kNN
/// measurement are skipped), with the random-init encoder's kNN top-1 as a dashed
/// horizontal line when given, so the gain from pretraining can be read off directly.
pub fn knn_curve_png(
    metrics: &[EpochMetrics],
    random_knn_top1: Option<f64>,
    path: &Path,
) -> Result<(), ReportError> {
    register_font();
    draw_knn_curve(metrics, random_knn_top1, path).map_err(plot_err(path))
}

fn draw_knn_curve(metrics: &[EpochMetrics], random: Option<f64>, path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, KNN_CURVE_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.knn_top1.map(|v| (m.epoch as f64, v * 100.0)))
        .collect();
    let random = random.map(|v| v * 100.0);
    let last = metrics.iter().map(|m| m.epoch).max().unwrap_or(1).max(1) as f64;
    // Accuracies start at zero so the distance to the baseline is not exaggerated.
    let highest = points
        .iter()
        .map(|p| p.1)
        .chain(random)
        .fold(1.0_f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("weighted kNN top-1 (%)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..last, 0.0..(highest * 1.1).min(100.0))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("top-1 %")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            GREEN.stroke_width(2),
        ))?
        .label("trained encoder")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))?;
    if let Some(r) = random {
        let style = REFERENCE_COLOR.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, r), (last, r)],
                10,
                6,
                style,
            ))?
            .label(format!("random init ({r:.1}%)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
