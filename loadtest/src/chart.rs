//! The chart of a sale (SVG): answers per second and latency p50/p99 by outcome, in time
//! buckets sized to the sale, with the sold-out instant and the closing wave marked.

use std::collections::BTreeMap;
use std::time::Duration;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use crate::stats::Sample;

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
const BAND: RGBColor = RGBColor(255, 236, 179);
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 760;
/// At most this many buckets over the chart: enough to show a ramp, few enough to read.
const MAX_BUCKETS: u128 = 60;

/// A stretch of the run, as offsets from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Where it starts.
    pub start: Duration,
    /// Where it ends.
    pub end: Duration,
}

/// What the chart draws.
#[derive(Debug, Clone, Default)]
pub struct ChartInput<'a> {
    /// The title.
    pub title: String,
    /// The answers of the arrivals and their follow-ups.
    pub samples: &'a [Sample],
    /// The answers of the closing wave, drawn inside its band.
    pub closing: &'a [Sample],
    /// When the closing wave ran.
    pub closing_span: Option<Span>,
    /// The intended send time of the first `sold_out` answer.
    pub sold_out_at: Option<Duration>,
}

/// The bucket width for a chart spanning `span`: the smallest of 10, 20, 50 ms, 0.1, 0.2,
/// 0.5, 1, 2, 5, 10, 30, 60 s that gives at most 60 buckets (100 ms for a sale of a few
/// seconds).
pub fn bucket_for(span: Duration) -> Duration {
    const WIDTHS_MS: [u64; 12] = [
        10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
    ];
    let width = WIDTHS_MS
        .into_iter()
        .find(|w| span.as_millis().div_ceil(u128::from(*w)) <= MAX_BUCKETS)
        .unwrap_or(60_000);
    Duration::from_millis(width)
}

/// One bucket's latency, for one outcome.
#[derive(Debug, Clone, Copy)]
struct LatencyPoint {
    /// The bucket's centre, seconds.
    t: f64,
    /// Median, ms.
    p50: f64,
    /// 99th percentile, ms.
    p99: f64,
}

/// Per outcome, per bucket: the answers and their latencies in ms, sorted.
type Buckets = BTreeMap<String, Vec<Vec<f64>>>;

fn bucketed(samples: &[Sample], bucket: Duration, count: usize) -> Buckets {
    let mut buckets: Buckets = BTreeMap::new();
    for sample in samples {
        let i = (sample.at.as_nanos() / bucket.as_nanos().max(1)) as usize;
        let per_bucket = buckets
            .entry(sample.outcome.clone())
            .or_insert_with(|| vec![Vec::new(); count]);
        if let Some(latencies) = per_bucket.get_mut(i) {
            latencies.push(sample.latency.as_secs_f64() * 1000.0);
        }
    }
    for per_bucket in buckets.values_mut() {
        for latencies in per_bucket.iter_mut() {
            latencies.sort_by(f64::total_cmp);
        }
    }
    buckets
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// A number as a person writes it on an axis: `5000`, `2.5`, `0.1`.
fn plain(v: f64) -> String {
    if v.abs() >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The powers of ten from below `low` to above `high`, as the latency axis's range.
fn decades(low: f64, high: f64) -> (f64, f64) {
    let floor = 10f64.powf(low.max(1e-3).log10().floor());
    let ceil = 10f64.powf(high.max(floor * 10.0).log10().ceil());
    (floor, ceil)
}

/// The runs of consecutive points (by bucket index), so that a line stops where a bucket
/// had no answer instead of drawing a false straight line across the gap.
fn contiguous<T: Copy>(points: &[(usize, T)]) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut last = None;
    for &(i, point) in points {
        match (runs.last_mut(), last) {
            (Some(run), Some(previous)) if previous + 1 == i => run.push(point),
            _ => runs.push(vec![point]),
        }
        last = Some(i);
    }
    runs
}

/// A panel's frame: its caption, margins and room for the axis labels.
fn frame<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(64);
    builder
}

/// A panel's legend, in its upper right corner.
fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    Ok(())
}

