//! The reconciler: settles every event of the shard streams into the SQL ledger, once.
//!
//! One consumer group (`ledger`) per shard stream. On a single Redis the streams are read
//! with one `XREADGROUP BLOCK` over all of them, on a connection of the reconciler's own (a
//! blocking read must not sit on the multiplexed hot-path connection: every call behind it
//! would wait). On a Redis Cluster each stream lives in its own slot, so each is read by
//! its own `XREADGROUP`, all of them at once, without `BLOCK` (a cluster connection is
//! multiplexed per node, so a blocking read would stall the other streams of its node): a
//! round that finds nothing waits [`IDLE_POLL`] before the next. Claims, acknowledgements
//! and trims go stream by stream on either topology. Each batch is written in one SQL transaction and acknowledged (`XACK`) only
//! after the commit: a crash before the ack leaves the entries pending, and they come back,
//! to this consumer on restart or to another through `XAUTOCLAIM` once idle, and are applied
//! again without effect (the ledger keys every event by its stream position).
//!
//! Several reconcilers may run at once: the group hands each entry to one of them. Streams
//! are trimmed only below what every group of the stream has acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rand::Rng;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamInfoGroupsReply,
    StreamReadReply,
};
use redis::{RedisError, Value};
use tokio::sync::{watch, OnceCell};

use crate::events::Entry;
use crate::ledger::{Applied, Ledger, LedgerError, LedgerRepo};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::topology::Resending;

/// The consumer group every reconciler joins.
pub const GROUP: &str = "ledger";

/// On a cluster, how long a read round that found nothing waits before the next: the
/// settling delay a quiet stream adds, for one non-blocking read per stream per round.
pub const IDLE_POLL: Duration = Duration::from_millis(20);

/// [`ReconcileOptions::gather`] by default, ms.
pub const DEFAULT_GATHER_MS: u64 = 20;

/// How the reconciler reads.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// This reconciler's consumer name; unique among running reconcilers.
    pub consumer: String,
    /// Entries read per stream and call.
    pub batch: usize,
    /// How long one read waits for new entries.
    pub block: Duration,
    /// Entries pending this long with another consumer (crashed, or stuck) are claimed.
    pub claim_idle: Duration,
    /// After a read that found less than a full batch, how long to let entries gather
    /// before the next read. Each turn costs the same whatever it carries (an epoch read, a
    /// transaction and its fsync, an `XACK` per stream), so under load a reconciler that
    /// reads the moment it has settled settles a few events per transaction; waiting this
    /// long lets each carry what arrived meanwhile, and delays the ledger by as much.
    pub gather: Duration,
    /// How often streams are trimmed, lag is measured, and new streams are looked for.
    pub housekeeping: Duration,
}

impl ReconcileOptions {
    /// Defaults, with a consumer name unique to this process.
    pub fn new() -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".to_owned());
        Self {
            consumer: format!(
                "{host}-{}-{}",
                std::process::id(),
                crate::ids::random_token()
            ),
            batch: 500,
            // Below the connection's response timeout, so a quiet stream is not an error.
            block: Duration::from_millis(200),
            claim_idle: Duration::from_secs(10),
            gather: Duration::from_millis(DEFAULT_GATHER_MS),
            housekeeping: Duration::from_secs(1),
        }
    }
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a turn failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The store failed (listing SKUs).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger failed; the batch was not acknowledged.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What one turn did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// Entries read.
    pub entries: u64,
    /// What the ledger made of them.
    pub applied: Applied,
}

/// Unsettled work over all streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Entries not delivered yet.
    pub undelivered: u64,
    /// Redis time of the oldest unsettled entry, ms since the epoch.
    pub oldest_ms: Option<u64>,
    /// Entries pending or undelivered, stream by stream (every stream looked at).
    pub streams: Vec<StreamBacklog>,
}

/// The unsettled entries of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBacklog {
    /// The stream's key.
    pub key: String,
    /// Entries delivered and not acknowledged, or not delivered yet.
    pub entries: u64,
}

impl Backlog {
    /// Whether everything written so far is settled.
    pub fn is_empty(&self) -> bool {
        self.pending == 0 && self.undelivered == 0
    }
}

