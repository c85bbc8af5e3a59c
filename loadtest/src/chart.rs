//! The chart of a run (SVG): answers per second and latency percentiles per second, by
//! outcome.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::{Percentiles, Recorder};

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `recorder`'s timeline into an SVG file at `path`.
pub fn draw(recorder: &Recorder, title: &str, path: &Path) -> anyhow::Result<()> {
    let outcomes: Vec<String> = recorder.by_outcome.keys().cloned().collect();
    let seconds = recorder.timeline.len().max(1);
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);

    let rate_max = recorder
        .timeline
        .iter()
        .flat_map(|s| s.by_outcome.values().map(|h| h.len()))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut rates = ChartBuilder::on(&top)
        .caption(format!("{title}: answers per second"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds as f64, 0f64..rate_max * 1.1)?;
    rates
        .configure_mesh()
        .x_desc("second")
        .y_desc("answers/s")
        .draw()?;
    for (i, outcome) in outcomes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = recorder.timeline.iter().enumerate().map(|(s, second)| {
            let n = second.by_outcome.get(outcome).map_or(0, |h| h.len());
            (s as f64 + 0.5, n as f64)
        });
        rates
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(outcome.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    rates
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;

    let latency_max = recorder
        .timeline
        .iter()
        .flat_map(|s| s.by_outcome.values().map(|h| Percentiles::of(h).p99))
        .fold(1.0f64, f64::max);
    let mut latency = ChartBuilder::on(&bottom)
        .caption(
            "latency p50 (thin) and p99 (thick) by outcome, ms",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..seconds as f64,
            (0.01f64..latency_max * 1.5).log_scale(),
        )?;
    latency
        .configure_mesh()
        .x_desc("second")
        .y_desc("ms")
        .draw()?;
    for (i, outcome) in outcomes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (width, pick) in [(1, 0usize), (3, 1)] {
            let points: Vec<(f64, f64)> = recorder
                .timeline
                .iter()
                .enumerate()
                .filter_map(|(s, second)| {
                    let p = Percentiles::of(second.by_outcome.get(outcome)?);
                    Some((
                        s as f64 + 0.5,
                        if pick == 0 { p.p50 } else { p.p99 }.max(0.01),
                    ))
                })
                .collect();
            latency.draw_series(LineSeries::new(points, color.stroke_width(width)))?;
        }
    }
    root.present()?;
    Ok(())
}
