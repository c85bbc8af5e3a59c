//! SKUs: loading, routing records, restocks and totals.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Loaded, QuantityBound, ShardUnits, SkuConfig, SkuSpec, Store, StoreError, Totals,
    TrackedByStore,
};
use super::{MAX_RESERVE_ROUNDS, MAX_STOCK};
use crate::ids::{random_token, OpId, Sku};
use crate::scripts::ScriptCode;
use crate::sharding::{default_shards, split};

/// How many times [`Store::totals`] reads the shards when a move shows on both sides.
const TOTALS_READS: usize = 4;

/// One shard's unit counters.
struct ShardCounters {
    available: u64,
    held: u64,
    sold: u64,
    loaded: u64,
    restocked: u64,
    moved_in: u64,
    moved_out: u64,
    fenced: bool,
}

impl Store {
    /// Loads `sku` with `spec`, or replaces it if it has never recorded a hold, sale or
    /// barrier. A live SKU is refused with [`StoreError::SkuLive`] before anything changes.
    pub async fn load(&self, sku: &Sku, spec: &SkuSpec) -> Result<Loaded, StoreError> {
        spec.validate()?;
        // A retiring SKU is never loaded again (its record goes to the ledger whole).
        self.refuse_retiring(sku).await?;
        let shards = spec.shards.unwrap_or_else(|| default_shards(spec.stock));
        let old = self.read_config(sku).await?;
        let touched = shards.max(old.as_ref().map_or(0, |c| c.ever_shards));
        if self.any_shard_live(sku, touched).await? {
            return Err(StoreError::SkuLive);
        }
        let units = split(spec.stock, shards);
        let hold_ms = spec.hold.as_millis() as u64;
        let mut conn = self.connection();
        // Shards beyond a smaller new count are loaded empty: nothing routes to them, and
        // their `loaded` events keep the ledger's sums right.
        for shard in 0..touched {
            let (_, _, code): (u64, i64, i64) = self
                .invocation(&self.inner.scripts.load_shard, sku, shard, true)
                .arg(units.get(usize::from(shard)).copied().unwrap_or(0))
                .arg(spec.per_user_limit)
                .arg(hold_ms)
                .arg(spec.starts_at_ms.unwrap_or(0))
                .arg(spec.ends_at_ms.unwrap_or(0))
                .arg(shards)
                .invoke_async(&mut conn)
                .await?;
            match StoreError::from_raw(code)? {
                ScriptCode::Ok | ScriptCode::Replaced => {}
                other => return Err(StoreError::from_code(other)),
            }
        }
        let config = SkuConfig {
            sku: sku.clone(),
            shards,
            ever_shards: touched,
            stock: spec.stock,
            per_user_limit: spec.per_user_limit,
            hold: Duration::from_millis(hold_ms),
            starts_at_ms: spec.starts_at_ms,
            ends_at_ms: spec.ends_at_ms,
        };
        self.write_meta(&config).await?;
        self.inner
            .configs
            .write()
            .insert(sku.clone(), Arc::new(config));
        self.units_returned(sku);
        Ok(if old.is_some() {
            Loaded::Replaced
        } else {
            Loaded::Created
        })
    }

