//! The live view of a sale, for the sale page: every half second, each known SKU's
//! counters (reserves that made a hold, refusals by reason), the reserve latency histogram
//! and the audits' outcomes are sampled from the metrics, and the last minutes are kept, so
//! that a page opened mid-sale draws the minutes before it opened. Memory only: bounded by
//! the SKUs the engine knows and the minutes kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::Collector;
use serde::Serialize;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::admission::Admission;
use crate::ids::Sku;
use crate::metrics::{Metrics, SKU_REFUSALS};

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Samples kept per SKU: five minutes.
pub const SAMPLES: usize = 600;
/// The window the reserve latency quantiles are taken over.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// The route and method whose latency the page shows.
const RESERVE_ROUTE: (&str, &str) = ("/v1/reservations", "POST");

/// One SKU's counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Counts {
    at_ms: u64,
    reserves: u64,
    refusals: [u64; SKU_REFUSALS.len()],
}

/// The reserve latency histogram at one instant, summed over callers and outcomes.
#[derive(Debug, Clone)]
struct Histogram {
    at_ms: u64,
    /// Cumulative counts by upper bound (seconds), as Prometheus keeps them.
    buckets: Vec<(f64, u64)>,
    count: u64,
}

/// One point of a SKU's rates: per second, over the half second before `at_ms`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RatePoint {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Reserves that made a hold.
    pub reserves: f64,
    /// Refusals by reason (problem code); reasons with none are left out.
    pub refusals: BTreeMap<&'static str, f64>,
}

/// The last quick audit the engine ran.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct AuditSeen {
    /// `clean`, `drift` or `failed`.
    pub outcome: &'static str,
    /// When it was seen, ms since the epoch.
    pub at_ms: u64,
}

/// Reserve latency quantiles over [`LATENCY_WINDOW`], in ms.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Reserves answered in the window.
    pub reserves: u64,
}

/// What is kept between samples.
#[derive(Default)]
struct Kept {
    skus: HashMap<Sku, VecDeque<Counts>>,
    latency: VecDeque<Histogram>,
    audits: [u64; 3],
    last_audit: Option<AuditSeen>,
}

/// Pages streaming at once: each costs a few Redis reads twice a second.
pub const MAX_VIEWERS: usize = 32;

