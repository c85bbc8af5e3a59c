//! Keeps the admission gates in step with Redis, in the background.
//!
//! - A sold-out SKU in its window is checked every poll (50 ms by default): units that came
//!   back by a cancel, a restock, another engine, or a deadline that passed (its shards are
//!   swept on the spot) lower the flag, so reserves reach Redis again within about one
//!   poll. Once its window is over it is not polled: nothing can be reserved of it.
//! - A closed SKU (sold out, or past its window) gets the idempotency keys Redis recorded
//!   loaded once, so that retries of reserves that did succeed are not refused.
//! - Every second, each known SKU's window is read again (another engine may have replaced
//!   the SKU).
//! - Every poll, Redis's run id is compared with the one last checked against the ledger
//!   ([`crate::recovery::identity`]): a restarted Redis is checked, and repaired, before the
//!   engine sells on it again.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::recovery::identity::{check_identity, Trust};
use crate::store::{Store, StoreError};

/// Polls between two reloads of the SKUs' windows.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// One pass over the gates.
pub async fn refresh(store: &Store, admission: &Admission) -> Result<(), StoreError> {
    // The sale window is judged in memory by Redis's clock: keep our reading of it fresh.
    let now = store.sync_clock().await?;
    for (sku, gate) in admission.gates() {
        // An ended SKU admits no reserve whatever its flag says: it is not polled (work
        // follows what is live), only its recorded keys are loaded, once; its reserve
        // queues and refill locks go (a replay of a recorded key makes a queue again).
        if gate.first_seen_ended(now) {
            store.release_ended(&sku);
        }
        if !gate.has_ended(now) {
            if !gate.is_sold_out() {
                continue;
            }
            let available = match store.available(&sku).await {
                // Under repair: its units are known once the repair lifts the fence.
                Err(StoreError::Recovering) => continue,
                other => other?,
            };
            if available > 0 {
                admission.clear_sold_out(&sku);
                continue;
            }
        }
        if !gate.keys_loaded() {
            let reopenings = admission.reopenings(&sku);
            let keys = store.recorded_keys(&sku).await?;
            admission.set_recorded_keys(&sku, reopenings, keys);
        }
    }
    Ok(())
}

/// Reads every known SKU's configuration again.
pub async fn reload(store: &Store, admission: &Admission) -> Result<(), StoreError> {
    for (sku, _) in admission.gates() {
        match store.reload_config(&sku).await? {
            Some(config) => admission.know(&config),
            None => admission.forget(&sku),
        }
    }
    // The limiter entries of SKUs forgotten go once they hold nothing a fresh one would not.
    admission.retain_recent();
    Ok(())
}

/// Runs [`check_identity`] and [`refresh`] every `poll` and [`reload`] every second until
/// aborted. While Redis is suspect, the audit runs at most once a second.
pub fn spawn(
    store: Store,
    admission: Arc<Admission>,
    poll: Duration,
    trust: Trust,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reload_every = (RELOAD_EVERY.as_millis() / poll.as_millis().max(1)).max(1) as u64;
        let mut tick = 0u64;
        let mut last_check = std::time::Instant::now() - RELOAD_EVERY;
        loop {
            ticks.tick().await;
            tick += 1;
            // Cheap unless the ledger is there to audit against: then at most once a second.
            let heavy = admission.is_suspended() && trust.ledger.get().is_some();
            if store.redis_suspect() {
                admission.suspend();
            }
            if heavy && last_check.elapsed() < RELOAD_EVERY {
                continue;
            }
            last_check = std::time::Instant::now();
            match check_identity(&store, &admission, &trust).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(%error, "redis identity check failed");
                    continue;
                }
            }
            if let Err(error) = refresh(&store, &admission).await {
                tracing::warn!(%error, "sold-out refresh failed");
            }
            if tick % reload_every == 0 {
                if let Err(error) = reload(&store, &admission).await {
                    tracing::warn!(%error, "sku reload failed");
                }
            }
        }
    })
}
