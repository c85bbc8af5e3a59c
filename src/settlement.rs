//! The ledger side of `flashsale serve`: connects to the database (retrying while it is
//! down, so that the API serves meanwhile), runs the reconciler, and runs the quick audit
//! periodically. Drift the quick audit finds on a Redis that did not restart is reported
//! (log and `flashsale_audit_drifts_total`), never repaired from here: only a restart proves
//! a loss (see `recovery::identity`), and only `flashsale audit --repair` repairs the rest.
//! A SKU left fenced by a repair that died is taken through the repair again.
//!
//! It also watches settlement, whether the reconciler runs here or elsewhere: every second
//! it measures what waits in the shard streams (delivered and not acknowledged, or not
//! delivered yet), publishes it (`flashsale_reconciler_pending_events`,
//! `flashsale_reconciler_lag_seconds`) and hands it to admission, which refuses new holds
//! past `--max-unsettled` (streams are trimmed only below what every group acknowledged,
//! so a reconciler that stopped makes them grow, never lose an entry).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reconcile::{Backlog, ReconcileOptions, Reconciler};
use crate::recovery::repair::{repair_sku, stale_fences, SkuRepair};
use crate::recovery::{quick_check, RecoveryError};
use crate::store::Store;

/// What the ledger side runs.
#[derive(Debug, Clone)]
pub struct SettlementOptions {
    /// The database URL.
    pub database_url: String,
    /// Run the reconciler here.
    pub reconcile: bool,
    /// Quick audit interval; `None` for never.
    pub audit_every: Option<Duration>,
}

/// Connects to the ledger, retrying with back-off and jitter until it answers or `stop`.
pub async fn connect(url: &str, stop: &mut watch::Receiver<bool>) -> Option<Ledger> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match Ledger::connect(url).await {
            Ok(ledger) => return Some(ledger),
            Err(error) => tracing::warn!(%error, retry_in = ?backoff, "ledger unavailable"),
        }
        let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return None,
        }
        if *stop.borrow() {
            return None;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Starts the ledger side; `ledger` is filled once the database answers.
pub fn spawn(
    options: SettlementOptions,
    store: Store,
    ledger: Arc<OnceCell<Ledger>>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(connected) = connect(&options.database_url, &mut stop).await else {
            return;
        };
        let _ = ledger.set(connected.clone());
        let watcher = {
            let watcher = Reconciler::new(
                store.clone(),
                connected.clone(),
                ReconcileOptions::new(),
                Some(metrics.clone()),
            );
            let (metrics, stop) = (metrics.clone(), stop.clone());
            tokio::spawn(watch_backlog(watcher, admission, metrics, stop))
        };
        let auditor = options.audit_every.map(|every| {
            let (store, ledger, stop) = (store.clone(), connected.clone(), stop.clone());
            let metrics = metrics.clone();
            tokio::spawn(audit_loop(store, ledger, every, metrics, stop))
        });
        if options.reconcile {
            Reconciler::new(store, connected, ReconcileOptions::new(), Some(metrics))
                .run(stop.clone())
                .await;
        }
        if let Some(auditor) = auditor {
            let _ = auditor.await;
        }
        let _ = watcher.await;
    })
}

/// Sets `flashsale_stream_backlog_entries` of every stream measured, and drops the series
/// of streams no longer measured (a SKU retired); `published` is what the last call set.
fn publish_streams(
    watcher: &Reconciler,
    metrics: &Metrics,
    backlog: &Backlog,
    published: &mut BTreeSet<[String; 2]>,
) {
    let keys = watcher.store().keys();
    let mut now = BTreeSet::new();
    for stream in &backlog.streams {
        let Some((sku, shard)) = keys.events_shard(&stream.key) else {
            continue;
        };
        let labels = [sku.to_string(), shard.to_string()];
        metrics
            .stream_backlog
            .with_label_values(&[&labels[0], &labels[1]])
            .set(stream.entries as i64);
        now.insert(labels);
    }
    for gone in published.difference(&now) {
        let _ = metrics
            .stream_backlog
            .remove_label_values(&[&gone[0], &gone[1]]);
    }
    *published = now;
}

/// Measures the backlog every housekeeping interval and hands it to admission, until
/// `stop`. Needs only Redis, so it keeps reporting while the database is down, which is
/// exactly when the backlog grows. A measurement that fails leaves the last one in force.
async fn watch_backlog(
    watcher: Reconciler,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let every = ReconcileOptions::new().housekeeping;
    let mut published = BTreeSet::new();
    while !*stop.borrow() {
        match watcher.measure().await {
            Ok(backlog) => {
                publish_streams(&watcher, &metrics, &backlog, &mut published);
                let was_behind = admission.settlement_behind();
                admission.set_unsettled(backlog.pending + backlog.undelivered);
                let behind = admission.settlement_behind();
                metrics.settlement_behind.set(i64::from(behind));
                if behind && !was_behind {
                    tracing::error!(
                        unsettled = admission.unsettled(),
                        "settlement is behind: new reserves are refused until the \
                         reconciler catches up (is one running? can it reach the database?)"
                    );
                }
            }
            Err(error) => tracing::debug!(%error, "backlog not measured"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn audit_loop(
    store: Store,
    ledger: Ledger,
    every: Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if let Err(error) = audit_once(&store, &ledger, &metrics).await {
            metrics.audits.with_label_values(&["failed"]).inc();
            tracing::warn!(%error, "quick audit failed");
        }
    }
}

/// One quick audit: drift reported, stale fences repaired.
async fn audit_once(
    store: &Store,
    ledger: &Ledger,
    metrics: &Metrics,
) -> Result<(), RecoveryError> {
    let drifts = quick_check(store, ledger).await?;
    let outcome = if drifts.is_empty() { "clean" } else { "drift" };
    metrics.audits.with_label_values(&[outcome]).inc();
    for drift in drifts {
        metrics
            .audit_drifts
            .with_label_values(&[drift.kind.as_str()])
            .inc();
        tracing::error!(
            sku = drift.sku,
            kind = drift.kind.as_str(),
            detail = drift.detail,
            "redis differs from the ledger; run `flashsale audit --repair` if it lost data"
        );
    }
    let stale = stale_fences(store).await?;
    if stale.is_empty() {
        return Ok(());
    }
    let reconciler = Reconciler::for_store(store, ledger);
    for sku in stale {
        tracing::warn!(%sku, "a repair left this SKU fenced; repairing it again");
        let outcome = match repair_sku(store, ledger, &reconciler, &sku, true).await {
            Ok(outcome) => match outcome.result {
                SkuRepair::Repaired(_) => "repaired",
                SkuRepair::Clean => "clean",
                SkuRepair::Busy => continue,
                SkuRepair::Found(_) | SkuRepair::Skipped { .. } => "skipped",
            },
            Err(error) => {
                tracing::error!(%error, %sku, "repair failed");
                "failed"
            }
        };
        metrics.repairs.with_label_values(&[outcome]).inc();
    }
    Ok(())
}