/// The sampled history of the sale, shared by the sampler and the page's streams.
pub struct LiveSale {
    kept: Mutex<Kept>,
    /// One permit per page streaming.
    viewers: Arc<tokio::sync::Semaphore>,
    /// Turns true when the engine shuts down: every stream ends, so that the graceful
    /// shutdown, which waits for every response to finish, is not held by an open page.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for LiveSale {
    fn default() -> Self {
        Self {
            kept: Mutex::default(),
            viewers: Arc::new(tokio::sync::Semaphore::new(MAX_VIEWERS)),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

const AUDIT_OUTCOMES: [&str; 3] = ["clean", "drift", "failed"];

/// The local clock, ms since the epoch: when a sample or an event was taken.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LiveSale {
    /// A permit for one more page streaming, if fewer than [`MAX_VIEWERS`] are.
    pub fn viewer(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.viewers.clone().try_acquire_owned().ok()
    }

    /// Ends every stream, now and from now on.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when the streams are to end.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Takes one sample of every SKU admission knows; forgets SKUs it no longer knows.
    pub fn sample(&self, metrics: &Metrics, admission: &Admission) {
        let at_ms = now_ms();
        let gates = admission.gates();
        let histogram = reserve_histogram(metrics, at_ms);
        let audits = AUDIT_OUTCOMES.map(|o| metrics.audits.with_label_values(&[o]).get());
        let mut kept = self.kept.lock();
        kept.skus
            .retain(|sku, _| gates.iter().any(|(known, _)| known == sku));
        for (sku, _) in gates {
            let counts = Counts {
                at_ms,
                reserves: metrics
                    .sku_reserves
                    .with_label_values(&[sku.as_str()])
                    .get(),
                refusals: SKU_REFUSALS.map(|reason| {
                    metrics
                        .sku_refusals
                        .with_label_values(&[sku.as_str(), reason])
                        .get()
                }),
            };
            let history = kept.skus.entry(sku).or_default();
            if history.len() == SAMPLES {
                history.pop_front();
            }
            history.push_back(counts);
        }
        if kept.latency.len() == SAMPLES {
            kept.latency.pop_front();
        }
        kept.latency.push_back(histogram);
        // The outcome whose counter moved last is the last audit's.
        for (i, outcome) in AUDIT_OUTCOMES.iter().enumerate() {
            if audits[i] > kept.audits[i] {
                kept.last_audit = Some(AuditSeen { outcome, at_ms });
            }
        }
        kept.audits = audits;
    }

    /// `sku`'s rates over the minutes kept, oldest first; only points after `after_ms`.
    pub fn rates(&self, sku: &Sku, after_ms: u64) -> Vec<RatePoint> {
        let kept = self.kept.lock();
        let Some(history) = kept.skus.get(sku) else {
            return Vec::new();
        };
        history
            .iter()
            .zip(history.iter().skip(1))
            .filter(|(_, now)| now.at_ms > after_ms)
            .map(|(before, now)| {
                let seconds = (now.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0).max(0.001);
                let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
                RatePoint {
                    at_ms: now.at_ms,
                    reserves: per_second(before.reserves, now.reserves),
                    refusals: SKU_REFUSALS
                        .iter()
                        .enumerate()
                        .map(|(i, reason)| {
                            (*reason, per_second(before.refusals[i], now.refusals[i]))
                        })
                        .filter(|(_, rate)| *rate > 0.0)
                        .collect(),
                }
            })
            .collect()
    }

    /// `sku`'s refusals since the engine started, by reason (every reason, zeros included).
    pub fn refusals(&self, sku: &Sku) -> BTreeMap<&'static str, u64> {
        let kept = self.kept.lock();
        let last = kept.skus.get(sku).and_then(|h| h.back());
        SKU_REFUSALS
            .iter()
            .enumerate()
            .map(|(i, reason)| (*reason, last.map_or(0, |c| c.refusals[i])))
            .collect()
    }

    /// Reserve latency over the last [`LATENCY_WINDOW`]; `None` when no reserve was
    /// answered in it.
    pub fn latency(&self) -> Option<Latency> {
        let kept = self.kept.lock();
        let now = kept.latency.back()?;
        let since = now.at_ms.saturating_sub(LATENCY_WINDOW.as_millis() as u64);
        let before = kept
            .latency
            .iter()
            .find(|h| h.at_ms >= since)
            .filter(|h| h.at_ms < now.at_ms)?;
        let reserves = now.count.saturating_sub(before.count);
        if reserves == 0 {
            return None;
        }
        // A sample taken before the first reserve has no buckets: all zeros.
        let window: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (bound, n))| {
                let b = before.buckets.get(i).map_or(0, |(_, b)| *b);
                (*bound, n.saturating_sub(b))
            })
            .collect();
        Some(Latency {
            p50_ms: quantile(0.5, &window, reserves) * 1000.0,
            p99_ms: quantile(0.99, &window, reserves) * 1000.0,
            reserves,
        })
    }

    /// The last quick audit seen since the engine started.
    pub fn last_audit(&self) -> Option<AuditSeen> {
        self.kept.lock().last_audit
    }

    /// Samples every [`SAMPLE_EVERY`] until aborted.
    pub fn spawn(
        self: &Arc<Self>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
    ) -> JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                live.sample(&metrics, &admission);
            }
        })
    }
}

/// The reserve route's latency histogram now, summed over its label sets.
fn reserve_histogram(metrics: &Metrics, at_ms: u64) -> Histogram {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut count = 0;
    for family in metrics.request_seconds.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
            };
            let route = (label("route"), label("method"));
            if route.0.as_deref() != Some(RESERVE_ROUTE.0)
                || route.1.as_deref() != Some(RESERVE_ROUTE.1)
            {
                continue;
            }
            let histogram = metric.get_histogram();
            count += histogram.get_sample_count();
            for (i, bucket) in histogram.get_bucket().iter().enumerate() {
                match buckets.get_mut(i) {
                    Some(slot) => slot.1 += bucket.cumulative_count(),
                    None => buckets.push((bucket.upper_bound(), bucket.cumulative_count())),
                }
            }
        }
    }
    Histogram {
        at_ms,
        buckets,
        count,
    }
}

/// The `q` quantile of `total` observations in cumulative `buckets`, interpolated within
/// its bucket as Prometheus's `histogram_quantile` does (the last finite bound past them).
fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> f64 {
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - lower.1) as f64;
            if in_bucket == 0.0 {
                return bound;
            }
            return lower.0 + (bound - lower.0) * (rank - lower.1 as f64) / in_bucket;
        }
        lower = (bound, cumulative);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_interpolates_within_its_bucket() {
        // 10 observations up to 1 ms, 10 more up to 2 ms, none after.
        let buckets = [(0.001, 10), (0.002, 20), (0.005, 20)];
        assert!((quantile(0.5, &buckets, 20) - 0.001).abs() < 1e-9);
        assert!((quantile(0.75, &buckets, 20) - 0.0015).abs() < 1e-9);
        assert!((quantile(0.99, &buckets, 20) - 0.00198).abs() < 1e-9);
        assert_eq!(quantile(0.5, &[], 0), 0.0);
    }
}
