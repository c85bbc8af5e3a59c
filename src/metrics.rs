//! Prometheus metrics of the service, in one registry.

use std::collections::BTreeSet;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: 50 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by caller, route, method and outcome (`ok` or the problem code). The
    /// caller is a configured client's name, or `anonymous` (no client tokens configured,
    /// a route that takes none, or a request refused for its token): a bounded set.
    pub requests: IntCounterVec,
    /// Request latency by caller, route, method and outcome.
    pub request_seconds: HistogramVec,
    /// gRPC calls by caller, method (`/flashsale.v1.Reservations/Reserve`, ...) and
    /// outcome (`ok` or the problem code, as the HTTP requests have it).
    pub grpc_requests: IntCounterVec,
    /// gRPC call latency by caller, method and outcome.
    pub grpc_request_seconds: HistogramVec,
    /// Requests refused by admission, by reason (rate, sold_out_flag, in_flight, window,
    /// suspended, unregistered, settlement_behind).
    pub refusals: IntCounterVec,
    /// The refusal counters resolved once (a label lookup per refusal costs a hash and a
    /// lock on the path that sheds load).
    refusal_by_reason: [(&'static str, IntCounter); 7],
    /// Latency of the store's Redis calls, by operation.
    pub redis_seconds: HistogramVec,
    /// Requests with Redis calls in flight.
    pub in_flight: IntGauge,
    /// Units per SKU and state (available, held, sold), read at scrape time.
    pub sku_units: IntGaugeVec,
    /// The SKUs with per-SKU series (see [`Metrics::keep_skus`]).
    known_skus: Mutex<BTreeSet<String>>,
    /// Age of the oldest event not yet settled into the ledger, seconds.
    pub reconciler_lag: Gauge,
    /// Events delivered and not settled, or not delivered yet.
    pub reconciler_pending: IntGauge,
    /// Batches settled.
    pub reconciler_batches: IntCounter,
    /// Events applied to the ledger.
    pub reconciler_events: IntCounter,
    /// Events delivered again and found already applied.
    pub reconciler_duplicates: IntCounter,
    /// Failed reconciler turns (Redis or database).
    pub reconciler_errors: IntCounter,
    /// Dead consumers removed from the ledger's groups (no entry pending, idle long).
    pub reconciler_consumers_removed: IntCounter,
    /// Drifts the periodic audit found between Redis and the ledger, by kind (every kind is
    /// there from the start, at 0).
    pub audit_drifts: IntCounterVec,
    /// Repairs run by this engine, by outcome (`repaired`, `clean`, `skipped`, `failed`).
    pub repairs: IntCounterVec,
    /// Live engines in the registry at the last heartbeat, this one included.
    pub engines_live: IntGauge,
    /// This engine's share of the global rate (0 to 1).
    pub rate_share_global: Gauge,
    /// This engine's share of a SKU's rate (0 to 1): `sku="*"` for every SKU without a
    /// share of its own, else the SKU.
    pub rate_share_sku: GaugeVec,
    /// Heartbeats that failed.
    pub heartbeat_failures: IntCounter,
    /// SKUs swept by the background pass (a script call per shard), by outcome: `expired`
    /// (some hold expired) or `idle`.
    pub sweep_calls: IntCounterVec,
    /// SKU sweeps the background pass left to the SKU's owner (another engine).
    pub sweep_deferred: IntCounter,
    /// Entries the engine keeps in memory for SKUs, by kind (`gates`, `rate_limiters`,
    /// `configs`, `queues`, `refill_locks`), read at scrape time: bounded by the SKUs
    /// loaded, whatever names requests make up.
    pub tracked_skus: IntGaugeVec,
    /// 1 while reserves are refused because more entries wait to be settled than
    /// `--max-unsettled` allows.
    pub settlement_behind: IntGauge,
    /// Redis calls of requests that failed, by operation and kind (`timeout`, `error`).
    pub redis_errors: IntCounterVec,
    /// The bound on requests with Redis calls in flight (`--max-in-flight`).
    pub max_in_flight: IntGauge,
    /// 1 while the engine's sold-out flag of a SKU in its window is up, read at scrape time
    /// (an ended SKU's flag is not kept up to date, and reads 0).
    pub sku_sold_out: IntGaugeVec,
    /// Reserves and cart lines of a loaded SKU refused, by SKU and problem code (every
    /// code of [`SKU_REFUSALS`] present at 0 for every SKU the engine knows).
    pub sku_refusals: IntCounterVec,
    /// Reserves and cart lines of a loaded SKU that made a hold (replays included), by SKU.
    pub sku_reserves: IntCounterVec,
    /// Unsettled entries per shard stream, at the last measurement.
    pub stream_backlog: IntGaugeVec,
    /// Quick audits by outcome (`clean`, `drift`, `failed`).
    pub audits: IntCounterVec,
    /// SKUs a repair fences now, read at scrape time.
    pub fenced_skus: IntGauge,
}

/// The problem codes a reserve or a cart line of a loaded SKU is counted under in
/// [`Metrics::sku_refusals`] (any other code, as `internal`, is not a refusal of the SKU).
pub const SKU_REFUSALS: [&str; 10] = [
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "sale_not_started",
    "sale_ended",
    "rate_limited",
    "unavailable",
    "settlement_behind",
    "too_many_keys",
    "reservation_cancelled",
];

/// The operations of [`Metrics::redis_seconds`] and [`Metrics::redis_errors`].
pub const REDIS_OPS: [&str; 6] = [
    "reserve",
    "confirm",
    "cancel",
    "cancel_by_key",
    "read",
    "cart",
];

/// The states of [`Metrics::sku_units`].
pub const UNIT_STATES: [&str; 3] = ["available", "held", "sold"];

/// The caller label of a request from no configured client.
pub const ANONYMOUS: &str = "anonymous";

/// The kinds of [`Metrics::tracked_skus`].
pub const TRACKED_KINDS: [&str; 5] = [
    "gates",
    "rate_limiters",
    "configs",
    "queues",
    "refill_locks",
];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "flashsale_http_requests_total",
                "HTTP requests by route and outcome",
            ),
            &["caller", "route", "method", "outcome"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "flashsale_http_request_duration_seconds",
                "HTTP request latency by route and outcome",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["caller", "route", "method", "outcome"],
        )
        .expect("valid metric");
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "flashsale_grpc_requests_total",
                "gRPC calls by method and outcome",
            ),
            &["caller", "method", "outcome"],
        )
        .expect("valid metric");
        let grpc_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "flashsale_grpc_request_duration_seconds",
                "gRPC call latency by method and outcome",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["caller", "method", "outcome"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "flashsale_admission_refusals_total",
                "Requests refused from memory, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let redis_seconds = HistogramVec::new(
            HistogramOpts::new(
                "flashsale_redis_call_duration_seconds",
                "Latency of store calls to Redis by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "flashsale_in_flight_requests",
            "Requests with Redis calls in flight",
        )
        .expect("valid metric");
        let sku_units = IntGaugeVec::new(
            Opts::new("flashsale_sku_units", "Units of a SKU by state"),
            &["sku", "state"],
        )
        .expect("valid metric");
        let reconciler_lag = Gauge::new(
            "flashsale_reconciler_lag_seconds",
            "Age of the oldest event not yet settled into the ledger",
        )
        .expect("valid metric");
        let reconciler_pending = IntGauge::new(
            "flashsale_reconciler_pending_events",
            "Events not yet settled into the ledger",
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let reconciler_batches = counter("flashsale_reconciler_batches_total", "Batches settled");
        let reconciler_events = counter(
            "flashsale_reconciler_events_total",
            "Events applied to the ledger",
        );
        let reconciler_duplicates = counter(
            "flashsale_reconciler_duplicate_events_total",
            "Events delivered again and found applied",
        );
        let reconciler_errors = counter(
            "flashsale_reconciler_errors_total",
            "Failed reconciler turns",
        );
        let reconciler_consumers_removed = counter(
            "flashsale_reconciler_consumers_removed_total",
            "Dead consumers removed from the ledger's consumer groups",
        );
        let audit_drifts = IntCounterVec::new(
            Opts::new(
                "flashsale_audit_drifts_total",
                "Differences between Redis and the ledger found by the periodic audit, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in crate::recovery::DriftKind::ALL {
            audit_drifts.with_label_values(&[kind.as_str()]);
        }
        let repairs = IntCounterVec::new(
            Opts::new(
                "flashsale_repairs_total",
                "Repairs run by this engine, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["repaired", "clean", "skipped", "failed"] {
            repairs.with_label_values(&[outcome]);
        }
        let engines_live = IntGauge::new(
            "flashsale_engines_live",
            "Live engines in the registry at the last heartbeat, this one included",
        )
        .expect("valid metric");
        let rate_share_global = Gauge::new(
            "flashsale_rate_share_global",
            "This engine's share of the global rate",
        )
        .expect("valid metric");
        rate_share_global.set(1.0);
        let rate_share_sku = GaugeVec::new(
            Opts::new(
                "flashsale_rate_share_sku",
                "This engine's share of a SKU's rate (sku=\"*\": SKUs without a share of their own)",
            ),
            &["sku"],
        )
        .expect("valid metric");
        rate_share_sku.with_label_values(&["*"]).set(1.0);
        let heartbeat_failures = counter(
            "flashsale_heartbeat_failures_total",
            "Registry heartbeats that failed",
        );
        let sweep_calls = IntCounterVec::new(
            Opts::new(
                "flashsale_sweep_calls_total",
                "SKUs swept by the background pass, by outcome (expired, idle)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["expired", "idle"] {
            sweep_calls.with_label_values(&[outcome]);
        }
        let sweep_deferred = counter(
            "flashsale_sweep_deferred_total",
            "SKU sweeps left to the SKU's owner engine",
        );
        let tracked_skus = IntGaugeVec::new(
            Opts::new(
                "flashsale_tracked_skus",
                "Entries the engine keeps in memory for SKUs, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in TRACKED_KINDS {
            tracked_skus.with_label_values(&[kind]);
        }
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "flashsale_redis_errors_total",
                "Redis calls of requests that failed, by operation and kind (timeout, error)",
            ),
            &["op", "kind"],
        )
        .expect("valid metric");
        for op in REDIS_OPS {
            for kind in ["timeout", "error"] {
                redis_errors.with_label_values(&[op, kind]);
            }
        }
        let max_in_flight = IntGauge::new(
            "flashsale_max_in_flight",
            "The bound on requests with Redis calls in flight",
        )
        .expect("valid metric");
        let sku_sold_out = IntGaugeVec::new(
            Opts::new(
                "flashsale_sku_sold_out",
                "1 while the engine's sold-out flag of a SKU is up",
            ),
            &["sku"],
        )
        .expect("valid metric");
        let sku_refusals = IntCounterVec::new(
            Opts::new(
                "flashsale_sku_refusals_total",
                "Reserves and cart lines of a loaded SKU refused, by SKU and problem code",
            ),
            &["sku", "reason"],
        )
        .expect("valid metric");
        let sku_reserves = IntCounterVec::new(
            Opts::new(
                "flashsale_sku_reserves_total",
                "Reserves and cart lines of a loaded SKU that made a hold, by SKU",
            ),
            &["sku"],
        )
        .expect("valid metric");
        let stream_backlog = IntGaugeVec::new(
            Opts::new(
                "flashsale_stream_backlog_entries",
                "Entries of a shard stream not yet settled into the ledger",
            ),
            &["sku", "shard"],
        )
        .expect("valid metric");
        let audits = IntCounterVec::new(
            Opts::new(
                "flashsale_audits_total",
                "Quick audits by outcome (clean, drift, failed)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["clean", "drift", "failed"] {
            audits.with_label_values(&[outcome]);
        }
        let fenced_skus = IntGauge::new("flashsale_fenced_skus", "SKUs a repair fences now")
            .expect("valid metric");
        let settlement_behind = IntGauge::new(
            "flashsale_settlement_behind",
            "1 while reserves are refused because settlement into the ledger is behind",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(grpc_requests.clone()),
            Box::new(grpc_request_seconds.clone()),
            Box::new(request_seconds.clone()),
            Box::new(refusals.clone()),
            Box::new(redis_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(sku_units.clone()),
            Box::new(reconciler_lag.clone()),
            Box::new(reconciler_pending.clone()),
            Box::new(reconciler_batches.clone()),
            Box::new(reconciler_events.clone()),
            Box::new(reconciler_duplicates.clone()),
            Box::new(reconciler_errors.clone()),
            Box::new(reconciler_consumers_removed.clone()),
            Box::new(audit_drifts.clone()),
            Box::new(repairs.clone()),
            Box::new(engines_live.clone()),
            Box::new(rate_share_global.clone()),
            Box::new(rate_share_sku.clone()),
            Box::new(heartbeat_failures.clone()),
            Box::new(sweep_calls.clone()),
            Box::new(sweep_deferred.clone()),
            Box::new(tracked_skus.clone()),
            Box::new(settlement_behind.clone()),
            Box::new(redis_errors.clone()),
            Box::new(max_in_flight.clone()),
            Box::new(sku_sold_out.clone()),
            Box::new(sku_refusals.clone()),
            Box::new(sku_reserves.clone()),
            Box::new(stream_backlog.clone()),
            Box::new(audits.clone()),
            Box::new(fenced_skus.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        let refusal_by_reason = [
            "rate",
            "sold_out_flag",
            "window",
            "in_flight",
            "suspended",
            "unregistered",
            "settlement_behind",
        ]
        .map(|reason| (reason, refusals.with_label_values(&[reason])));
        Self {
            registry,
            refusal_by_reason,
            requests,
            request_seconds,
            grpc_requests,
            grpc_request_seconds,
            refusals,
            redis_seconds,
            in_flight,
            sku_units,
            known_skus: Mutex::default(),
            reconciler_lag,
            reconciler_pending,
            reconciler_batches,
            reconciler_events,
            reconciler_duplicates,
            reconciler_errors,
            reconciler_consumers_removed,
            audit_drifts,
            repairs,
            engines_live,
            rate_share_global,
            rate_share_sku,
            heartbeat_failures,
            sweep_calls,
            sweep_deferred,
            tracked_skus,
            settlement_behind,
            redis_errors,
            max_in_flight,
            sku_sold_out,
            sku_refusals,
            sku_reserves,
            stream_backlog,
            audits,
            fenced_skus,
        }
    }

    /// Counts a refusal of a reserve or cart line of `sku` (a SKU the engine knows) under
    /// `code`, if it is one of [`SKU_REFUSALS`].
    pub fn sku_refused(&self, sku: &str, code: &str) {
        if SKU_REFUSALS.contains(&code) {
            self.sku_refusals.with_label_values(&[sku, code]).inc();
        }
    }

    /// Makes the per-SKU series of each of `skus` exist (refusals at 0) and drops those of
    /// every SKU not among them (retired, or forgotten): the registry keeps series only of
    /// SKUs the engine knows, and has them from the start.
    pub fn keep_skus(&self, skus: BTreeSet<String>) {
        let mut had = self.known_skus.lock();
        for gone in had.difference(&skus) {
            for state in UNIT_STATES {
                let _ = self.sku_units.remove_label_values(&[gone, state]);
            }
            for reason in SKU_REFUSALS {
                let _ = self.sku_refusals.remove_label_values(&[gone, reason]);
            }
            let _ = self.sku_sold_out.remove_label_values(&[gone]);
            let _ = self.sku_reserves.remove_label_values(&[gone]);
        }
        for sku in skus.difference(&had) {
            self.sku_reserves.with_label_values(&[sku]);
            for reason in SKU_REFUSALS {
                self.sku_refusals.with_label_values(&[sku, reason]);
            }
        }
        *had = skus;
    }

    /// Makes the reserve series of each of `callers` (and of [`ANONYMOUS`]) exist at 0, so
    /// that a panel or a rule reading them has data before their first request.
    pub fn know_callers<'a>(&self, callers: impl IntoIterator<Item = &'a str>) {
        for caller in callers.into_iter().chain([ANONYMOUS]) {
            self.requests
                .with_label_values(&[caller, "/v1/reservations", "POST", "ok"]);
        }
    }

    /// Counts a refusal from memory.
    pub fn refused(&self, reason: &str) {
        match self.refusal_by_reason.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => counter.inc(),
            None => self.refusals.with_label_values(&[reason]).inc(),
        }
    }

    /// The registry in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
