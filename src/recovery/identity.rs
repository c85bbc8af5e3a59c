//! The identity check: selling only on a Redis that was checked against the ledger.
//!
//! A Redis that restarted may have lost acknowledged writes (its append-only file synced
//! every second, or none at all) and then looks plausible but stale: selling on its word
//! could sell a unit twice. Its run id is new at every start, so the engine compares it with
//! the one last checked (`<prefix>redis-identity`); on a difference it suspends every
//! request that would call Redis, takes every SKU through the repair protocol (fenced,
//! drained, compared, rebuilt from the ledger where it lost data; see [`super::repair`]),
//! records the run id as checked, and resumes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use super::{audit, RecoveryError};
use crate::admission::Admission;
use crate::ledger::Ledger;
use crate::store::Store;

/// How the identity check trusts a Redis it has not checked yet.
#[derive(Clone)]
pub struct Trust {
    /// The ledger, once connected.
    pub ledger: Arc<OnceCell<Ledger>>,
    /// Whether a ledger is configured at all (without one there is nothing to compare).
    pub ledger_expected: bool,
    /// Repair drift found after a restart; otherwise stay suspended until someone runs
    /// `flashsale audit --repair`.
    pub repair: bool,
}

impl Trust {
    /// Waits up to `within` for the ledger to connect (when one is configured).
    pub async fn ledger_ready(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.ledger_expected
            && self.ledger.get().is_none()
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Compares Redis's run id with the one last checked; on a difference suspends requests,
/// audits (and repairs) Redis against the ledger, and resumes. Returns whether requests
/// flow.
pub async fn check_identity(
    store: &Store,
    admission: &Admission,
    trust: &Trust,
) -> Result<bool, RecoveryError> {
    let (run_id, checked) = store.redis_identity().await?;
    if checked.as_deref() == Some(run_id.as_str()) {
        if admission.is_suspended() {
            admission.resume();
        }
        store.trust_redis();
        return Ok(true);
    }
    admission.suspend();
    match trust.ledger.get() {
        None if trust.ledger_expected => {
            tracing::warn!("redis is new or restarted; waiting for the ledger to check it");
            return Ok(false);
        }
        None => {}
        Some(ledger) => {
            // With repair, every SKU goes through the fenced protocol: a SKU another engine
            // is repairing is waited for (checked again at the next poll).
            let report = audit::run(store, ledger, None, trust.repair).await?;
            if !report.busy.is_empty() {
                tracing::info!(busy = ?report.busy, "another engine is repairing; waiting");
                return Ok(false);
            }
            if !report.drifts.is_empty() {
                if !trust.repair || !report.skipped.is_empty() {
                    tracing::error!(%report, "redis lost data the ledger has; requests stay suspended until `flashsale audit --repair`");
                    return Ok(false);
                }
                tracing::warn!(%report, "redis restarted and lost data; repaired from the ledger");
            }
        }
    }
    store.mark_identity(&run_id).await?;
    for (sku, _) in admission.gates() {
        admission.clear_sold_out(&sku);
    }
    store.trust_redis();
    admission.resume();
    Ok(true)
}