/// The reconciler's own connections, never the store's hot-path one.
#[derive(Clone)]
struct Links {
    /// Blocking reads (single Redis): nothing else waits behind them.
    reader: Resending,
    /// Everything else: group creation, claims, acknowledgements, trims, backlog reads.
    commands: Resending,
}

/// A reconciler: a stream reader and a ledger writer.
pub struct Reconciler {
    store: Store,
    /// Connected on first use.
    links: OnceCell<Links>,
    ledger: Ledger,
    options: ReconcileOptions,
    metrics: Option<Arc<Metrics>>,
    /// Stream key -> whether its group exists (created on first sight).
    streams: parking_lot::Mutex<Vec<String>>,
    /// Read this consumer's own pending entries first (after a start or an error).
    recovering: std::sync::atomic::AtomicBool,
}

fn position(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

/// A read's entries, each with its stream.
fn flatten(reply: Option<StreamReadReply>) -> Vec<(String, StreamId)> {
    reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|k| {
            let key = k.key;
            k.ids.into_iter().map(move |id| (key.clone(), id))
        })
        .collect()
}

fn entry_of(stream: &str, id: &StreamId) -> Option<Entry> {
    let fields: HashMap<String, String> = id
        .map
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), redis::from_redis_value_ref::<String>(v).ok()?)))
        .collect();
    match Entry::parse(&id.id, &fields) {
        Ok(entry) => Some(entry),
        Err(error) => {
            // Scripts never write such an entry; it is acknowledged so it cannot block the
            // stream, and reported so the audit's drift report can be read with it in mind.
            tracing::error!(%error, stream, "malformed stream entry skipped");
            None
        }
    }
}

/// Whether a stream command failed because its stream (or the group on it) is gone: a
/// retirement purged it, or a restarted Redis lost it. `UNBLOCKED` is what a blocked
/// `XREADGROUP` gets when its stream is deleted under it.
fn stream_gone(error: &RedisError) -> bool {
    matches!(error.code(), Some("NOGROUP") | Some("UNBLOCKED"))
}

