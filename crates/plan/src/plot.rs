//! The isoFLOP chart: loss against model size (log scale) for each budget, measured runs as
//! dots, the fitted law as lines, the fitted optimum of each budget joined into the frontier, and
//! the held-out run (its prediction and its measurement).

use crate::fit::Fit;
use crate::PlanError;
use plotters::prelude::*;
use std::path::Path;

/// One budget's runs: (params, tokens, loss), and FLOPs per token over 6·N (the attention share).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// The budget, FLOPs.
    pub budget: f64,
    /// (params, loss) of each run.
    pub runs: Vec<(f64, f64)>,
    /// Median of each run's FLOPs per token ÷ 6N, so the fitted line spends the same budget.
    pub overhead: f64,
}

/// The held-out run: its size, predicted and measured loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    /// Parameters.
    pub params: f64,
    /// Predicted loss.
    pub predicted: f64,
    /// Measured loss.
    pub measured: f64,
}

/// Draws the chart into the SVG file `path`.
pub fn isoflop_chart(path: &Path, fit: &Fit, curves: &[Curve], held: Option<Held>) -> Result<(), PlanError> {
    let fail =
        |e: &dyn std::fmt::Display| PlanError::File { path: path.to_path_buf(), reason: format!("drawing: {e}") };
    let all_n = curves.iter().flat_map(|c| c.runs.iter().map(|r| r.0)).chain(held.map(|h| h.params));
    let (n0, n1) = all_n.fold((f64::MAX, f64::MIN), |(a, b), n| (a.min(n), b.max(n)));
    if n0 > n1 {
        return Err(fail(&"no runs to draw"));
    }
    let (n0, n1) = (n0 / 1.5, n1 * 1.5);
    // Each budget's fitted line, N spread evenly in log space.
    let line = |c: &Curve| -> Vec<(f64, f64)> {
        (0..=64)
            .map(|i| {
                let n = n0 * (n1 / n0).powf(i as f64 / 64.0);
                (n, fit.law.loss(n, c.budget / (6.0 * n * c.overhead)))
            })
            .collect()
    };
    let lines: Vec<Vec<(f64, f64)>> = curves.iter().map(line).collect();
    let frontier: Vec<(f64, f64)> =
        lines.iter().filter_map(|l| l.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))).collect();
    let measured = curves.iter().flat_map(|c| c.runs.iter().map(|r| r.1));
    let held_losses = held.into_iter().flat_map(|h| [h.predicted, h.measured]);
    let (y0, y1) = measured
        .chain(held_losses)
        .chain(frontier.iter().map(|p| p.1))
        .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let pad = (y1 - y0).max(1e-3) * 0.15;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("IsoFLOP curves and the fitted frontier", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((n0..n1).log_scale(), y0..y1)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("parameters")
            .y_desc("validation loss (nats/token)")
            .x_label_formatter(&|n| format!("{n:.0e}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, (c, l)) in curves.iter().zip(&lines).enumerate() {
            let (r, g, b) = tsukuru_core::PALETTE[i % tsukuru_core::PALETTE.len()];
            let colour = RGBColor(r, g, b);
            let inside: Vec<(f64, f64)> = l.iter().copied().filter(|p| p.1 >= y0 && p.1 <= y1).collect();
            chart
                .draw_series(LineSeries::new(inside, colour.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(format!("{:.0e} FLOPs", c.budget))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            chart.draw_series(c.runs.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(|e| fail(&e))?;
        }
        chart
            .draw_series(LineSeries::new(frontier.clone(), BLACK.stroke_width(1)))
            .map_err(|e| fail(&e))?
            .label("fitted optimum per budget")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1)));
        chart.draw_series(frontier.iter().map(|&p| Cross::new(p, 5, BLACK.stroke_width(2)))).map_err(|e| fail(&e))?;
        if let Some(h) = held {
            chart
                .draw_series(std::iter::once(TriangleMarker::new((h.params, h.predicted), 7, BLACK.filled())))
                .map_err(|e| fail(&e))?
                .label("held-out run: predicted")
                .legend(|(x, y)| TriangleMarker::new((x + 9, y), 5, BLACK.filled()));
            let red = RGBColor(200, 0, 0);
            chart
                .draw_series(std::iter::once(Circle::new((h.params, h.measured), 6, red.filled())))
                .map_err(|e| fail(&e))?
                .label("held-out run: measured")
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, red.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(tsukuru_core::atomic::write_atomic(path, svg.as_bytes())?)
}