/// Draws the chart as an SVG document.
pub fn svg(input: &ChartInput<'_>) -> anyhow::Result<String> {
    let end = input
        .samples
        .iter()
        .chain(input.closing)
        .map(|s| s.at)
        .chain(input.closing_span.map(|s| s.end))
        .max()
        .unwrap_or_default();
    // Buckets sized to the arrivals (the sale itself); the closing wave comes later.
    let arrivals_end = input.samples.iter().map(|s| s.at).max().unwrap_or(end);
    let bucket = bucket_for(arrivals_end);
    let count = (end.as_nanos() / bucket.as_nanos()) as usize + 2;
    let x_end = count as f64 * bucket.as_secs_f64();
    let per_second = 1.0 / bucket.as_secs_f64();
    let main = bucketed(input.samples, bucket, count);
    let closing = bucketed(input.closing, bucket, count);
    let outcomes: Vec<&String> = {
        let mut names: Vec<&String> = main.keys().chain(closing.keys()).collect();
        names.sort();
        names.dedup();
        names
    };
    let color_of = |outcome: &str| {
        let i = outcomes.iter().position(|o| *o == outcome).unwrap_or(0);
        COLORS[i % COLORS.len()]
    };
    let centre = |i: usize| (i as f64 + 0.5) * bucket.as_secs_f64();

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(HEIGHT / 2);

        let rate_max = main
            .values()
            .chain(closing.values())
            .flat_map(|b| b.iter().map(Vec::len))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * per_second;
        let caption = format!(
            "{}: answers per second, by outcome ({} ms buckets)",
            input.title,
            bucket.as_millis()
        );
        let mut rates =
            frame(&top, &caption).build_cartesian_2d(0f64..x_end, 0f64..rate_max * 1.15)?;
        rates
            .configure_mesh()
            .x_desc("seconds since the sale opened")
            .y_desc("answers per second")
            .x_label_formatter(&|v| plain(*v))
            .y_label_formatter(&|v| plain(*v))
            .draw()?;
        if let Some(span) = input.closing_span {
            // At least a bucket wide: a wave of a few ms would not show.
            let (start, end) = (span.start.as_secs_f64(), span.end.as_secs_f64());
            let end = end.max(start + bucket.as_secs_f64());
            rates
                .draw_series(std::iter::once(Rectangle::new(
                    [(start, 0.0), (end, rate_max * 1.15)],
                    BAND.filled(),
                )))?
                .label("closing wave (buys what came back)")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BAND.filled()));
        }
        for outcome in &outcomes {
            let color = color_of(outcome);
            let merged: Vec<usize> = (0..count)
                .map(|i| {
                    [&main, &closing]
                        .iter()
                        .filter_map(|b| b.get(*outcome))
                        .map(|b| b[i].len())
                        .sum()
                })
                .collect();
            let points = merged
                .iter()
                .enumerate()
                .map(|(i, n)| (centre(i), *n as f64 * per_second));
            rates
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(outcome.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        if let Some(at) = input.sold_out_at {
            let x = at.as_secs_f64();
            rates
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, rate_max * 1.15)],
                    BLACK.stroke_width(1),
                )))?
                .label(format!("first sold_out answer, {x:.2} s"))
                .legend(|(x, y)| PathElement::new(vec![(x + 8, y - 6), (x + 8, y + 6)], BLACK));
        }
        legend(&mut rates)?;

        // Per outcome, the buckets that had answers, by bucket index.
        let percentiles: Vec<(String, Vec<(usize, LatencyPoint)>)> = outcomes
            .iter()
            .map(|outcome| {
                let points = (0..count)
                    .filter_map(|i| {
                        let mut all: Vec<f64> = [&main, &closing]
                            .iter()
                            .filter_map(|b| b.get(*outcome))
                            .flat_map(|b| b[i].iter().copied())
                            .collect();
                        all.sort_by(f64::total_cmp);
                        let point = LatencyPoint {
                            t: centre(i),
                            p50: quantile(&all, 0.5)?,
                            p99: quantile(&all, 0.99)?,
                        };
                        Some((i, point))
                    })
                    .collect();
                ((*outcome).clone(), points)
            })
            .collect();
        let lowest = percentiles
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, point)| point.p50))
            .fold(f64::INFINITY, f64::min);
        let highest = percentiles
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, point)| point.p99))
            .fold(0.0, f64::max);
        let (low, high) = if lowest.is_finite() {
            decades(lowest, highest)
        } else {
            (0.1, 10.0)
        };
        let mut latency = frame(
            &bottom,
            "latency from the intended send time, ms (log scale)",
        )
        .build_cartesian_2d(0f64..x_end, (low..high).log_scale())?;
        latency
            .configure_mesh()
            .x_desc("seconds since the sale opened")
            .y_desc("ms")
            .x_label_formatter(&|v| plain(*v))
            .y_label_formatter(&|v| plain(*v))
            .draw()?;
        for (outcome, points) in &percentiles {
            let color = color_of(outcome);
            let runs = contiguous(points);
            for run in &runs {
                let single = run.len() == 1;
                for (width, thick) in [(1, false), (3, true)] {
                    let line: Vec<(f64, f64)> = run
                        .iter()
                        .map(|p| (p.t, (if thick { p.p99 } else { p.p50 }).max(low)))
                        .collect();
                    if single {
                        // A lone bucket is a dot, not a line of no length.
                        latency.draw_series(
                            line.iter()
                                .map(|p| Circle::new(*p, width + 1, color.filled())),
                        )?;
                    } else {
                        latency.draw_series(LineSeries::new(line, color.stroke_width(width)))?;
                    }
                }
            }
            latency
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
                .label(outcome.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
                });
        }
        for (name, width) in [("p50: thin line", 1), ("p99: thick line", 3)] {
            latency
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(width))
                });
        }
        legend(&mut latency)?;
        root.present()?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(outcome: &str, at_ms: u64, latency_ms: u64) -> Sample {
        Sample {
            outcome: outcome.to_owned(),
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(latency_ms),
        }
    }

    #[test]
    fn buckets_are_sized_to_the_sale() {
        assert_eq!(
            bucket_for(Duration::from_secs(4)),
            Duration::from_millis(100)
        );
        assert_eq!(
            bucket_for(Duration::from_secs(2)),
            Duration::from_millis(50)
        );
        assert_eq!(
            bucket_for(Duration::from_secs(7)),
            Duration::from_millis(200)
        );
        assert_eq!(bucket_for(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(bucket_for(Duration::ZERO), Duration::from_millis(10));
    }

    #[test]
    fn lines_stop_at_empty_buckets() {
        let runs = contiguous(&[(0, 'a'), (1, 'b'), (3, 'c'), (4, 'd'), (7, 'e')]);
        assert_eq!(runs, vec![vec!['a', 'b'], vec!['c', 'd'], vec!['e']]);
    }

    #[test]
    fn axis_numbers_are_plain() {
        assert_eq!(plain(5000.0), "5000");
        assert_eq!(plain(2.5), "2.5");
        assert_eq!(plain(0.1), "0.1");
        assert_eq!(plain(12.34), "12");
        assert_eq!(decades(0.3, 40.0), (0.1, 100.0));
    }

    #[test]
    fn the_chart_marks_sold_out_and_the_closing_wave_with_a_legend_on_each_panel() {
        let samples: Vec<Sample> = (0..400)
            .map(|i| sample(if i < 100 { "held" } else { "sold_out" }, i * 10, 1 + i % 7))
            .collect();
        let closing = [sample("held", 6_500, 2), sample("confirmed", 6_510, 3)];
        let svg = svg(&ChartInput {
            title: "sale of x".into(),
            samples: &samples,
            closing: &closing,
            closing_span: Some(Span {
                start: Duration::from_millis(6_400),
                end: Duration::from_millis(6_600),
            }),
            sold_out_at: Some(Duration::from_millis(1_000)),
        })
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("first sold_out answer, 1.00 s"));
        assert!(svg.contains("closing wave"));
        assert!(svg.contains("(100 ms buckets)"));
        assert!(svg.contains("p99: thick line"));
        // Every outcome is named in both legends.
        for outcome in ["held", "sold_out", "confirmed"] {
            let label = format!(">\n{outcome}\n</text>");
            assert_eq!(svg.matches(&label).count(), 2, "{outcome}");
        }
        assert!(!svg.contains(".0\n</text>"), "plain axis numbers");
    }
}