    /// Writes a SKU's routing record (shard count and rules), then registers the SKU: two
    /// calls, since the record lives in the SKU's slot and the registry in its own. A crash
    /// between them leaves a record nothing lists yet; the load's retry registers it.
    pub(super) async fn write_meta(&self, config: &SkuConfig) -> Result<(), StoreError> {
        let meta = self.inner.keys.meta(&config.sku);
        redis::pipe()
            .atomic()
            .del(&meta)
            .hset_multiple(
                &meta,
                &[
                    ("shards", u64::from(config.shards)),
                    ("ever_shards", u64::from(config.ever_shards)),
                    ("stock", config.stock),
                    ("per_user_limit", u64::from(config.per_user_limit)),
                    ("hold_ms", config.hold.as_millis() as u64),
                    ("starts_at_ms", config.starts_at_ms.unwrap_or(0)),
                    ("ends_at_ms", config.ends_at_ms.unwrap_or(0)),
                ],
            )
            .exec_async(&mut self.connection())
            .await?;
        redis::cmd("SADD")
            .arg(self.inner.keys.registry())
            .arg(config.sku.as_str())
            .exec_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Whether any of the first `shards` shards has recorded a hold, sale or barrier, or
    /// has a stock move in flight.
    async fn any_shard_live(&self, sku: &Sku, shards: u16) -> Result<bool, StoreError> {
        let reads = (0..shards).map(|shard| async move {
            let keys = self.shard_keys(sku, shard);
            let (counters, moves): (Vec<Option<u64>>, u64) = redis::pipe()
                .hmget(&keys.hash, &[":made", ":held", ":sold"])
                .hlen(&keys.moves)
                .query_async(&mut self.connection())
                .await?;
            Ok::<_, StoreError>(moves > 0 || counters.iter().any(|c| c.unwrap_or(0) > 0))
        });
        let live = futures::future::try_join_all(reads).await?;
        Ok(live.into_iter().any(|live| live))
    }

    /// Reads a SKU's configuration from Redis, bypassing the cache.
    async fn read_config(&self, sku: &Sku) -> Result<Option<SkuConfig>, StoreError> {
        let fields: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.inner.keys.meta(sku))
            .query_async(&mut self.connection())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| {
            fields
                .get(name)
                .copied()
                .ok_or_else(|| StoreError::Protocol(format!("sku meta lacks {name}")))
        };
        let nonzero = |v: u64| (v > 0).then_some(v);
        let narrow = |v: u64| {
            u32::try_from(v).map_err(|_| StoreError::Protocol("sku meta out of range".into()))
        };
        let count = |name: &str| {
            u16::try_from(get(name)?)
                .map_err(|_| StoreError::Protocol("shard count out of range".into()))
        };
        let shards = count("shards")?;
        Ok(Some(SkuConfig {
            sku: sku.clone(),
            shards,
            ever_shards: count("ever_shards")?.max(shards),
            stock: get("stock")?,
            per_user_limit: narrow(get("per_user_limit")?)?,
            hold: Duration::from_millis(get("hold_ms")?),
            starts_at_ms: nonzero(get("starts_at_ms")?),
            ends_at_ms: nonzero(get("ends_at_ms")?),
        }))
    }

    /// A SKU's configuration, from memory when known.
    pub async fn config(&self, sku: &Sku) -> Result<Arc<SkuConfig>, StoreError> {
        if let Some(config) = self.inner.configs.read().get(sku) {
            return Ok(config.clone());
        }
        let config = Arc::new(self.read_config(sku).await?.ok_or(StoreError::UnknownSku)?);
        self.inner
            .configs
            .write()
            .insert(sku.clone(), config.clone());
        Ok(config)
    }

    /// Reads a SKU's configuration from Redis again and refreshes the cache; `None` if the
    /// SKU is gone.
    pub async fn reload_config(&self, sku: &Sku) -> Result<Option<Arc<SkuConfig>>, StoreError> {
        let Some(config) = self.read_config(sku).await? else {
            self.drop_sku(sku);
            return Ok(None);
        };
        let config = Arc::new(config);
        self.inner
            .configs
            .write()
            .insert(sku.clone(), config.clone());
        Ok(Some(config))
    }

    /// Drops the cached configuration of `sku` (it changed in Redis): the next call reads it.
    pub(super) fn forget(&self, sku: &Sku) {
        self.inner.configs.write().remove(sku);
    }

    /// Drops everything kept in memory for `sku`, which is gone (retired, or never
    /// loaded): its configuration, reserve queues and refill locks.
    pub(super) fn drop_sku(&self, sku: &Sku) {
        self.forget(sku);
        self.release_ended(sku);
    }

    /// Drops what serves reserves of `sku`, whose window is over: its shards' reserve
    /// queues (their tasks end once the requests holding them are answered; a later reserve
    /// makes one again) and refill locks.
    pub fn release_ended(&self, sku: &Sku) {
        self.inner.queues.write().remove(sku);
        self.inner
            .refill_locks
            .lock()
            .retain(|(of, _), _| of != sku);
    }

    /// How much the store keeps in memory for SKUs now.
    pub fn tracked(&self) -> TrackedByStore {
        TrackedByStore {
            configs: self.inner.configs.read().len(),
            queues: self.inner.queues.read().len(),
            refill_locks: self.inner.refill_locks.lock().len(),
        }
    }

