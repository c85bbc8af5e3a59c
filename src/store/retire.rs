//! A SKU's retirement: every key and field of it leaves Redis, the ledger keeps the record.
//!
//! A SKU's life: loaded (before its window), live, ended (its window is over, or a
//! retirement began and closed it), settled (ended, no hold open, no move in transit, every
//! event of its streams acknowledged by the ledger's group), retired (nothing left in Redis;
//! the ledger answers for it). Retirement is two phases per shard, so that the ledger
//! learns of it through the stream like of everything else:
//!
//! 1. `lua/retire_shard.lua` closes the shard's window, and once the shard holds no unit
//!    and has no move pending (on a later call than the one that closed it: a refill under
//!    way when the window closed has completed by then) marks it retired and emits
//!    `retired`. From then on every script that needs a loaded shard answers `NO_SKU` there
//!    and writes nothing. The SKU's routing record says `retiring` (and its window's end)
//!    first, so that every engine's gates refuse from memory within a reload.
//! 2. `lua/purge_shard.lua` deletes the shard's keys once its stream is settled (checked in
//!    the same atomic step). Then the routing record and the repair lease go, and the SKU
//!    leaves the SKU set last.
//!
//! Every step is idempotent and any engine's maintenance pass resumes it after a crash:
//! [`Store::retire`] does whatever is left, and says how far it got.

use super::{Store, StoreError};
use crate::ids::Sku;
use crate::reconcile::GROUP;
use crate::scripts::ScriptCode;

/// How far a retirement got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// Begun: the SKU takes nothing new; its keys go once the ledger has settled its
    /// streams (and its last holds, if a reserve raced the start, are settled).
    Retiring,
    /// Done: nothing of the SKU is left in Redis.
    Retired,
}

/// The routing record's field that marks a retirement begun: Redis time, ms.
const RETIRING: &str = "retiring";

impl Store {
    /// When the SKU's retirement began (Redis time, ms), if it did.
    pub async fn retiring_since(&self, sku: &Sku) -> Result<Option<u64>, StoreError> {
        Ok(redis::cmd("HGET")
            .arg(self.inner.keys.meta(sku))
            .arg(RETIRING)
            .query_async(&mut self.connection())
            .await?)
    }

    /// Refuses with [`StoreError::Retired`] if the SKU's retirement began.
    pub(super) async fn refuse_retiring(&self, sku: &Sku) -> Result<(), StoreError> {
        match self.retiring_since(sku).await? {
            Some(_) => Err(StoreError::Retired),
            None => Ok(()),
        }
    }

    /// Begins or resumes the retirement of `sku`. A SKU that is not retiring yet is refused
    /// with [`StoreError::HoldsOpen`] while it holds units, and with
    /// [`StoreError::UnknownSku`] if it was never loaded (or is retired already and gone from
    /// the SKU set).
    pub async fn retire(&self, sku: &Sku) -> Result<Retirement, StoreError> {
        let Some(config) = self.reload_config(sku).await? else {
            // The routing record is gone: only the SKU set's entry may be left.
            let removed: u64 = redis::cmd("SREM")
                .arg(self.inner.keys.registry())
                .arg(sku.as_str())
                .query_async(&mut self.connection())
                .await?;
            return if removed > 0 {
                Ok(Retirement::Retired)
            } else {
                Err(StoreError::UnknownSku)
            };
        };
        if self.retiring_since(sku).await?.is_none() {
            let totals = self.totals(sku).await?;
            if totals.held > 0 {
                return Err(StoreError::HoldsOpen { held: totals.held });
            }
            let now = self.sync_clock().await?;
            let ends = config.ends_at_ms.map_or(now, |end| end.min(now));
            redis::cmd("HSET")
                .arg(self.inner.keys.meta(sku))
                .arg(RETIRING)
                .arg(now)
                .arg("ends_at_ms")
                .arg(ends.max(1))
                .exec_async(&mut self.connection())
                .await?;
            self.forget(sku);
        }
        let shards = config.ever_shards;
        // Moves left half done are completed while their shards still take them.
        self.complete_moves(sku, shards).await?;
        if !self.retire_shards(sku, shards).await? {
            return Ok(Retirement::Retiring);
        }
        for shard in 0..shards {
            let (_, code): (u64, i64) = self
                .invocation(&self.inner.scripts.purge_shard, sku, shard, true)
                .arg(GROUP)
                .invoke_async(&mut self.connection())
                .await?;
            match StoreError::from_raw(code)? {
                ScriptCode::Ok | ScriptCode::Replayed => {}
                // Not settled yet, or under repair: a later pass goes on.
                ScriptCode::SkuLive | ScriptCode::Fenced => return Ok(Retirement::Retiring),
                other => return Err(StoreError::from_code(other)),
            }
        }
        // The routing record and the lease, then the SKU set's entry, last: whatever is
        // left after a crash is found again through the set.
        redis::cmd("DEL")
            .arg(self.inner.keys.meta(sku))
            .arg(self.inner.keys.repair_lease(sku))
            .exec_async(&mut self.connection())
            .await?;
        redis::cmd("SREM")
            .arg(self.inner.keys.registry())
            .arg(sku.as_str())
            .exec_async(&mut self.connection())
            .await?;
        self.drop_sku(sku);
        Ok(Retirement::Retired)
    }