impl Reconciler {
    /// A reconciler reading the streams `store` writes, on connections of its own to the
    /// same Redis (or cluster), made on first use.
    pub fn new(
        store: Store,
        ledger: Ledger,
        options: ReconcileOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            store,
            links: OnceCell::new(),
            ledger,
            options,
            metrics,
            streams: parking_lot::Mutex::new(Vec::new()),
            recovering: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// A reconciler with default options on the Redis `store` talks to: what a repair
    /// drains with when it was given none.
    pub fn for_store(store: &Store, ledger: &Ledger) -> Self {
        Self::new(store.clone(), ledger.clone(), ReconcileOptions::new(), None)
    }

    async fn links(&self) -> Result<Links, ReconcileError> {
        let links = self
            .links
            .get_or_try_init(|| async {
                let target = self.store.target();
                let commands = target.connect(Duration::from_secs(5)).await?;
                let reader = if target.is_cluster() {
                    commands.clone()
                } else {
                    // Answers come up to one block late, by design.
                    target
                        .connect(self.options.block + Duration::from_secs(5))
                        .await?
                };
                Ok::<_, RedisError>(Links {
                    reader: Resending(reader),
                    commands: Resending(commands),
                })
            })
            .await?;
        Ok(links.clone())
    }

    async fn commands(&self) -> Result<Resending, ReconcileError> {
        Ok(self.links().await?.commands)
    }

    /// The store it reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The ledger it writes.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Finds every shard stream of every SKU and makes sure the group exists on it.
    pub async fn discover(&self) -> Result<Vec<String>, ReconcileError> {
        let mut found = Vec::new();
        // Only SKUs still in the set: a retired SKU's streams are gone, and so is its work.
        let mut wanted = Vec::new();
        for sku in self.store.skus().await? {
            let Some(config) = self.store.reload_config(&sku).await? else {
                continue;
            };
            // Every shard the SKU ever had: a replace with fewer shards writes the last
            // events of the ones it drops.
            for shard in 0..config.ever_shards {
                wanted.push(self.store.keys().shard(&sku, shard).events);
            }
        }
        // Read after the SKUs: a discovery running beside this one may have cleared it.
        let known = self.streams.lock().clone();
        // A stream is never made here, only its group: a stream a retirement purged stays
        // gone (a discovery that listed its SKU just before the purge finds no stream), and
        // every stream a SKU writes to exists from its load on. A group made at `0` later
        // misses nothing: no stream is trimmed before every group has read it.
        for key in wanted {
            if known.contains(&key) || self.ensure_group_if_present(&key).await? {
                found.push(key);
            }
        }
        *self.streams.lock() = found.clone();
        Ok(found)
    }

    /// Makes sure the group exists on each of `streams` (and the stream itself).
    async fn ensure_groups(&self, streams: &[String]) -> Result<(), ReconcileError> {
        let mut conn = self.commands().await?;
        for key in streams {
            let created: Result<(), RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Makes sure the group exists on `key` if the stream does; returns whether it does.
    async fn ensure_group_if_present(&self, key: &str) -> Result<bool, ReconcileError> {
        let mut conn = self.commands().await?;
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(true),
            // "The XGROUP subcommand requires the key to exist": purged.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Settles every entry of `streams`, delivered to any consumer or not, until none is
    /// left or `within` has passed; returns whether none is left. A repair calls it on the
    /// streams of a SKU it fenced, so "none left" is final. Entries another consumer holds
    /// are claimed at once: applying an entry again changes nothing.
    pub async fn drain_streams(
        &self,
        streams: &[String],
        within: Duration,
    ) -> Result<bool, ReconcileError> {
        let started = Instant::now();
        self.ensure_groups(streams).await?;
        loop {
            for key in streams {
                let mut start = "0-0".to_owned();
                loop {
                    let (_, next) = self.claim(key, Duration::ZERO, &start).await?;
                    if next == "0-0" {
                        break;
                    }
                    start = next;
                }
            }
            let epoch = self.ledger.epoch().await?;
            let batch = self.read_group(streams, None, ">").await?;
            self.settle(batch, epoch).await?;
            if self.backlog_of(streams).await?.is_empty() {
                return Ok(true);
            }
            if started.elapsed() > within {
                return Ok(false);
            }
        }
    }

    /// One turn: reads a batch (this consumer's pending entries first, then new ones),
    /// applies it in one transaction, acknowledges it.
    pub async fn turn(&self) -> Result<Turn, ReconcileError> {
        let streams = self.streams.lock().clone();
        if streams.is_empty() {
            tokio::time::sleep(self.options.block).await;
            return Ok(Turn::default());
        }
        let recovering = self.recovering.load(std::sync::atomic::Ordering::Relaxed);
        let epoch = self.ledger.epoch().await?;
        let read = if recovering {
            self.read_group(&streams, None, "0").await
        } else {
            self.read_group(&streams, Some(self.options.block), ">")
                .await
        };
        let batch = match read {
            Ok(batch) => batch,
            Err(ReconcileError::Redis(error)) => {
                if stream_gone(&error) {
                    // The stream was purged by a retirement, or recreated (Redis restarted,
                    // or a shard was restored): discover again (which makes the group where
                    // the stream is wanted) and go on; no error, no back-off.
                    tracing::debug!(%error, "a stream went away; discovering again");
                    self.streams.lock().clear();
                    self.discover().await?;
                    return Ok(Turn::default());
                }
                return Err(error.into());
            }
            Err(error) => return Err(error),
        };
        if recovering && batch.is_empty() {
            self.recovering
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        self.settle(batch, epoch).await
    }

    /// Reads `streams` from `from` (`>`: new entries; `0`: this consumer's pending ones),
    /// waiting up to `block` for new ones if given: one `XREADGROUP` over every stream on a
    /// single Redis, one per stream on a cluster.
    async fn read_group(
        &self,
        streams: &[String],
        block: Option<Duration>,
        from: &str,
    ) -> Result<Vec<(String, StreamId)>, ReconcileError> {
        let links = self.links().await?;
        if !links.reader.0.is_cluster() {
            let mut reader = links.reader;
            let command = self.read_command(streams, block, from);
            let reply: Option<StreamReadReply> = command.query_async(&mut reader).await?;
            return Ok(flatten(reply));
        }
        let reads = streams.iter().map(|key| {
            let mut conn = links.reader.clone();
            let command = self.read_command(std::slice::from_ref(key), None, from);
            async move {
                command
                    .query_async::<Option<StreamReadReply>>(&mut conn)
                    .await
            }
        });
        let batch: Vec<(String, StreamId)> = try_join_all(reads)
            .await?
            .into_iter()
            .flat_map(flatten)
            .collect();
        if batch.is_empty() {
            if let Some(block) = block {
                tokio::time::sleep(block.min(IDLE_POLL)).await;
            }
        }
        Ok(batch)
    }

    fn read_command(&self, streams: &[String], block: Option<Duration>, from: &str) -> redis::Cmd {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg("COUNT")
            .arg(self.options.batch);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(streams);
        for _ in streams {
            command.arg(from);
        }
        command
    }

    /// Claims up to a batch of the entries of `key` pending for at least `min_idle` with any
    /// consumer, from `start`, and settles them. Returns what that did and where the next
    /// claim starts (`0-0`: the stream's pending list was gone through).
    async fn claim(
        &self,
        key: &str,
        min_idle: Duration,
        start: &str,
    ) -> Result<(Turn, String), ReconcileError> {
        let epoch = self.ledger.epoch().await?;
        let mut conn = self.commands().await?;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(key)
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(start)
            .arg("COUNT")
            .arg(self.options.batch)
            .query_async(&mut conn)
            .await?;
        drop(conn);
        let batch = reply
            .claimed
            .into_iter()
            .map(|id| (key.to_owned(), id))
            .collect();
        Ok((self.settle(batch, epoch).await?, reply.next_stream_id))
    }

    /// Claims entries that another consumer left pending for longer than `claim_idle` and
    /// settles them.
    pub async fn claim_abandoned(&self) -> Result<Turn, ReconcileError> {
        let streams = self.streams.lock().clone();
        let mut total = Turn::default();
        for key in streams {
            let (turn, _) = match self.claim(&key, self.options.claim_idle, "0-0").await {
                // Purged by a retirement since the last discovery.
                Err(ReconcileError::Redis(e)) if stream_gone(&e) => continue,
                other => other?,
            };
            total.entries += turn.entries;
            total.applied.applied += turn.applied.applied;
            total.applied.duplicates += turn.applied.duplicates;
        }
        Ok(total)
    }

    /// Applies read entries and acknowledges them after the commit, if no repair began
    /// since they were read (the ledger's epoch is still `epoch`): a batch read before a
    /// repair may come from data Redis lost since, and applied after the repair rebuilt Redis
    /// it would count what Redis no longer holds. Such a batch stays pending, and whatever
    /// of it Redis still has is read again.
    async fn settle(
        &self,
        batch: Vec<(String, StreamId)>,
        epoch: u64,
    ) -> Result<Turn, ReconcileError> {
        if batch.is_empty() {
            return Ok(Turn::default());
        }
        let entries: Vec<Entry> = batch
            .iter()
            .filter_map(|(key, id)| entry_of(key, id))
            .collect();
        let applied = match self.ledger.apply_read_at(&entries, epoch).await {
            Ok(applied) => applied,
            Err(LedgerError::Superseded) => {
                self.recovering
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(Turn::default());
            }
            Err(error) => {
                // Not acknowledged: the entries stay pending and are read again.
                self.recovering
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(error.into());
            }
        };
        let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
        for (key, id) in &batch {
            by_stream.entry(key).or_default().push(&id.id);
        }
        // One XACK per stream, all at once: each stream is its own slot on a cluster.
        let conn = self.commands().await?;
        try_join_all(by_stream.into_iter().map(|(key, ids)| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("XACK")
                    .arg(key)
                    .arg(GROUP)
                    .arg(ids)
                    .exec_async(&mut conn)
                    .await
            }
        }))
        .await?;
        if let Some(metrics) = &self.metrics {
            metrics.reconciler_batches.inc();
            metrics.reconciler_events.inc_by(applied.applied);
            metrics.reconciler_duplicates.inc_by(applied.duplicates);
        }
        Ok(Turn {
            entries: batch.len() as u64,
            applied,
        })
    }

    /// What is not settled yet, over every stream.
    pub async fn backlog(&self) -> Result<Backlog, ReconcileError> {
        let streams = self.streams.lock().clone();
        self.backlog_of(&streams).await
    }

    /// What is not settled yet of `streams`.
    async fn backlog_of(&self, streams: &[String]) -> Result<Backlog, ReconcileError> {
        let mut conn = self.commands().await?;
        let mut backlog = Backlog::default();
        let mut oldest = |id: &str| {
            let (ms, _) = position(id);
            backlog.oldest_ms = Some(backlog.oldest_ms.map_or(ms, |o| o.min(ms)));
        };
        let mut pending = 0u64;
        let mut undelivered = 0u64;
        let mut found = Vec::with_capacity(streams.len());
        for key in streams {
            let mut command = redis::cmd("XINFO");
            command.arg("GROUPS").arg(key);
            let Some(groups): Option<StreamInfoGroupsReply> =
                unless_gone(command.query_async(&mut conn).await)?
            else {
                continue;
            };
            let Some(group) = groups.groups.iter().find(|g| g.name == GROUP) else {
                continue;
            };
            pending += group.pending as u64;
            let mut entries = group.pending as u64;
            if group.pending > 0 {
                let summary: (u64, Option<String>, Value, Value) = redis::cmd("XPENDING")
                    .arg(key)
                    .arg(GROUP)
                    .query_async(&mut conn)
                    .await?;
                if let Some(first) = summary.1 {
                    oldest(&first);
                }
            }
            let next: StreamReadReply = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(key)
                .arg(&group.last_delivered_id)
                .query_async::<Option<StreamReadReply>>(&mut conn)
                .await?
                .unwrap_or_default();
            if let Some(first) = next.keys.first().and_then(|k| k.ids.first()) {
                oldest(&first.id);
                let lag = group.lag.map_or(1, |lag| lag as u64).max(1);
                undelivered += lag;
                entries += lag;
            }
            found.push(StreamBacklog {
                key: key.clone(),
                entries,
            });
        }
        backlog.pending = pending;
        backlog.undelivered = undelivered;
        backlog.streams = found;
        Ok(backlog)
    }

    /// Trims each stream below what every one of its groups has acknowledged.
    pub async fn trim(&self) -> Result<u64, ReconcileError> {
        let streams = self.streams.lock().clone();
        let mut conn = self.commands().await?;
        let mut trimmed = 0;
        for key in &streams {
            let groups: StreamInfoGroupsReply = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(key)
                .query_async(&mut conn)
                .await
            {
                Ok(groups) => groups,
                // Purged by a retirement since the last discovery.
                Err(e)
                    if e.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let mut floor: Option<(u64, u64)> = None;
            for group in &groups.groups {
                // A group's safe point: its oldest pending entry, or else everything up to
                // what it has been delivered.
                let safe = if group.pending > 0 {
                    let summary: (u64, Option<String>, Value, Value) = redis::cmd("XPENDING")
                        .arg(key)
                        .arg(&group.name)
                        .query_async(&mut conn)
                        .await?;
                    summary.1.map_or((0, 0), |id| position(&id))
                } else {
                    position(&group.last_delivered_id)
                };
                floor = Some(floor.map_or(safe, |f| f.min(safe)));
            }
            let Some((ms, seq)) = floor else { continue };
            if (ms, seq) == (0, 0) {
                continue;
            }
            let removed: u64 = redis::cmd("XTRIM")
                .arg(key)
                .arg("MINID")
                .arg(format!("{ms}-{seq}"))
                .query_async(&mut conn)
                .await?;
            trimmed += removed;
        }
        Ok(trimmed)
    }

    /// Settles until nothing is pending or undelivered, or `within` has passed. Returns
    /// whether everything was settled.
    pub async fn drain(&self, within: Duration) -> Result<bool, ReconcileError> {
        let started = Instant::now();
        self.discover().await?;
        loop {
            match self.turn().await {
                // A stream recreated under us (Redis restarted or a shard was restored):
                // make its group again and go on.
                Err(ReconcileError::Redis(e)) if e.code() == Some("NOGROUP") => {
                    self.discover().await?;
                    continue;
                }
                other => {
                    other?;
                }
            }
            self.claim_abandoned().await?;
            if self.backlog().await?.is_empty() {
                return Ok(true);
            }
            if started.elapsed() > within {
                return Ok(false);
            }
        }
    }

    /// Finds new streams, publishes the backlog and lag, and returns the backlog. Needs
    /// only Redis, so it keeps reporting while the database is down, which is exactly when
    /// the lag grows.
    pub async fn measure(&self) -> Result<Backlog, ReconcileError> {
        self.discover().await?;
        let backlog = self.backlog().await?;
        if let Some(metrics) = &self.metrics {
            let now = self.store.redis_now_ms();
            let lag = backlog
                .oldest_ms
                .map_or(0.0, |oldest| now.saturating_sub(oldest) as f64 / 1000.0);
            metrics.reconciler_lag.set(lag);
            metrics
                .reconciler_pending
                .set((backlog.pending + backlog.undelivered) as i64);
        }
        Ok(backlog)
    }

    async fn housekeeping(&self) -> Result<(), ReconcileError> {
        self.discover().await?;
        self.trim().await?;
        self.claim_abandoned().await?;
        self.remove_dead_consumers().await?;
        Ok(())
    }

    /// Removes from each stream's group the consumers that are dead: another's, no entry
    /// pending (whatever they held was claimed by [`Reconciler::claim_abandoned`]), idle for
    /// three claim periods. Every process start names a consumer; without this the groups
    /// would keep one per start forever. Returns how many were removed.
    pub async fn remove_dead_consumers(&self) -> Result<u64, ReconcileError> {
        let streams = self.streams.lock().clone();
        let mut conn = self.commands().await?;
        let idle = (self.options.claim_idle * 3).as_millis() as usize;
        let mut removed = 0;
        for key in &streams {
            let mut command = redis::cmd("XINFO");
            command.arg("CONSUMERS").arg(key).arg(GROUP);
            let Some(consumers): Option<StreamInfoConsumersReply> =
                unless_gone(command.query_async(&mut conn).await)?
            else {
                continue;
            };
            for consumer in consumers.consumers {
                if consumer.name == self.options.consumer
                    || consumer.pending > 0
                    || consumer.idle < idle
                {
                    continue;
                }
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(key)
                    .arg(GROUP)
                    .arg(&consumer.name)
                    .exec_async(&mut conn)
                    .await?;
                removed += 1;
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.reconciler_consumers_removed.inc_by(removed);
        }
        Ok(removed)
    }

    /// Runs until `shutdown` turns true: turns, with housekeeping every interval, and
    /// back-off with jitter while Redis or the database fails. The lag is not measured
    /// here: a turn stuck on a database that does not answer would stop it from being
    /// reported, which is exactly when it grows; an engine measures it in a task of its
    /// own ([`Reconciler::measure`], from `settlement.rs`).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_housekeeping: Option<Instant> = None;
        while !*shutdown.borrow() {
            let due = last_housekeeping.is_none_or(|t| t.elapsed() >= self.options.housekeeping);
            let result = async {
                if due {
                    self.housekeeping().await?;
                }
                self.turn().await
            }
            .await;
            if due {
                last_housekeeping = Some(Instant::now());
            }
            match result {
                Ok(turn) => {
                    backoff = Duration::from_millis(100);
                    // A short read means the reconciler keeps up: let the next one gather.
                    // (An empty one has waited in its blocking read already.)
                    let short = turn.entries > 0 && turn.entries < self.options.batch as u64;
                    if short && !self.options.gather.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(self.options.gather) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "reconciler turn failed");
                    if let Some(metrics) = &self.metrics {
                        metrics.reconciler_errors.inc();
                    }
                    let jitter = rand::rng().random_range(0.5..1.5);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A reply about one stream, or `None` when Redis answers that the stream (or its group) is
/// not there: a retired SKU's, purged between discovery and the call.
fn unless_gone<T>(reply: redis::RedisResult<T>) -> Result<Option<T>, ReconcileError> {
    match reply {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
