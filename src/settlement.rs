//! The ledger side of `flashsale serve`: connects to the database (retrying while it is
//! down, so that the API serves meanwhile), runs the reconciler, and runs the quick audit
//! periodically, repairing Redis from the ledger when asked to.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;

use crate::audit;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reconcile::{ReconcileOptions, Reconciler};
use crate::store::Store;

/// What the ledger side runs.
#[derive(Debug, Clone)]
pub struct SettlementOptions {
    /// The database URL.
    pub database_url: String,
    /// The Redis URL the reconciler reads streams from.
    pub redis_url: String,
    /// Run the reconciler here.
    pub reconcile: bool,
    /// Quick audit interval; `None` for never.
    pub audit_every: Option<Duration>,
    /// Repair Redis from the ledger when the quick audit finds a loss.
    pub audit_repair: bool,
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
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(connected) = connect(&options.database_url, &mut stop).await else {
            return;
        };
        let _ = ledger.set(connected.clone());
        let auditor = options.audit_every.map(|every| {
            let (store, ledger, stop) = (store.clone(), connected.clone(), stop.clone());
            tokio::spawn(audit_loop(store, ledger, every, options.audit_repair, stop))
        });
        if options.reconcile {
            match Reconciler::new(
                store,
                &options.redis_url,
                connected,
                ReconcileOptions::new(),
                Some(metrics),
            ) {
                Ok(reconciler) => reconciler.run(stop.clone()).await,
                Err(error) => tracing::error!(%error, "reconciler did not start"),
            }
        }
        if let Some(auditor) = auditor {
            let _ = auditor.await;
        }
    })
}

async fn audit_loop(
    store: Store,
    ledger: Ledger,
    every: Duration,
    repair: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let drifts = match audit::quick_check(&store, &ledger).await {
            Ok(drifts) => drifts,
            Err(error) => {
                tracing::warn!(%error, "quick audit failed");
                continue;
            }
        };
        if drifts.is_empty() {
            continue;
        }
        for drift in &drifts {
            tracing::error!(
                sku = drift.sku,
                kind = drift.kind.as_str(),
                detail = drift.detail,
                "redis lost data the ledger has"
            );
        }
        if repair {
            match audit::run(&store, &ledger, None, true).await {
                Ok(report) => {
                    tracing::warn!(repaired = ?report.repaired, skipped = ?report.skipped, "audit repair")
                }
                Err(error) => tracing::error!(%error, "audit repair failed"),
            }
        }
    }
}