    /// Runs `retire_shard.lua` on every shard, twice (the first call closes the windows,
    /// the second retires what holds nothing). Returns whether every shard is retired.
    async fn retire_shards(&self, sku: &Sku, shards: u16) -> Result<bool, StoreError> {
        let mut retired = false;
        for _ in 0..2 {
            retired = true;
            for shard in 0..shards {
                let (_, code): (u64, i64) = self
                    .invocation(&self.inner.scripts.retire_shard, sku, shard, true)
                    .invoke_async(&mut self.connection())
                    .await?;
                match StoreError::from_raw(code)? {
                    // A shard never loaded (a load cut short) holds nothing to retire.
                    ScriptCode::Ok | ScriptCode::Replayed | ScriptCode::NoSku => {}
                    ScriptCode::SkuLive | ScriptCode::Fenced => retired = false,
                    other => return Err(StoreError::from_code(other)),
                }
            }
            if retired {
                break;
            }
        }
        Ok(retired)
    }

    /// Whether every event of the SKU's streams is acknowledged by the ledger's group:
    /// delivered up to the stream's last entry, none pending. A stream without the group
    /// (no ledger has read it) is not settled; one that does not exist is.
    pub async fn streams_settled(&self, sku: &Sku, shards: u16) -> Result<bool, StoreError> {
        for shard in 0..shards {
            let events = self.shard_keys(sku, shard).events;
            let exists: bool = redis::cmd("EXISTS")
                .arg(&events)
                .query_async(&mut self.connection())
                .await?;
            if !exists {
                continue;
            }
            let stream: redis::streams::StreamInfoStreamReply = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&events)
                .query_async(&mut self.connection())
                .await?;
            let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&events)
                .query_async(&mut self.connection())
                .await?;
            let settled = groups.groups.iter().any(|g| {
                g.name == GROUP && g.pending == 0 && g.last_delivered_id == stream.last_generated_id
            });
            if !settled {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes whatever a SKU the ledger says is retired left in Redis (shards `0..shards`,
    /// its routing record, lease and SKU set entry): a repair or an operator's hand may
    /// have written there after the purge. Such data is deleted, never restored: the ledger
    /// has the SKU's whole record. Returns whether anything was there.
    pub async fn purge_retired(&self, sku: &Sku, shards: u16) -> Result<bool, StoreError> {
        let mut found = false;
        for shard in 0..shards {
            let keys = self.shard_keys(sku, shard);
            let deleted: u64 = redis::cmd("DEL")
                .arg(&keys.hash)
                .arg(&keys.deadlines)
                .arg(&keys.events)
                .arg(&keys.moves)
                .query_async(&mut self.connection())
                .await?;
            found |= deleted > 0;
        }
        let deleted: u64 = redis::cmd("DEL")
            .arg(self.inner.keys.meta(sku))
            .arg(self.inner.keys.repair_lease(sku))
            .query_async(&mut self.connection())
            .await?;
        let removed: u64 = redis::cmd("SREM")
            .arg(self.inner.keys.registry())
            .arg(sku.as_str())
            .query_async(&mut self.connection())
            .await?;
        self.drop_sku(sku);
        Ok(found || deleted > 0 || removed > 0)
    }
}
