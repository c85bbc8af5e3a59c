//! The reservation store: a typed API over the Lua scripts, on one multiplexed connection.
//!
//! Stock changes only inside the scripts; this module routes each call to the shard that
//! owns it (a user's home shard, or the shard a reservation id names), turns script codes
//! into [`StoreError`]s, and moves stock between shards when a home shard runs dry
//! (`moves.rs`). One file per concern: SKUs and totals (`skus.rs`), reservations
//! (`reservations.rs`), the expiry sweep (`sweep.rs`), stock moves (`moves.rs`), the
//! repair protocol's primitives (`repair.rs`), the identity check's reads (`identity.rs`),
//! the reserve batcher (`batcher.rs`), the shard hash's record formats (`records.rs`), a
//! SKU's retirement (`retire.rs`).
//!
//! The hot path uses one multiplexed connection (see [`crate::topology`]): on a single
//! Redis a connection manager that pipelines concurrent calls and reconnects by itself (on
//! these machines it served about 2.5x the reserves of a pooled connection per request with
//! the same script), on a Redis Cluster one such connection per node. Every call touches
//! one hash slot: a script one shard's keys, a read one shard at a time.

mod batcher;
mod carts;
mod connection;
mod error;
mod identity;
mod moves;
mod records;
mod repair;
mod reservations;
mod retire;
mod skus;
mod sweep;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use redis::{FromRedisValue, RedisError, Value};

use crate::ids::Sku;
use crate::keys::{KeySpace, ShardKeys};
use crate::scripts::Scripts;
use crate::topology::{RedisConnection, RedisTarget};

pub use connection::StoreConnection;
pub use error::{ExpiredBecause, QuantityBound, StoreError};
pub use records::{hold_field, HoldRecord, KeyEntry, UserRecord, MAX_KEYS_PER_USER};
pub use repair::{RestoreOutcome, ShardImage, ShardRules, ShardSnapshot};
pub use retire::Retirement;
pub use types::{
    Cart, CartLine, CartLineRequest, CartOpened, CartRequest, CartState, HoldState, LineRefusal,
    Loaded, Reservation, ReserveRequest, Reserved, ShardUnits, SkuConfig, SkuSpec, SweepReport,
    Totals, TrackedByStore, MAX_CART_LINES, MAX_HOLD, MAX_PER_USER_LIMIT, MAX_STOCK,
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
    /// One Redis or a cluster's seeds.
    pub target: RedisTarget,
    /// Prefix of every key (`fs:` by default).
    pub prefix: String,
    /// How long a call may wait for Redis before it fails.
    pub timeout: Duration,
    /// Wait for replicas to have a confirm before answering it; `None` (the default) does
    /// not wait.
    pub confirm_wait: Option<ReplicaWait>,
}

/// `WAIT` after a write: the write is on `replicas` replicas, or `timeout` passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must have the write.
    pub replicas: u32,
    /// How long to wait for them at most.
    pub timeout: Duration,
}

impl StoreOptions {
    /// Options for `target` (one URL, or a [`RedisTarget`]), prefix `fs:`, one second
    /// timeout, no waiting for replicas.
    pub fn new(target: impl Into<RedisTarget>) -> Self {
        Self {
            target: target.into(),
            prefix: "fs:".to_owned(),
            timeout: Duration::from_secs(1),
            confirm_wait: None,
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
    conn: RedisConnection,
    /// Where Redis is, for the connections of the store's own readers (a repair's drain).
    target: RedisTarget,
    confirm_wait: Option<ReplicaWait>,
    /// Confirms answered before their replicas had them (see `wait_for_replicas`).
    confirms_short: std::sync::atomic::AtomicU64,
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
    /// Turns of the shards' reserve calls on a single Redis (see `batcher::CALLS_IN_FLIGHT`).
    /// `None` on a cluster: a master that stalls would hold the turns of all the others.
    reserve_turns: Option<tokio::sync::Semaphore>,
}

fn parse<T: FromRedisValue>(value: Value) -> Result<T, StoreError> {
    T::from_redis_value(value).map_err(|e| StoreError::Redis(RedisError::from(e)))
}

impl Store {
    /// Connects to Redis; scripts are loaded on first use.
    pub async fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let keys =
            KeySpace::new(&options.prefix).map_err(|e| StoreError::InvalidSpec(e.to_string()))?;
        let conn = options.target.connect(options.timeout).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                target: options.target.clone(),
                confirm_wait: options.confirm_wait,
                confirms_short: Default::default(),
                keys,
                scripts: Scripts::new(),
                configs: RwLock::new(HashMap::new()),
                refill_locks: Mutex::new(HashMap::new()),
                queues: RwLock::new(HashMap::new()),
                reserve_turns: (!options.target.is_cluster())
                    .then(|| tokio::sync::Semaphore::new(batcher::CALLS_IN_FLIGHT)),
                clock_offset_ms: AtomicI64::new(0),
                suspect: Arc::default(),
            }),
        })
    }

    /// The Redis (or cluster) the store was opened on.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// The key names this store uses.
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// A handle on the shared multiplexed connection.
    pub fn connection(&self) -> StoreConnection {
        StoreConnection {
            conn: self.inner.conn.clone(),
            suspect: self.inner.suspect.clone(),
        }
    }

    /// Whether a connection to Redis dropped since the last [`Store::trust_redis`]: the
    /// Redis answering now may be a restarted one that lost writes.
    pub fn redis_suspect(&self) -> bool {
        self.inner.suspect.load(Ordering::Acquire)
    }

    /// Refuses (`recovering`) while the store is suspect: a change admitted before a
    /// connection dropped must not reach the Redis that answers after it until that one is
    /// checked. A restarted Redis may have lost the record that makes a restock, a confirm
    /// or a cancel idempotent (its write was in the lost tail of the append-only file)
    /// while the ledger settled the first application: applying it again would make units
    /// from nothing, or settle a reservation twice. The client's retry, after the check,
    /// replays it. Only the restore of records, part of that check, runs before.
    pub(crate) fn trusted(&self) -> Result<(), StoreError> {
        if self.redis_suspect() {
            return Err(StoreError::Recovering);
        }
        Ok(())
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
}

fn local_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
