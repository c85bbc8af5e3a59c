//! Recovery: rebuilding Redis from the ledger without creating or losing a unit.
//!
//! Redis holds a live sale; the ledger is its record, trailing Redis by the reconciler's
//! lag. When Redis loses data (it restarted with a short append-only file, or without one,
//! or failed over), the ledger is what the sale is rebuilt from. The protocol, one SKU at a
//! time ([`repair::repair_sku`]):
//!
//! 1. **Lease.** One repairer per SKU: a key in Redis with an owner token and an expiry.
//!    Engines repairing at once take turns; a crashed repairer's lease runs out. The token
//!    names the Redis run it was taken on: a lease a restarted Redis kept from before (its
//!    release lost with the tail of the append-only file) is taken over at once.
//! 2. **Fence.** Every shard the SKU ever had is fenced with the owner's token: from then
//!    on every script that would change it refuses (`FENCED`; the API answers 503
//!    `recovering` with `Retry-After`, the sweeper and move completion skip it). Fencing
//!    returns the shard's version, which every state-changing script bumps.
//! 3. **Drain.** The shards' streams are settled into the ledger, entries other consumers
//!    hold included. Fenced, nothing new is written, so afterwards a healthy Redis equals
//!    the ledger exactly.
//! 4. **Audit.** Redis and the ledger are compared reservation by reservation, barrier by
//!    barrier and unit by unit ([`audit`]).
//! 5. **Restore.** Only if they differ, and only if asked to repair: what only Redis knows
//!    goes to the ledger, and each shard is rebuilt from the ledger
//!    (`lua/restore_shard.lua`), but only if the repairer still owns its fence and its
//!    version is the one fencing returned. Everything the scripts rely on is rebuilt:
//!    allowances, key records and barriers, holds and deadlines, restock op records,
//!    applied and pending moves; each stream hands out only ids after what was settled.
//! 6. **Unfence**, and give the lease up. A repair that fails after its first restore keeps
//!    its fences: the SKU stays refused until a repair completes ([`repair::stale_fences`]).
//!
//! Repair runs by itself only where loss is proven: a Redis with a new run id
//! ([`identity`]). Drift found on a Redis that did not restart is reported (log, metric,
//! the `flashsale audit` exit code) and repaired only by `flashsale audit --repair`.

pub mod audit;
pub mod carts;
pub mod identity;
mod image;
pub mod repair;

pub use audit::{quick_check, run, AuditReport, Drift, DriftKind};

use crate::ledger::LedgerError;
use crate::reconcile::ReconcileError;
use crate::store::StoreError;

/// Why a recovery step failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Settling the streams failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}
