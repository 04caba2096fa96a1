//! Line charts for the report card, as SVG files (plotters' SVG backend: text is left to the
//! viewer's fonts, so nothing is needed on the machine that draws them).

use crate::{EvalError, Result};
use plotters::prelude::*;
use std::path::Path;

/// One named line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Draw a marker at each point (for sparse series such as evaluations).
    pub markers: bool,
}

impl Series {
    /// A line without markers.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, markers: false }
    }

    /// A line with a marker at each point.
    pub fn marked(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, markers: true }
    }
}

/// The range of `values` with a margin, never empty.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    (lo - pad, hi + pad)
}

/// The last finite y of each series.
fn finite_ends(series: &[Series]) -> Vec<f64> {
    series
        .iter()
        .filter_map(|s| s.points.iter().rev().find(|(x, y)| x.is_finite() && y.is_finite()).map(|p| p.1))
        .collect()
}

/// Draws `series` as lines on one chart into the SVG file `path`. Non-finite points are skipped.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let mut svg = String::new();
    {
        let fail = |e: &dyn std::fmt::Display| EvalError::Config(format!("drawing {}: {e}", path.display()));
        let root = SVGBackend::with_string(&mut svg, (720, 405)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let finite = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (x0, x1) = span(finite().map(|p| p.0));
        let (y0, y1) = span(finite().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, s) in series.iter().enumerate() {
            let (r, g, b) = tsukuru_core::PALETTE[i % tsukuru_core::PALETTE.len()];
            let colour = RGBColor(r, g, b);
            let points: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            if s.markers {
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| fail(&e))?;
            }
        }
        // The legend goes in the corner the lines leave free at their end: low for falling curves
        // (losses), high for rising ones (accuracies).
        let ends: Vec<f64> = finite_ends(series);
        let high = !ends.is_empty() && ends.iter().sum::<f64>() / ends.len() as f64 > (y0 + y1) / 2.0;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(if high { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    tsukuru_core::atomic::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_axes_and_one_path_per_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        let train = Series::line("train", (1..=50).map(|s| (s as f64, 8.0 / s as f64)).collect());
        let val = Series::marked("validation", vec![(10.0, 1.2), (20.0, 0.9), (f64::NAN, 1.0), (50.0, 0.5)]);
        line_chart(&path, "Pretraining loss", "step", "nats/token", &[train, val]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in ["Pretraining loss", "step", "nats/token", "train", "validation"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert_eq!(svg.matches("<circle").count(), 3, "one marker per finite evaluation point");
        // An empty chart still draws (axes only) instead of failing the report.
        line_chart(&dir.path().join("empty.svg"), "Nothing yet", "step", "x", &[]).unwrap();
    }
}
