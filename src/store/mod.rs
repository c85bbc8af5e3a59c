//! The reservation store: a typed API over the Lua scripts, on one multiplexed connection.
//!
//! Stock changes only inside the scripts; this module routes each call to the shard that
//! owns it (a user's home shard, or the shard a reservation id names), turns script codes
//! into [`StoreError`]s, and moves stock between shards when a home shard runs dry
//! (`moves.rs`).
//!
//! The hot path uses one [`ConnectionManager`]: a multiplexed connection that pipelines
//! concurrent calls and reconnects by itself. On these machines it served about 2.5x the
//! reserves of a pooled connection per request with the same script.

mod batcher;
mod connection;
mod error;
mod moves;
mod repair;
mod types;

use moves::Refill;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Value};

use crate::ids::{random_token, IdempotencyKey, OpId, ReservationId, Sku, UserId};
use crate::keys::{KeySpace, ShardKeys};
use crate::scripts::{RawHold, RawReserve, ScriptCode, Scripts};
use crate::sharding::{default_shards, home_shard, split};

pub use connection::StoreConnection;
pub use error::{ExpiredBecause, QuantityBound, StoreError};
pub use repair::{RestoreOutcome, ShardImage, ShardRules, ShardSnapshot};
pub use types::{
    HoldState, Loaded, Reservation, ReserveRequest, Reserved, SkuConfig, SkuSpec, SweepReport,
    Totals, MAX_HOLD, MAX_PER_USER_LIMIT, MAX_STOCK,
};

/// How often a reserve goes round "shard empty, move stock here, try again" before it
/// gives up with [`StoreError::Contended`]. Each round means other buyers took the units
/// moved for this one, so the SKU is nearly sold out and a retry soon settles it.
const MAX_RESERVE_ROUNDS: usize = 16;

/// Entries of the deadline index a single sweep call looks at.
pub const SWEEP_BATCH: u32 = 256;

/// How to reach Redis and where the engine's keys live.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// Prefix of every key (`fs:` by default).
    pub prefix: String,
    /// How long a call may wait for Redis before it fails.
    pub timeout: Duration,
}

impl StoreOptions {
    /// Options for `redis_url`, prefix `fs:`, one second timeout.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            prefix: "fs:".to_owned(),
            timeout: Duration::from_secs(1),
        }
    }
}

/// The reservation store. Cheap to clone; clones share one connection and caches.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// One shard of one SKU.
type ShardOf = (Sku, u16);

struct Inner {
    conn: ConnectionManager,
    /// Where Redis is, for the connections of the store's own readers (a repair's drain).
    redis_url: String,
    keys: KeySpace,
    scripts: Scripts,
    /// SKU configurations by SKU. A SKU's shard count only changes when it is replaced,
    /// which only a SKU without holds can be, so a stale entry at worst routes a reserve
    /// to a shard the replace reset; the scripts' `NO_SKU` evicts it.
    configs: RwLock<HashMap<Sku, Arc<SkuConfig>>>,
    /// One async lock per (SKU, shard) so that concurrent reserves on an empty shard wait
    /// for one stock move instead of each starting their own.
    refill_locks: Mutex<HashMap<ShardOf, Arc<tokio::sync::Mutex<moves::LastRefill>>>>,
    /// Set when a connection to Redis dropped (see `connection.rs`).
    suspect: Arc<std::sync::atomic::AtomicBool>,
    /// Redis's clock minus ours, in ms, from the time the last script reported: lets
    /// in-memory checks (the sale window) judge by Redis's clock, as the scripts do.
    clock_offset_ms: AtomicI64,
    /// The reserve queue of each (SKU, shard) in use (see `batcher.rs`).
    queues: RwLock<HashMap<Sku, HashMap<u16, tokio::sync::mpsc::Sender<batcher::Pending>>>>,
}

fn parse<T: FromRedisValue>(value: Value) -> Result<T, StoreError> {
    T::from_redis_value(value).map_err(|e| StoreError::Redis(RedisError::from(e)))
}

