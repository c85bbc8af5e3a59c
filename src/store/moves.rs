//! Stock moves between the shards of a SKU, so that no unit is stranded in a shard whose
//! buyers have gone while another shard's buyers are refused.
//!
//! A user is always served by their home shard. When it has too few units, the reserve
//! (or late confirm) that noticed calls [`Store::refill`], which moves units from the shard
//! that has the most. A move is two scripts: `move_out.lua` on the donor takes units and
//! records the move as pending; `move_in.lua` on the receiver adds them. Both are
//! idempotent by move id, so a move cut short by a crash is completed by whoever finds the
//! pending record next ([`Store::complete_moves`]), never lost, never doubled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Store, StoreError};
use crate::ids::{random_token, Sku};
use crate::scripts::ScriptCode;
use crate::store::SkuConfig;

/// A shard status read: `TIME`, `:avail`, the pending moves' count, the earliest deadline.
type ShardStatusReply = ((u64, u64), Option<u64>, u64, Vec<(String, f64)>);

/// How long a refill's "nothing anywhere" answers the reserves that waited for it.
const SOLD_OUT_REUSE: Duration = Duration::from_millis(20);

/// The outcome of a shard's latest refill, and when it was reached.
pub(super) type LastRefill = Option<(Instant, Refill)>;

/// Rounds of "look, then move" one refill makes before it lets its caller try again.
const MAX_REFILL_ROUNDS: usize = 8;

/// One shard as a refill sees it.
#[derive(Debug, Clone, Copy, Default)]
struct ShardStatus {
    /// Available units.
    avail: u64,
    /// Moves out of this shard not yet completed.
    pending_moves: u64,
    /// The earliest deadline in the shard's index, if any.
    earliest_deadline: Option<u64>,
}

/// What a refill achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refill {
    /// The home shard has the units now (or had them already): try again.
    Ready,
    /// No other shard could give; `available` units were left in the whole SKU.
    Short {
        /// Units available over all shards at the last look.
        available: u64,
    },
}

impl Store {
    fn refill_lock(&self, sku: &Sku, shard: u16) -> Arc<tokio::sync::Mutex<LastRefill>> {
        self.inner
            .refill_locks
            .lock()
            .entry((sku.clone(), shard))
            .or_default()
            .clone()
    }

    /// Forgets the SKU's "nothing anywhere" answers: units came back through this store
    /// (a cancel, a restock, an expiry), so the next refill must look again.
    pub(super) fn units_returned(&self, sku: &Sku) {
        let locks = self.inner.refill_locks.lock();
        for ((of, _), lock) in locks.iter() {
            if of == sku {
                // A refill in progress will record a fresh answer of its own.
                if let Ok(mut last) = lock.try_lock() {
                    *last = None;
                }
            }
        }
    }

    /// Makes at least `need` units available in shard `home`, moving stock from other
    /// shards. Returns [`Refill::Short`] only when, after completing the SKU's moves in
    /// flight and returning its expired holds, no other shard had a unit to give and
    /// `home` still has fewer than `need`: the SKU cannot serve this request.
    pub(super) async fn refill(
        &self,
        config: &SkuConfig,
        home: u16,
        need: u32,
    ) -> Result<Refill, StoreError> {
        let lock = self.refill_lock(&config.sku, home);
        let mut last = lock.lock().await;
        // Reserves that queued behind a refill which found the SKU empty share its answer
        // for a moment instead of each reading every shard again (see ARCHITECTURE.md,
        // "Sold out").
        if let Some((at, Refill::Short { available: 0 })) = *last {
            if at.elapsed() < SOLD_OUT_REUSE {
                return Ok(Refill::Short { available: 0 });
            }
        }
        let outcome = self.refill_locked(config, home, need).await?;
        *last = Some((Instant::now(), outcome));
        Ok(outcome)
    }

    async fn refill_locked(
        &self,
        config: &SkuConfig,
        home: u16,
        need: u32,
    ) -> Result<Refill, StoreError> {
        let need = u64::from(need);
        let (mut completed, mut swept) = (false, false);
        for _ in 0..MAX_REFILL_ROUNDS {
            let (now, shards) = self.shard_status(&config.sku, config.shards).await?;
            let Some(home_status) = shards.get(usize::from(home)) else {
                return Ok(Refill::Short { available: 0 });
            };
            if home_status.avail >= need {
                return Ok(Refill::Ready);
            }
            if !completed && shards.iter().any(|s| s.pending_moves > 0) {
                completed = true;
                self.complete_moves(&config.sku, config.ever_shards).await?;
                continue;
            }
            let donor = (0..config.shards)
                .filter(|&s| s != home)
                .max_by_key(|&s| shards[usize::from(s)].avail)
                .filter(|&s| shards[usize::from(s)].avail > 0);
            if let Some(donor) = donor {
                // Half of the donor's units, so that a hot shard is not refilled one unit
                // at a time, while the donor keeps some for its own buyers.
                let want = need.max(shards[usize::from(donor)].avail.div_ceil(2));
                self.move_stock(&config.sku, donor, home, want).await?;
                continue;
            }
            let due: Vec<u16> = (0..config.shards)
                .filter(|&s| {
                    shards[usize::from(s)]
                        .earliest_deadline
                        .is_some_and(|d| d <= now)
                })
                .collect();
            if !swept && !due.is_empty() {
                swept = true;
                for shard in due {
                    self.sweep_shard(&config.sku, shard, super::SWEEP_BATCH)
                        .await?;
                }
                continue;
            }
            let available = shards.iter().map(|s| s.avail).sum();
            return Ok(Refill::Short { available });
        }
        Ok(Refill::Ready)
    }

