//! The paper-style plot of a sweep: one line per series, 95 % confidence intervals as error
//! bars, SVG (no font files needed).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::stats::Estimate;

/// One line of the plot.
pub struct Line {
    pub label: String,
    /// (x, estimate), x ascending.
    pub points: Vec<(f64, Estimate)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// A tick label: at most three significant digits, no float noise (0.30000000000000004).
fn tick(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let decimals = (2 - value.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Draws `lines` into an SVG file.
pub fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_log: bool,
    lines: &[Line],
) -> Result<()> {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|(x, _)| *x));
    let (x_min, x_max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let ys = lines.iter().flat_map(|l| {
        l.points
            .iter()
            .filter(|(_, e)| e.mean.is_finite())
            .flat_map(|(_, e)| [e.mean - e.half_width, e.mean + e.half_width])
    });
    let (y_min, y_max) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !(x_min.is_finite() && y_min.is_finite()) {
        return Err(anyhow!("nothing to plot"));
    }
    let y_pad = ((y_max - y_min) * 0.1).max(1.0);
    // Room above the lines for the legend.
    let y_range = (y_min - y_pad).max(0.0)..(y_max + 3.0 * y_pad);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_label_formatter(&|x| tick(*x))
                .y_label_formatter(&|y| tick(*y))
                .draw()?;
            for (n, line) in lines.iter().enumerate() {
                let color = COLORS[n % COLORS.len()];
                let points: Vec<(f64, f64)> = line
                    .points
                    .iter()
                    .filter(|(_, e)| e.mean.is_finite())
                    .map(|(x, e)| (*x, e.mean))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(line.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
                chart.draw_series(
                    line.points
                        .iter()
                        .filter(|(_, e)| e.mean.is_finite() && e.half_width > 0.0)
                        .map(|(x, e)| {
                            ErrorBar::new_vertical(
                                *x,
                                e.mean - e.half_width,
                                e.mean,
                                e.mean + e.half_width,
                                color.stroke_width(1),
                                8,
                            )
                        }),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if x_log {
        finish!(builder.build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), y_range)?);
    } else {
        let pad = ((x_max - x_min) * 0.05).max(1e-9);
        finish!(builder.build_cartesian_2d((x_min - pad)..(x_max + pad), y_range)?);
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tick;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(0.05), "0.05");
        assert_eq!(tick(10.0), "10");
        assert_eq!(tick(87.5), "87.5");
        assert_eq!(tick(104.0), "104");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(0.0), "0");
    }
}