impl Store {
    /// Connects to Redis; scripts are loaded on first use.
    pub async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let keys =
            KeySpace::new(&options.prefix).map_err(|e| StoreError::InvalidSpec(e.to_string()))?;
        let client = redis::Client::open(options.redis_url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.timeout))
            .set_connection_timeout(Some(options.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                redis_url: options.redis_url.clone(),
                keys,
                scripts: Scripts::new(),
                configs: RwLock::new(HashMap::new()),
                refill_locks: Mutex::new(HashMap::new()),
                queues: RwLock::new(HashMap::new()),
                clock_offset_ms: AtomicI64::new(0),
                suspect: Arc::default(),
            }),
        })
    }

    /// The Redis URL the store was opened on.
    pub fn redis_url(&self) -> &str {
        &self.inner.redis_url
    }

    /// The key names this store uses.
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// A handle on the shared multiplexed connection.
    pub fn connection(&self) -> StoreConnection {
        StoreConnection {
            manager: self.inner.conn.clone(),
            suspect: self.inner.suspect.clone(),
        }
    }

    /// Whether a connection to Redis dropped since the last [`Store::trust_redis`]: the
    /// Redis answering now may be a restarted one that lost writes.
    pub fn redis_suspect(&self) -> bool {
        self.inner.suspect.load(Ordering::Acquire)
    }

    /// Clears the suspect flag, once the Redis answering now was checked.
    pub fn trust_redis(&self) {
        self.inner.suspect.store(false, Ordering::Release);
    }

    /// Redis's time now, in ms since the epoch, as last learnt from a script's reply.
    pub fn redis_now_ms(&self) -> u64 {
        let offset = self.inner.clock_offset_ms.load(Ordering::Relaxed);
        local_now_ms().saturating_add_signed(offset)
    }

    /// Reads Redis's clock now, so that in-memory checks judge by it even when no script
    /// has answered lately (a sale window refused from memory would otherwise never learn).
    pub async fn sync_clock(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.connection())
            .await?;
        let now = secs * 1000 + micros / 1000;
        self.observe_redis_time(now);
        Ok(now)
    }

    fn observe_redis_time(&self, redis_now_ms: u64) {
        let offset = redis_now_ms as i64 - local_now_ms() as i64;
        self.inner.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    fn shard_keys(&self, sku: &Sku, shard: u16) -> ShardKeys {
        self.inner.keys.shard(sku, shard)
    }

    /// Prepares a call of `script` on one shard: its keys, then sku and shard index.
    fn invocation<'a>(
        &self,
        script: &'a redis::Script,
        sku: &Sku,
        shard: u16,
        with_moves: bool,
    ) -> redis::ScriptInvocation<'a> {
        let keys = self.shard_keys(sku, shard);
        let mut call = script.prepare_invoke();
        call.key(keys.hash)
            .key(keys.deadlines)
            .key(keys.events)
            .arg(sku.as_str())
            .arg(shard);
        if with_moves {
            call.key(keys.moves);
        }
        call
    }

    // ---- SKUs ---------------------------------------------------------------------------

    /// Loads `sku` with `spec`, or replaces it if it has never recorded a hold, sale or
    /// barrier. A live SKU is refused with [`StoreError::SkuLive`] before anything changes.
    pub async fn load(&self, sku: &Sku, spec: &SkuSpec) -> Result<Loaded, StoreError> {
        spec.validate()?;
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

    /// Writes a SKU's routing record (shard count and rules) and registers the SKU.
    async fn write_meta(&self, config: &SkuConfig) -> Result<(), StoreError> {
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
            .sadd(self.inner.keys.registry(), config.sku.as_str())
            .exec_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Whether any of the first `shards` shards has recorded a hold, sale or barrier, or
    /// has a stock move in flight.
    async fn any_shard_live(&self, sku: &Sku, shards: u16) -> Result<bool, StoreError> {
        if shards == 0 {
            return Ok(false);
        }
        let mut pipe = redis::pipe();
        for shard in 0..shards {
            let keys = self.shard_keys(sku, shard);
            pipe.hmget(&keys.hash, &[":made", ":held", ":sold"])
                .hlen(&keys.moves);
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.connection()).await?;
        let mut replies = replies.into_iter();
        while let (Some(counters), Some(moves)) = (replies.next(), replies.next()) {
            let counters: Vec<Option<u64>> = parse(counters)?;
            let moves: u64 = parse(moves)?;
            if moves > 0 || counters.iter().any(|c| c.unwrap_or(0) > 0) {
                return Ok(true);
            }
        }
        Ok(false)
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
            self.forget(sku);
            return Ok(None);
        };
        let config = Arc::new(config);
        self.inner
            .configs
            .write()
            .insert(sku.clone(), config.clone());
        Ok(Some(config))
    }

    fn forget(&self, sku: &Sku) {
        self.inner.configs.write().remove(sku);
    }

    /// This Redis's run id (new at every restart) and the run id the engines last checked
    /// against the ledger, if any.
    pub async fn redis_identity(&self) -> Result<(String, Option<String>), StoreError> {
        let (info, marker): (String, Option<String>) = redis::pipe()
            .cmd("INFO")
            .arg("server")
            .get(self.inner.keys.identity())
            .query_async(&mut self.connection())
            .await?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| StoreError::Protocol("INFO server has no run_id".into()))?;
        Ok((run_id, marker))
    }

    /// Records that this Redis (by run id) was checked against the ledger.
    pub async fn mark_identity(&self, run_id: &str) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.inner.keys.identity())
            .arg(run_id)
            .exec_async(&mut self.connection())
            .await?;
        Ok(())
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
        let mut conn = self.connection();
        'route: for _ in 0..MAX_RESERVE_ROUNDS {
            let config = self.config(sku).await?;
            for (shard, units) in (0..config.shards).zip(split(quantity, config.shards)) {
                if units == 0 {
                    continue;
                }
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
                        self.forget(sku);
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

    /// A SKU's units summed over its shards. On a single Redis the shards are read in one
    /// `MULTI`, so the figures are one instant's and conservation holds exactly.
    pub async fn totals(&self, sku: &Sku) -> Result<Totals, StoreError> {
        let config = self.config(sku).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for shard in 0..config.ever_shards {
            pipe.hmget(
                self.shard_keys(sku, shard).hash,
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
            .hexists(self.shard_keys(sku, shard).hash, ":fence");
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.connection()).await?;
        let mut shards = Vec::with_capacity(usize::from(config.ever_shards));
        let mut fenced = false;
        let mut replies = replies.into_iter();
        while let (Some(counters), Some(fence)) = (replies.next(), replies.next()) {
            shards.push(parse::<Vec<Option<u64>>>(counters)?);
            fenced |= parse::<bool>(fence)?;
        }
        let mut totals = Totals::default();
        let (mut moved_in, mut moved_out) = (0, 0);
        for counters in shards {
            let c = |i: usize| counters.get(i).copied().flatten().unwrap_or(0);
            totals.available += c(0);
            totals.held += c(1);
            totals.sold += c(2);
            totals.loaded += c(3);
            totals.restocked += c(4);
            moved_in += c(5);
            moved_out += c(6);
        }
        totals.in_transit = moved_out.saturating_sub(moved_in);
        totals.fenced = fenced;
        Ok(totals)
    }

    // ---- reservations -------------------------------------------------------------------

    /// The Try: holds `request.quantity` units for the user until the SKU's hold time has
    /// passed. The same key with the same quantity returns the original reservation
    /// (`replayed`); a refusal says why. Sold out means that no shard of the SKU had the
    /// units when this reserve last looked, after completing moves in flight and
    /// returning expired holds.
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<Reserved, StoreError> {
        let mut config = self.config(&request.sku).await?;
        if request.quantity == 0 || request.quantity > config.per_user_limit {
            return Err(StoreError::InvalidQuantity(QuantityBound::PerUser(
                config.per_user_limit,
            )));
        }
        for _ in 0..MAX_RESERVE_ROUNDS {
            let shard = home_shard(&request.user, config.shards);
            let id = ReservationId::generate(&request.sku, shard);
            let (now, reply) = self
                .reserve_coalesced(shard, config.shards, id, request)
                .await?;
            self.observe_redis_time(now);
            let code = StoreError::from_raw(reply.0)?;
            match code {
                ScriptCode::Ok | ScriptCode::Replayed => {
                    let (_, rid, state, qty, deadline) = reply;
                    let raw = (
                        0,
                        rid,
                        state,
                        request.user.to_string(),
                        qty,
                        deadline,
                        request.key.to_string(),
                    );
                    return Ok(Reserved {
                        reservation: reservation_from(&request.sku, raw, now)?,
                        replayed: code == ScriptCode::Replayed,
                    });
                }
                ScriptCode::DuplicateId => continue,
                // The SKU was replaced with another shard count since this engine read it:
                // the user's home shard may be another one now.
                ScriptCode::StaleRoute => {
                    config = self
                        .reload_config(&request.sku)
                        .await?
                        .ok_or(StoreError::UnknownSku)?;
                }
                ScriptCode::ShardEmpty => {
                    match self.refill(&config, shard, request.quantity).await? {
                        Refill::Ready => {}
                        Refill::Short { available: 0 } => return Err(StoreError::SoldOut),
                        Refill::Short { .. } => return Err(StoreError::InsufficientStock),
                    }
                }
                ScriptCode::NoSku => {
                    self.forget(&request.sku);
                    return Err(StoreError::UnknownSku);
                }
                ScriptCode::BadQty => {
                    // The limit changed in Redis since this engine cached it: name the
                    // new one.
                    self.forget(&request.sku);
                    let limit = self.config(&request.sku).await?.per_user_limit;
                    return Err(StoreError::InvalidQuantity(QuantityBound::PerUser(limit)));
                }
                other => return Err(StoreError::from_code(other)),
            }
        }
        Err(StoreError::Contended)
    }

    /// One call of `reserve.lua` for requests that all live in `shard` of one SKU.
    /// Returns Redis's time, the shard's available units after the call, and a reply per
    /// request in order.
    pub async fn reserve_batch(
        &self,
        shard: u16,
        shards: u16,
        requests: &[(&ReservationId, &ReserveRequest)],
    ) -> Result<(u64, i64, Vec<RawReserve>), StoreError> {
        let Some((_, first)) = requests.first() else {
            return Ok((0, 0, Vec::new()));
        };
        let mut call = self.invocation(&self.inner.scripts.reserve, &first.sku, shard, false);
        call.arg(shards).arg(requests.len());
        for (id, request) in requests {
            debug_assert_eq!(request.sku, first.sku, "one batch, one SKU");
            call.arg(id.as_str())
                .arg(request.user.as_str())
                .arg(request.quantity)
                .arg(request.key.as_str())
                .arg(format!("{}:{}", request.user, request.key));
        }
        let reply: Vec<Value> = call.invoke_async(&mut self.connection()).await?;
        let bad = || StoreError::Protocol("unexpected reserve reply".into());
        let mut parts = reply.into_iter();
        let (Some(now), Some(avail), Some(replies)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (now, avail): (u64, i64) = (parse(now)?, parse(avail)?);
        let replies = match parts.next() {
            // The fast path: a code per request, one deadline for every new hold.
            Some(deadline) => {
                let deadline: u64 = parse(deadline)?;
                let codes: Vec<i64> = parse(replies)?;
                if codes.len() != requests.len() {
                    return Err(bad());
                }
                codes
                    .into_iter()
                    .zip(requests)
                    .map(|(code, (id, request))| {
                        if code == ScriptCode::Ok as i64 {
                            (
                                code,
                                id.to_string(),
                                "h".to_owned(),
                                u64::from(request.quantity),
                                deadline,
                            )
                        } else {
                            (code, String::new(), String::new(), 0, 0)
                        }
                    })
                    .collect()
            }
            None => parse(replies)?,
        };
        Ok((now, avail, replies))
    }

    /// The Confirm: turns a hold into a sale. Idempotent. A hold past its deadline is
    /// confirmed if its units can be taken again (from its shard, or moved there from
    /// another); otherwise [`StoreError::Expired`].
    pub async fn confirm(&self, id: &ReservationId) -> Result<Reservation, StoreError> {
        for _ in 0..MAX_RESERVE_ROUNDS {
            let (now, _, reply, reason): (u64, i64, RawHold, String) = self
                .invocation(&self.inner.scripts.confirm, id.sku(), id.shard(), false)
                .arg(id.as_str())
                .invoke_async(&mut self.connection())
                .await?;
            self.observe_redis_time(now);
            match StoreError::from_raw(reply.0)? {
                ScriptCode::Ok | ScriptCode::Replayed => {
                    return reservation_from(id.sku(), reply, now)
                }
                ScriptCode::NoSku | ScriptCode::NotFound => return Err(StoreError::NotFound),
                ScriptCode::Expired if reason == "limit" => {
                    return Err(StoreError::Expired(ExpiredBecause::Limit))
                }
                ScriptCode::Expired => {
                    let config = self.config(id.sku()).await?;
                    let need = u32::try_from(reply.4).unwrap_or(u32::MAX);
                    if self.refill(&config, id.shard(), need).await? != Refill::Ready {
                        return Err(StoreError::Expired(ExpiredBecause::Stock));
                    }
                }
                other => return Err(StoreError::from_code(other)),
            }
        }
        Err(StoreError::Contended)
    }

    /// The Cancel: returns a hold's units. Idempotent; a hold found past its deadline comes
    /// back [`HoldState::Expired`]; a confirmed one is refused.
    pub async fn cancel(&self, id: &ReservationId) -> Result<Reservation, StoreError> {
        let (now, _, reply): (u64, i64, RawHold) = self
            .invocation(&self.inner.scripts.cancel, id.sku(), id.shard(), false)
            .arg(id.as_str())
            .invoke_async(&mut self.connection())
            .await?;
        match StoreError::from_raw(reply.0)? {
            ScriptCode::Ok => {
                self.units_returned(id.sku());
                reservation_from(id.sku(), reply, now)
            }
            ScriptCode::Replayed => reservation_from(id.sku(), reply, now),
            ScriptCode::NoSku | ScriptCode::NotFound => Err(StoreError::NotFound),
            other => Err(StoreError::from_code(other)),
        }
    }

    /// The Cancel by idempotency key. Cancels the reservation the key made, if any;
    /// otherwise records a barrier so that a reserve arriving later with the key is
    /// refused. Returns the reservation when there was one.
    pub async fn cancel_by_key(
        &self,
        sku: &Sku,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Option<Reservation>, StoreError> {
        let mut config = self.config(sku).await?;
        let mut rounds = 0;
        let (now, reply) = loop {
            let shard = home_shard(user, config.shards);
            let (now, _, reply): (u64, i64, RawHold) = self
                .invocation(&self.inner.scripts.cancel_by_key, sku, shard, false)
                .arg(user.as_str())
                .arg(key.as_str())
                .arg(config.shards)
                .invoke_async(&mut self.connection())
                .await?;
            rounds += 1;
            if StoreError::from_raw(reply.0)? != ScriptCode::StaleRoute {
                break (now, reply);
            }
            if rounds == MAX_RESERVE_ROUNDS {
                return Err(StoreError::Contended);
            }
            config = self
                .reload_config(sku)
                .await?
                .ok_or(StoreError::UnknownSku)?;
        };
        match StoreError::from_raw(reply.0)? {
            ScriptCode::Ok | ScriptCode::Replayed if reply.1.is_empty() => Ok(None),
            ScriptCode::Ok => {
                self.units_returned(sku);
                reservation_from(sku, reply, now).map(Some)
            }
            ScriptCode::Replayed => reservation_from(sku, reply, now).map(Some),
            ScriptCode::NoSku => {
                self.forget(sku);
                Err(StoreError::UnknownSku)
            }
            other => Err(StoreError::from_code(other)),
        }
    }

    /// Reads one reservation. A held hold past its deadline reads as expired.
    pub async fn reservation(&self, id: &ReservationId) -> Result<Reservation, StoreError> {
        let (time, packed): ((u64, u64), Option<String>) = redis::pipe()
            .cmd("TIME")
            .hget(self.shard_keys(id.sku(), id.shard()).hash, id.as_str())
            .query_async(&mut self.connection())
            .await?;
        let packed = packed.ok_or(StoreError::NotFound)?;
        let now = time.0 * 1000 + time.1 / 1000;
        // "<state>|<user>|<qty>|<deadline>|<key>", as lua/prelude.lua stores it.
        let mut parts = packed.splitn(5, '|');
        let mut next = || {
            parts
                .next()
                .ok_or_else(|| StoreError::Protocol(format!("bad hold record {packed:?}")))
        };
        let (state, user, qty, deadline, key) = (next()?, next()?, next()?, next()?, next()?);
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| StoreError::Protocol(format!("bad number {s:?}")))
        };
        let raw: RawHold = (
            ScriptCode::Ok as i64,
            id.to_string(),
            state.to_owned(),
            user.to_owned(),
            number(qty)?,
            number(deadline)?,
            key.to_owned(),
        );
        reservation_from(id.sku(), raw, now)
    }

    /// Every `<user>:<key>` the SKU has recorded, a reservation's or a barrier's. The
    /// admission layer loads them when a SKU closes (sold out, ended), so that a client
    /// retrying a reserve that did succeed gets its reservation back, not a refusal.
    pub async fn recorded_keys(
        &self,
        sku: &Sku,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let config = self.config(sku).await?;
        let mut keys = std::collections::HashSet::new();
        let mut conn = self.connection();
        for shard in 0..config.ever_shards {
            let hash = self.shard_keys(sku, shard).hash;
            let mut cursor = 0u64;
            loop {
                // Key records are the only fields that start with an id character and
                // contain ':' (counters start with ':', holds contain '~' instead).
                let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&hash)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("[^:]*:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                keys.extend(fields.into_iter().map(|(field, _)| field));
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys)
    }

    /// Expires the holds of `sku` whose deadline has passed, oldest first, at most
    /// `max_per_shard` index entries per shard.
    pub async fn sweep(&self, sku: &Sku, max_per_shard: u32) -> Result<SweepReport, StoreError> {
        let config = self.config(sku).await?;
        let mut report = SweepReport::default();
        for shard in 0..config.ever_shards {
            let shard_report = self.sweep_shard(sku, shard, max_per_shard).await?;
            report.expired += shard_report.expired;
            report.more |= shard_report.more;
        }
        if report.expired > 0 {
            self.units_returned(sku);
        }
        Ok(report)
    }

    async fn sweep_shard(
        &self,
        sku: &Sku,
        shard: u16,
        max: u32,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let mut left = max;
        while left > 0 {
            let batch = left.min(SWEEP_BATCH);
            let (_, _, expired, more, code): (u64, i64, u64, u8, i64) = self
                .invocation(&self.inner.scripts.sweep, sku, shard, false)
                .arg(batch)
                .invoke_async(&mut self.connection())
                .await?;
            if StoreError::from_raw(code)? == ScriptCode::Fenced {
                return Err(StoreError::Recovering);
            }
            report.expired += expired;
            report.more = more == 1;
            left -= batch;
            if !report.more {
                break;
            }
        }
        Ok(report)
    }
}

fn local_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds a reservation from a script's reply about it.
fn reservation_from(sku: &Sku, raw: RawHold, now_ms: u64) -> Result<Reservation, StoreError> {
    let (_, rid, state, user, qty, deadline, key) = raw;
    let bad = |what: &str| StoreError::Protocol(format!("bad {what} in reply for {rid:?}"));
    let id = ReservationId::parse(&rid).map_err(|_| bad("id"))?;
    if id.sku() != sku {
        return Err(bad("sku"));
    }
    Ok(Reservation {
        state: HoldState::decode(&state, deadline, now_ms).ok_or_else(|| bad("state"))?,
        user: UserId::new(user).map_err(|_| bad("user"))?,
        quantity: u32::try_from(qty).map_err(|_| bad("quantity"))?,
        deadline_ms: deadline,
        key: IdempotencyKey::new(key).map_err(|_| bad("key"))?,
        id,
    })
}
