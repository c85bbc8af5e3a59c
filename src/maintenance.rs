//! Background upkeep of live SKUs: expire holds past their deadline, complete stock
//! moves that a crash or a lost connection left half done, and finish carts (expire those
//! past their deadline, roll back or complete those whose engine left them between steps).
//!
//! Scripts also expire holds lazily when they meet a shortage, so the interval bounds how
//! long expired units can sit unswept, not whether they come back.
//!
//! With several engines on one Redis ([`spawn_shared`]), each SKU is swept every pass only
//! by the engine that owns it ([`Registry::owns`]); the others sweep it every
//! [`BACKUP_EVERY`]th pass, so that a crashed owner's SKUs are still swept until its entry
//! expires and another engine owns them. Sweeps and move completion are idempotent
//! scripts: two engines sweeping one SKU at once is waste, never harm.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::ids::Sku;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError, SweepReport};

/// An engine that does not own a SKU sweeps it every this many passes (2 s at the default
/// 250 ms).
pub const BACKUP_EVERY: u64 = 8;

/// Index entries one pass looks at per shard; the next pass continues.
const ENTRIES_PER_PASS: u32 = 4096;

/// One pass over every loaded SKU. Returns the holds expired and moves completed. A SKU
/// a repair fences is passed over (its scripts refuse; the repair rebuilds its holds and
/// moves), and so is one that fails: the others are still served.
pub async fn run_once(store: &Store) -> Result<(SweepReport, u64), StoreError> {
    run_pass(store, None, 0).await
}

/// Shares the sweeping with the other engines of the registry, and counts it.
struct Shared {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Whether pass `pass` sweeps `sku`: always its owner's, every [`BACKUP_EVERY`]th pass
    /// the others'.
    fn sweeps(&self, sku: &Sku, pass: u64) -> bool {
        pass % BACKUP_EVERY == 0 || self.registry.owns(sku)
    }
}

/// One pass, `pass` of the engine's, over the SKUs this engine sweeps on it.
async fn run_pass(
    store: &Store,
    shared: Option<&Shared>,
    pass: u64,
) -> Result<(SweepReport, u64), StoreError> {
    let mut swept = SweepReport::default();
    let mut moves = 0;
    for sku in store.skus().await? {
        if let Some(shared) = shared {
            if !shared.sweeps(&sku, pass) {
                shared.metrics.sweep_deferred.inc();
                continue;
            }
        }
        let done = async {
            let report = store.sweep(&sku, ENTRIES_PER_PASS).await?;
            if let Some(shared) = shared {
                let outcome = if report.expired > 0 {
                    "expired"
                } else {
                    "idle"
                };
                shared
                    .metrics
                    .sweep_calls
                    .with_label_values(&[outcome])
                    .inc();
            }
            swept.expired += report.expired;
            swept.more |= report.more;
            moves += store.recover_moves(&sku).await?;
            Ok::<_, StoreError>(())
        };
        match done.await {
            Ok(()) | Err(StoreError::Recovering) => {}
            Err(StoreError::Redis(error)) => return Err(StoreError::Redis(error)),
            Err(error) => tracing::warn!(%error, %sku, "maintenance of a sku failed"),
        }
    }
    // Carts whose deadline passed, or whose engine left them between steps.
    match store.finish_due_carts().await {
        Ok(0) => {}
        Ok(carts) => tracing::debug!(carts, "carts finished"),
        Err(StoreError::Redis(error)) => return Err(StoreError::Redis(error)),
        Err(error) => tracing::warn!(%error, "finishing carts failed"),
    }
    Ok((swept, moves))
}

/// Runs [`run_once`] every `interval` until the returned task is aborted. Errors are
/// logged and the next pass tries again: a Redis that is away for a while is expected.
pub fn spawn(store: Store, interval: Duration) -> JoinHandle<()> {
    spawn_passes(store, interval, None)
}

/// Like [`spawn`], for an engine of `registry`: SKUs it does not own are swept at the
/// backup frequency only; sweeps are counted in `metrics`.
pub fn spawn_shared(
    store: Store,
    interval: Duration,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    spawn_passes(store, interval, Some(Shared { registry, metrics }))
}

fn spawn_passes(store: Store, interval: Duration, shared: Option<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pass = 0u64;
        loop {
            ticks.tick().await;
            // A Redis that may have restarted is not touched until it is checked: it may have
            // lost the records that keep a move from being completed twice.
            if store.redis_suspect() {
                continue;
            }
            match run_pass(&store, shared.as_ref(), pass).await {
                Ok((swept, moves)) if swept.expired > 0 || moves > 0 => {
                    tracing::debug!(expired = swept.expired, moves, "maintenance pass");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "maintenance pass failed"),
            }
            pass += 1;
        }
    })
}
