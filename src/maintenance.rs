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
//!
//! Work is bounded by what is live: an ended SKU found holding nothing (no hold, nothing in
//! transit) is quiet, looked at every [`QUIET_EVERY`]th pass only (nothing can come due in
//! it: its window is over). A retirement begun is resumed by the SKU's owner every pass
//! until done (see [`crate::store::Retirement`]), and with `retire_after` the owner begins
//! one that long after the window ended; a retired SKU leaves the SKU set, and the pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::task::JoinHandle;

use crate::ids::Sku;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Retirement, Store, StoreError, SweepReport};

/// An engine that does not own a SKU sweeps it every this many passes (2 s at the default
/// 250 ms).
pub const BACKUP_EVERY: u64 = 8;

/// Index entries one pass looks at per shard; the next pass continues.
const ENTRIES_PER_PASS: u32 = 4096;

/// A quiet SKU (ended, holding nothing) is looked at every this many passes (10 s at the
/// default 250 ms): to retire it when its time comes, or to find it replaced.
pub const QUIET_EVERY: u64 = 40;

/// What the passes remember of SKUs' lives between them.
#[derive(Default)]
struct Lives {
    /// Retire a SKU this long after its window ended (`None`: never automatically).
    retire_after: Option<Duration>,
    /// Quiet SKUs, by the pass that found them so.
    quiet: Mutex<HashMap<Sku, u64>>,
}

impl Lives {
    /// Whether pass `pass` passes over a quiet `sku`.
    fn skips(&self, sku: &Sku, pass: u64) -> bool {
        self.quiet
            .lock()
            .get(sku)
            .is_some_and(|since| (pass - since) % QUIET_EVERY != 0)
    }
}

/// One pass over every loaded SKU. Returns the holds expired and moves completed. A SKU
/// a repair fences is passed over (its scripts refuse; the repair rebuilds its holds and
/// moves), and so is one that fails: the others are still served.
pub async fn run_once(store: &Store) -> Result<(SweepReport, u64), StoreError> {
    run_pass(store, None, &Lives::default(), 0).await
}

/// One pass as [`run_once`], which also begins the retirement of every SKU whose window
/// ended `retire_after` ago or more and resumes those begun. Returns how many SKUs it
/// retired.
pub async fn run_retiring(store: &Store, retire_after: Duration) -> Result<u64, StoreError> {
    let lives = Lives {
        retire_after: Some(retire_after),
        ..Lives::default()
    };
    let before = store.skus().await?.len();
    run_pass(store, None, &lives, 0).await?;
    Ok(before.saturating_sub(store.skus().await?.len()) as u64)
}

/// The lifecycle part of a pass for `sku`, by its owner: resumes a retirement begun, or
/// begins one that is due. Returns whether the SKU is retired now.
async fn advance_life(
    store: &Store,
    lives: &Lives,
    sku: &Sku,
    pass: u64,
) -> Result<bool, StoreError> {
    // Another engine may have begun the retirement (which ends the window) or replaced the
    // SKU: the routing record is read again now and then.
    let config = if pass % QUIET_EVERY == 0 {
        match store.reload_config(sku).await? {
            Some(config) => config,
            None => return Ok(false),
        }
    } else {
        store.config(sku).await?
    };
    let now = store.redis_now_ms();
    let Some(ended) = config.ends_at_ms.filter(|end| now >= *end) else {
        return Ok(false);
    };
    let due = lives
        .retire_after
        .is_some_and(|after| now >= ended.saturating_add(after.as_millis() as u64));
    if !due && store.retiring_since(sku).await?.is_none() {
        return Ok(false);
    }
    match store.retire(sku).await {
        Ok(Retirement::Retired) => {
            tracing::info!(%sku, "sku retired");
            Ok(true)
        }
        Ok(Retirement::Retiring) => Ok(false),
        // Not yet: its last holds are confirmed, cancelled or expire first.
        Err(StoreError::HoldsOpen { .. }) => Ok(false),
        Err(error) => Err(error),
    }
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
    lives: &Lives,
    pass: u64,
) -> Result<(SweepReport, u64), StoreError> {
    let mut swept = SweepReport::default();
    let mut moves = 0;
    let skus = store.skus().await?;
    lives.quiet.lock().retain(|sku, _| skus.contains(sku));
    for sku in skus {
        if let Some(shared) = shared {
            if !shared.sweeps(&sku, pass) {
                shared.metrics.sweep_deferred.inc();
                continue;
            }
        }
        if lives.skips(&sku, pass) {
            continue;
        }
        let owner = shared.is_none_or(|shared| shared.registry.owns(&sku));
        let done = async {
            if owner && advance_life(store, lives, &sku, pass).await? {
                lives.quiet.lock().remove(&sku);
                return Ok(());
            }
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
            // Ended and holding nothing: nothing can come due in it any more.
            let config = store.config(&sku).await?;
            let ended = config
                .ends_at_ms
                .is_some_and(|end| store.redis_now_ms() >= end);
            if ended && report.expired == 0 && !report.more {
                let totals = store.totals(&sku).await?;
                if totals.held == 0 && totals.in_transit == 0 {
                    lives.quiet.lock().entry(sku.clone()).or_insert(pass);
                }
            } else {
                lives.quiet.lock().remove(&sku);
            }
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
    spawn_passes(store, interval, None, Lives::default())
}

/// Like [`spawn`], for an engine of `registry`: SKUs it does not own are swept at the
/// backup frequency only; sweeps are counted in `metrics`. The SKUs it owns are retired
/// `retire_after` after their window ended (`None`: only by hand).
pub fn spawn_shared(
    store: Store,
    interval: Duration,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    retire_after: Option<Duration>,
) -> JoinHandle<()> {
    let lives = Lives {
        retire_after,
        ..Lives::default()
    };
    spawn_passes(store, interval, Some(Shared { registry, metrics }), lives)
}

fn spawn_passes(
    store: Store,
    interval: Duration,
    shared: Option<Shared>,
    lives: Lives,
) -> JoinHandle<()> {
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
            match run_pass(&store, shared.as_ref(), &lives, pass).await {
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