    /// Every loaded SKU.
    pub async fn skus(&self) -> Result<Vec<Sku>, StoreError> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.registry())
            .query_async(&mut self.connection())
            .await?;
        let mut skus: Vec<Sku> = names.into_iter().filter_map(|n| Sku::new(n).ok()).collect();
        skus.sort();
        Ok(skus)
    }

    /// Adds `quantity` units to a loaded SKU, spread over its shards. Idempotent by `op`:
    /// the same op id again adds nothing more (a restock cut short is finished by repeating
    /// it). Without an op id a fresh one is drawn.
    pub async fn restock(
        &self,
        sku: &Sku,
        quantity: u64,
        op: Option<&OpId>,
    ) -> Result<Totals, StoreError> {
        if quantity == 0 || quantity > MAX_STOCK {
            return Err(StoreError::InvalidQuantity(QuantityBound::Restock));
        }
        let op = op.map_or_else(random_token, |op| op.as_str().to_owned());
        self.refuse_retiring(sku).await?;
        let mut conn = self.connection();
        'route: for _ in 0..MAX_RESERVE_ROUNDS {
            let config = self.config(sku).await?;
            for (shard, units) in (0..config.shards).zip(split(quantity, config.shards)) {
                if units == 0 {
                    continue;
                }
                self.trusted()?;
                let (_, _, code): (u64, i64, i64) = self
                    .invocation(&self.inner.scripts.restock, sku, shard, false)
                    .arg(units)
                    .arg(&op)
                    .arg(config.shards)
                    .invoke_async(&mut conn)
                    .await?;
                match StoreError::from_raw(code)? {
                    ScriptCode::Ok | ScriptCode::Replayed => {}
                    ScriptCode::NoSku => {
                        self.drop_sku(sku);
                        return Err(StoreError::UnknownSku);
                    }
                    // Split by a stale shard count: the shards already done keep their
                    // share (the op id makes them replay), the rest follow the new count.
                    ScriptCode::StaleRoute => {
                        self.reload_config(sku).await?;
                        continue 'route;
                    }
                    other => return Err(StoreError::from_code(other)),
                }
            }
            self.units_returned(sku);
            return self.totals(sku).await;
        }
        Err(StoreError::Contended)
    }

    /// A SKU's units summed over its shards, each shard read in one call (its counters
    /// are one instant's), every shard at once. Shards read at different instants still
    /// balance: each shard's counters do at its own instant, so the sums do too, with in
    /// transit = moves out - moves in over what was read. The one case to avoid is a move
    /// seen on both sides (its destination read after the units arrived, its source before
    /// they left): in transit then comes out negative, and the shards are read again; a
    /// move's two halves are one round trip apart. A negative that lasts is no move in
    /// flight but a repair midway, some shards restored (their move counters start again
    /// from their contents) and some not yet: the SKU is fenced, and the last read is
    /// returned with nothing in transit, as a single instant's read would be.
    pub async fn totals(&self, sku: &Sku) -> Result<Totals, StoreError> {
        let config = self.config(sku).await?;
        let mut totals = Totals::default();
        for _ in 0..TOTALS_READS {
            let reads = (0..config.ever_shards).map(|shard| self.shard_counters(sku, shard));
            let shards = futures::future::try_join_all(reads).await?;
            totals = Totals::default();
            let (mut moved_in, mut moved_out) = (0, 0);
            for shard in &shards {
                totals.available += shard.available;
                totals.held += shard.held;
                totals.sold += shard.sold;
                totals.loaded += shard.loaded;
                totals.restocked += shard.restocked;
                totals.fenced |= shard.fenced;
                moved_in += shard.moved_in;
                moved_out += shard.moved_out;
            }
            if moved_out >= moved_in {
                totals.in_transit = moved_out - moved_in;
                return Ok(totals);
            }
        }
        Ok(totals)
    }

    /// Every shard's units now (each shard read in one atomic call, all at once).
    pub async fn shard_units(&self, sku: &Sku) -> Result<Vec<ShardUnits>, StoreError> {
        let config = self.config(sku).await?;
        let reads = (0..config.ever_shards).map(|shard| self.shard_counters(sku, shard));
        let shards = futures::future::try_join_all(reads).await?;
        Ok((0..config.ever_shards)
            .zip(shards)
            .map(|(shard, c)| ShardUnits {
                shard,
                stock: (c.loaded + c.restocked + c.moved_in).saturating_sub(c.moved_out),
                available: c.available,
                held: c.held,
                sold: c.sold,
                fenced: c.fenced,
            })
            .collect())
    }

    /// One shard's counters, in one atomic call on its slot.
    async fn shard_counters(&self, sku: &Sku, shard: u16) -> Result<ShardCounters, StoreError> {
        let hash = self.shard_keys(sku, shard).hash;
        let (counters, fenced): (Vec<Option<u64>>, bool) = redis::pipe()
            .atomic()
            .hmget(
                &hash,
                &[
                    ":avail",
                    ":held",
                    ":sold",
                    ":loaded",
                    ":restocked",
                    ":moved_in",
                    ":moved_out",
                ],
            )
            .hexists(&hash, ":fence")
            .query_async(&mut self.connection())
            .await?;
        let c = |i: usize| counters.get(i).copied().flatten().unwrap_or(0);
        Ok(ShardCounters {
            available: c(0),
            held: c(1),
            sold: c(2),
            loaded: c(3),
            restocked: c(4),
            moved_in: c(5),
            moved_out: c(6),
            fenced,
        })
    }
}