    /// Units available in the whole SKU, after returning the units of holds whose deadline
    /// has passed (so that a sold-out flag learns of expiries without waiting for the
    /// sweeper).
    pub async fn available(&self, sku: &Sku) -> Result<u64, StoreError> {
        let config = self.config(sku).await?;
        let (now, shards) = self.shard_status(sku, config.ever_shards).await?;
        let mut swept = false;
        for (shard, status) in (0..config.ever_shards).zip(&shards) {
            if status.earliest_deadline.is_some_and(|d| d <= now) {
                swept |= self
                    .sweep_shard(sku, shard, super::SWEEP_BATCH)
                    .await?
                    .expired
                    > 0;
            }
        }
        if !swept {
            return Ok(shards.iter().map(|s| s.avail).sum());
        }
        let (_, shards) = self.shard_status(sku, config.ever_shards).await?;
        Ok(shards.iter().map(|s| s.avail).sum())
    }

    /// Redis's time and every shard's available units, pending moves and earliest deadline:
    /// each shard read in one call on its slot, every shard at once. The time is the
    /// earliest any shard's node reported.
    async fn shard_status(
        &self,
        sku: &Sku,
        shards: u16,
    ) -> Result<(u64, Vec<ShardStatus>), StoreError> {
        let reads = (0..shards).map(|shard| async move {
            let keys = self.shard_keys(sku, shard);
            // TIME has no key: the pipeline goes to the node of the shard's keys.
            let reply: ShardStatusReply = redis::pipe()
                .cmd("TIME")
                .hget(&keys.hash, ":avail")
                .hlen(&keys.moves)
                .zrange_withscores(&keys.deadlines, 0, 0)
                .query_async(&mut self.connection())
                .await?;
            let ((secs, micros), avail, pending_moves, first) = reply;
            let status = ShardStatus {
                avail: avail.unwrap_or(0),
                pending_moves,
                earliest_deadline: first.first().map(|(_, score)| *score as u64),
            };
            Ok::<_, StoreError>((secs * 1000 + micros / 1000, status))
        });
        let read = futures::future::try_join_all(reads).await?;
        let now = read.iter().map(|(now, _)| *now).min().unwrap_or(0);
        Ok((now, read.into_iter().map(|(_, status)| status).collect()))
    }

    /// Moves up to `want` available units from shard `from` to shard `to`; returns how
    /// many moved (0 when `from` had none left).
    async fn move_stock(
        &self,
        sku: &Sku,
        from: u16,
        to: u16,
        want: u64,
    ) -> Result<u64, StoreError> {
        let move_id = random_token();
        // Either half on a Redis not yet checked could apply again a move whose record it
        // lost (see `Store::trusted`); a move cut here stays pending and is completed once
        // the Redis is trusted.
        self.trusted()?;
        let (_, _, code, taken): (u64, i64, i64, u64) = self
            .invocation(&self.inner.scripts.move_out, sku, from, true)
            .arg(&move_id)
            .arg(to)
            .arg(want)
            .invoke_async(&mut self.connection())
            .await?;
        match StoreError::from_raw(code)? {
            ScriptCode::Ok | ScriptCode::Replayed => {}
            ScriptCode::ShardEmpty => return Ok(0),
            ScriptCode::NoSku => return Err(StoreError::UnknownSku),
            other => return Err(StoreError::from_code(other)),
        }
        self.finish_move(sku, from, to, &move_id, taken).await?;
        Ok(taken)
    }

    /// The second half of a move, and the removal of its pending record.
    async fn finish_move(
        &self,
        sku: &Sku,
        from: u16,
        to: u16,
        move_id: &str,
        units: u64,
    ) -> Result<(), StoreError> {
        self.trusted()?;
        let (_, _, code): (u64, i64, i64) = self
            .invocation(&self.inner.scripts.move_in, sku, to, false)
            .arg(move_id)
            .arg(from)
            .arg(units)
            .invoke_async(&mut self.connection())
            .await?;
        match StoreError::from_raw(code)? {
            ScriptCode::Ok | ScriptCode::Replayed => {}
            other => return Err(StoreError::from_code(other)),
        }
        // Only now is the pending record dropped: had we crashed before, the next engine
        // to look would have applied the (idempotent) second half again.
        redis::cmd("HDEL")
            .arg(self.shard_keys(sku, from).moves)
            .arg(move_id)
            .exec_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Completes every move of `sku` left pending, by a crash or a lost connection.
    /// Returns the number of moves completed.
    pub(super) async fn complete_moves(&self, sku: &Sku, shards: u16) -> Result<u64, StoreError> {
        let mut completed = 0;
        for from in 0..shards {
            let pending: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.shard_keys(sku, from).moves)
                .query_async(&mut self.connection())
                .await?;
            for (move_id, record) in pending {
                let parsed = record.split_once('|').and_then(|(to, units)| {
                    Some((to.parse::<u16>().ok()?, units.parse::<u64>().ok()?))
                });
                let Some((to, units)) = parsed.filter(|&(to, _)| to < shards) else {
                    return Err(StoreError::Protocol(format!(
                        "bad pending move {move_id:?}: {record:?}"
                    )));
                };
                self.finish_move(sku, from, to, &move_id, units).await?;
                completed += 1;
            }
        }
        Ok(completed)
    }

    /// Completes the moves of a SKU left pending (see [`Store::complete_moves`]).
    pub async fn recover_moves(&self, sku: &Sku) -> Result<u64, StoreError> {
        let config = self.config(sku).await?;
        self.complete_moves(sku, config.ever_shards).await
    }
}
