//! Background upkeep of live SKUs: expire holds past their deadline, and complete stock
//! moves that a crash or a lost connection left half done.
//!
//! Scripts also expire holds lazily when they meet a shortage, so the interval bounds how
//! long expired units can sit unswept, not whether they come back.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::{Store, StoreError, SweepReport};

/// Index entries one pass looks at per shard; the next pass continues.
const ENTRIES_PER_PASS: u32 = 4096;

/// One pass over every loaded SKU. Returns the holds expired and moves completed. A SKU
/// a repair fences is passed over (its scripts refuse; the repair rebuilds its holds and
/// moves), and so is one that fails: the others are still served.
pub async fn run_once(store: &Store) -> Result<(SweepReport, u64), StoreError> {
    let mut swept = SweepReport::default();
    let mut moves = 0;
    for sku in store.skus().await? {
        let done = async {
            let report = store.sweep(&sku, ENTRIES_PER_PASS).await?;
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
    Ok((swept, moves))
}

/// Runs [`run_once`] every `interval` until the returned task is aborted. Errors are
/// logged and the next pass tries again: a Redis that is away for a while is expected.
pub fn spawn(store: Store, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // A Redis that may have restarted is not touched until it is checked: it may have
            // lost the records that keep a move from being completed twice.
            if store.redis_suspect() {
                continue;
            }
            match run_once(&store).await {
                Ok((swept, moves)) if swept.expired > 0 || moves > 0 => {
                    tracing::debug!(expired = swept.expired, moves, "maintenance pass");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "maintenance pass failed"),
            }
        }
    })
}
