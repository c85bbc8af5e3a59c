//! Latency and outcome records: HDR histograms overall and per outcome, and, for a sale's
//! chart, every answer as a sample (a sale has tens of thousands; histograms per time bucket
//! and worker would cost far more memory than the samples themselves). Each worker keeps its
//! own recorder (no locks on the hot path); they are merged at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to a minute, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One answer, as the chart needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Its outcome.
    pub outcome: String,
    /// Its intended send time, after the start of the run.
    pub at: Duration,
    /// How long after that time the answer came.
    pub latency: Duration,
}

/// What one worker (or, merged, the whole run) saw.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Every answer.
    pub overall: Histogram<u64>,
    /// Answers by outcome.
    pub by_outcome: BTreeMap<String, Histogram<u64>>,
    /// Every answer, in the order recorded, when samples are kept (see [`Recorder::sampled`]).
    pub samples: Option<Vec<Sample>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            overall: histogram(),
            by_outcome: BTreeMap::new(),
            samples: None,
        }
    }
}

impl Recorder {
    /// A recorder that also keeps every answer as a [`Sample`], for the chart.
    pub fn sampled() -> Self {
        Self {
            samples: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Records an answer with `outcome`, `latency` after its intended send time, which
    /// was `at` after the start of the run.
    pub fn record(&mut self, outcome: &str, at: Duration, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.overall.saturating_record(micros);
        self.by_outcome
            .entry(outcome.to_owned())
            .or_insert_with(histogram)
            .saturating_record(micros);
        if let Some(samples) = &mut self.samples {
            samples.push(Sample {
                outcome: outcome.to_owned(),
                at,
                latency,
            });
        }
    }

    /// Adds another recorder's records to this one.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.overall.add(&other.overall);
        for (outcome, h) in &other.by_outcome {
            let _ = self
                .by_outcome
                .entry(outcome.clone())
                .or_insert_with(histogram)
                .add(h);
        }
        if let Some(theirs) = &other.samples {
            self.samples
                .get_or_insert_with(Vec::new)
                .extend(theirs.iter().cloned());
        }
    }

    /// Answers by outcome.
    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        self.by_outcome
            .iter()
            .map(|(outcome, h)| (outcome.clone(), h.len()))
            .collect()
    }

    /// The intended send time of the first answer with `outcome`, if samples were kept.
    pub fn first(&self, outcome: &str) -> Option<Duration> {
        self.samples
            .as_ref()?
            .iter()
            .filter(|s| s.outcome == outcome)
            .map(|s| s.at)
            .min()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `h` (microseconds) in milliseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_and_report_percentiles_in_ms() {
        let mut a = Recorder::sampled();
        let mut b = Recorder::sampled();
        for i in 1..=100 {
            a.record("held", Duration::from_millis(10), Duration::from_millis(i));
        }
        b.record(
            "sold_out",
            Duration::from_millis(1_500),
            Duration::from_micros(500),
        );
        a.merge(&b);
        assert_eq!(a.overall.len(), 101);
        assert_eq!(a.outcomes()["held"], 100);
        assert_eq!(a.samples.as_ref().map(Vec::len), Some(101));
        assert_eq!(a.first("sold_out"), Some(Duration::from_millis(1_500)));
        assert_eq!(a.first("held"), Some(Duration::from_millis(10)));
        assert_eq!(a.first("expired"), None);
        let p = Percentiles::of(&a.by_outcome["held"]);
        assert!(
            (p.p50 - 50.0).abs() < 0.5 && (p.max - 100.0).abs() < 0.5,
            "{p:?}"
        );
        assert_eq!(Percentiles::of(&a.by_outcome["sold_out"]).p50, 0.5);
    }
}
