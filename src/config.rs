//! The commands' configuration: flags, each with an environment fallback. `RedisArgs` and
//! `LedgerArgs` are shared by `serve`, `reconcile` and `audit`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use crate::admission::{AdmissionConfig, Bucket};
use crate::callers::{ClientTokenError, ClientTokens, TokenEntries};
use crate::reconcile::ReconcileOptions;
use crate::registry::{RateSplit, RegistryOptions};
use crate::store::{ReplicaWait, StoreOptions};
use crate::topology::{RedisTarget, TargetError};

/// Where the sale lives in Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis to keep the sale in: one URL for a single Redis; several (repeat the flag or
    /// separate them with commas) for the seed nodes of a Redis Cluster.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_delimiter = ','
    )]
    pub redis_url: Vec<String>,

    /// The one `--redis-url` is a node of a Redis Cluster (several URLs always are).
    #[arg(long, env = "FLASHSALE_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Answer a confirm only once this many replicas of its master have it (`WAIT`), so
    /// that a failover cannot lose an acknowledged confirm; 0 (the default) does not wait.
    #[arg(long, env = "FLASHSALE_CONFIRM_WAIT_REPLICAS", default_value_t = 0)]
    pub confirm_wait_replicas: u32,

    /// The longest a confirm waits for its replicas, in ms; past it the confirm is refused
    /// with 503 `not_replicated` (it is in Redis; the client's retry waits again). Keep it
    /// well below --redis-timeout-ms: the wait holds the node's connection.
    #[arg(long, env = "FLASHSALE_CONFIRM_WAIT_MS", default_value_t = 100)]
    pub confirm_wait_ms: u64,

    /// Prefix of every Redis key the engine writes.
    #[arg(long, env = "FLASHSALE_KEY_PREFIX", default_value = "fs:")]
    pub key_prefix: String,

    /// How long a Redis call may take before it fails (a request gets 503), in ms.
    #[arg(long, env = "FLASHSALE_REDIS_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_timeout_ms: u64,
}

impl RedisArgs {
    /// The Redis (or cluster) the flags name.
    pub fn target(&self) -> Result<RedisTarget, TargetError> {
        RedisTarget::parse(&self.redis_url, self.redis_cluster)
    }

    /// The store's connection options, on `target`.
    pub fn store_options(&self, target: RedisTarget) -> StoreOptions {
        StoreOptions {
            target,
            prefix: self.key_prefix.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms.max(1)),
            confirm_wait: (self.confirm_wait_replicas > 0).then(|| ReplicaWait {
                replicas: self.confirm_wait_replicas,
                timeout: Duration::from_millis(self.confirm_wait_ms.max(1)),
            }),
        }
    }
}

/// The ledger when no `--database-url` is given.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://var/flashsale.db";

/// Where the ledger lives.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// The SQL ledger: `sqlite://<file>` (created on first run) or `postgres://...`
    /// [default: sqlite://var/flashsale.db].
    #[arg(long, env = "FLASHSALE_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl LedgerArgs {
    /// The URL given, or [`DEFAULT_DATABASE_URL`].
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
    }
}

/// How to run the service.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Also serve the gRPC face (flashsale.v1, grpc.health.v1, reflection) on this
    /// address; off unless given.
    #[arg(long, env = "FLASHSALE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// Keep no SQL ledger: no reconciler and no audit (nothing the sale does is recorded
    /// outside Redis).
    #[arg(long, env = "FLASHSALE_NO_LEDGER", conflicts_with = "database_url")]
    pub no_ledger: bool,

    /// Do not run the reconciler in this process (run `flashsale reconcile` instead).
    #[arg(long, env = "FLASHSALE_NO_RECONCILE")]
    pub no_reconcile: bool,

    /// How often the quick audit compares Redis with the ledger, in seconds (0: never).
    #[arg(long, env = "FLASHSALE_AUDIT_INTERVAL_S", default_value_t = 10)]
    pub audit_interval_s: u64,

    /// Do not repair Redis from the ledger when it restarted and lost data: requests then
    /// stay suspended until someone runs `flashsale audit --repair`. (Drift the quick audit
    /// finds on a Redis that did not restart is only reported, whatever this says.)
    #[arg(long, env = "FLASHSALE_NO_AUDIT_REPAIR")]
    pub no_audit_repair: bool,

    /// Bearer token for the admin routes (load, restock). Without one they refuse everyone.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A caller allowed on the reservation and cart routes, as NAME=TOKEN (repeat the flag,
    /// or separate entries with commas). With any configured, those routes refuse a
    /// request without one of the tokens (401), a hold records the caller that made it,
    /// and only that caller may confirm, cancel or read it (403). NAME: 1-32 of
    /// [A-Za-z0-9._-]; TOKEN: 16-256 of [A-Za-z0-9-._~+/].
    #[arg(
        long = "client-token",
        env = "FLASHSALE_CLIENT_TOKENS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub client_tokens: Vec<String>,

    /// A file of client tokens: one NAME=TOKEN per line, blank lines and lines starting
    /// with '#' skipped (added to those of --client-token).
    #[arg(long, env = "FLASHSALE_CLIENT_TOKENS_FILE")]
    pub client_tokens_file: Option<std::path::PathBuf>,

    /// Refuse new reserves and carts (503 `settlement_behind`) while more than this many
    /// stream entries wait to be settled into the ledger, so that a reconciler that stopped
    /// cannot let Redis fill up (0: no limit; without a ledger there is none).
    #[arg(long, env = "FLASHSALE_MAX_UNSETTLED", default_value_t = 1_000_000)]
    pub max_unsettled: u64,

    /// Reserves per second over all SKUs (0: no limit).
    #[arg(long, env = "FLASHSALE_RATE_GLOBAL", default_value_t = 200_000)]
    pub rate_global: u32,

    /// Reserves admitted at once over all SKUs before the global rate applies.
    #[arg(long, env = "FLASHSALE_BURST_GLOBAL", default_value_t = 20_000)]
    pub burst_global: u32,

    /// Reserves per second for one SKU (0: no limit).
    #[arg(long, env = "FLASHSALE_RATE_SKU", default_value_t = 100_000)]
    pub rate_sku: u32,

    /// Reserves of one SKU admitted at once before its rate applies.
    #[arg(long, env = "FLASHSALE_BURST_SKU", default_value_t = 10_000)]
    pub burst_sku: u32,

    /// Requests with Redis calls in flight at once; beyond it requests get 503 at once.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 4_096)]
    pub max_in_flight: usize,

    /// How often expired holds are swept and interrupted stock moves completed, in ms.
    #[arg(long, env = "FLASHSALE_SWEEP_INTERVAL_MS", default_value_t = 250)]
    pub sweep_interval_ms: u64,

    /// Retire a SKU this many seconds after its sale window ended, once no hold is open
    /// and its events are settled in the ledger: every key of it leaves Redis, the ledger
    /// keeps its record (0: never; `DELETE /v1/skus/{sku}` retires one by hand). Needs a
    /// ledger: without one nothing settles, and nothing is retired automatically.
    #[arg(
        long = "retire-after",
        env = "FLASHSALE_RETIRE_AFTER",
        default_value_t = 86_400
    )]
    pub retire_after_s: u64,

    /// How often a sold-out SKU is checked for units that came back, in ms.
    #[arg(long, env = "FLASHSALE_SOLD_OUT_POLL_MS", default_value_t = 50)]
    pub sold_out_poll_ms: u64,

    /// How often the engine renews its entry in the engine registry and recomputes its
    /// share of the rates, in ms (an entry lives 3 heartbeats).
    #[arg(long, env = "FLASHSALE_HEARTBEAT_MS", default_value_t = 1_000)]
    pub heartbeat_ms: u64,

    /// How the global and per-SKU rates are split among the live engines: `even` (rate / N
    /// each) or `demand` (a small equal part each, the rest by recent demand).
    #[arg(long, env = "FLASHSALE_RATE_SPLIT", value_enum, default_value_t = RateSplit::Even)]
    pub rate_split: RateSplit,
}

fn bucket(rate: u32, burst: u32) -> Option<Bucket> {
    let rate = NonZeroU32::new(rate)?;
    Some(Bucket {
        rate,
        burst: NonZeroU32::new(burst).unwrap_or(rate),
    })
}

impl ServeConfig {
    /// A configuration for tests and embedding: the defaults, on `target` (one URL, or a
    /// [`RedisTarget`]), port 0, no ledger (unless `ledger.database_url` is then set).
    pub fn local(target: impl Into<RedisTarget>) -> Self {
        let target = target.into();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_listen: None,
            redis: RedisArgs {
                redis_url: target.urls().to_vec(),
                redis_cluster: target.is_cluster(),
                key_prefix: "fs:".to_owned(),
                redis_timeout_ms: 1_000,
                confirm_wait_replicas: 0,
                confirm_wait_ms: 100,
            },
            ledger: LedgerArgs { database_url: None },
            no_ledger: true,
            no_reconcile: false,
            audit_interval_s: 10,
            no_audit_repair: false,
            admin_token: None,
            client_tokens: Vec::new(),
            client_tokens_file: None,
            max_unsettled: 1_000_000,
            rate_global: 200_000,
            burst_global: 20_000,
            rate_sku: 100_000,
            burst_sku: 10_000,
            max_in_flight: 4_096,
            sweep_interval_ms: 250,
            retire_after_s: 86_400,
            sold_out_poll_ms: 50,
            heartbeat_ms: 1_000,
            rate_split: RateSplit::Even,
        }
    }

    /// The ledger's URL: the one given; none with `--no-ledger`; else
    /// [`DEFAULT_DATABASE_URL`].
    pub fn database_url(&self) -> Option<String> {
        match &self.ledger.database_url {
            None if self.no_ledger => None,
            _ => Some(self.ledger.url()),
        }
    }

    /// The admission limits.
    pub fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            global: bucket(self.rate_global, self.burst_global),
            per_sku: bucket(self.rate_sku, self.burst_sku),
            max_in_flight: self.max_in_flight.max(1),
            max_unsettled: (self.max_unsettled > 0 && self.database_url().is_some())
                .then_some(self.max_unsettled),
        }
    }

    /// The callers the reservation routes serve, checked; `None`: anyone.
    pub fn client_tokens(&self) -> Result<Option<ClientTokens>, ClientTokenError> {
        let mut entries = TokenEntries::default();
        entries.add("--client-token", &self.client_tokens);
        if let Some(path) = &self.client_tokens_file {
            entries.add_file(path)?;
        }
        entries.into_tokens(self.admin_token.as_deref())
    }

    /// The engine registry's heartbeat and the rates it splits.
    pub fn registry(&self) -> RegistryOptions {
        let admission = self.admission();
        RegistryOptions {
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(1)),
            split: self.rate_split,
            global: admission.global,
            per_sku: admission.per_sku,
        }
    }

    /// The sweep interval.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(1))
    }

    /// How long after its window a SKU is retired automatically; `None`: never (also
    /// without a ledger, which retirement needs).
    pub fn retire_after(&self) -> Option<Duration> {
        (self.retire_after_s > 0 && self.database_url().is_some())
            .then(|| Duration::from_secs(self.retire_after_s))
    }

    /// The sold-out poll interval.
    pub fn sold_out_poll(&self) -> Duration {
        Duration::from_millis(self.sold_out_poll_ms.max(1))
    }
}

/// How to run a standalone reconciler.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// Consumer name in the stream groups (default: host, pid and a random part).
    #[arg(long, env = "FLASHSALE_CONSUMER")]
    pub consumer: Option<String>,

    /// Entries read per stream and call; a batch is one SQL transaction.
    #[arg(long, env = "FLASHSALE_RECONCILE_BATCH", default_value_t = 500)]
    pub batch: usize,

    /// Entries another consumer left pending this long are claimed, in ms.
    #[arg(long, env = "FLASHSALE_CLAIM_IDLE_MS", default_value_t = 10_000)]
    pub claim_idle_ms: u64,

    /// After a read of less than a full batch, wait this long (ms) before the next, so
    /// that one transaction settles what arrived meanwhile: fewer, larger transactions
    /// under load, for at most this much more ledger lag. 0 reads again at once.
    #[arg(long, env = "FLASHSALE_RECONCILE_GATHER_MS", default_value_t = crate::reconcile::DEFAULT_GATHER_MS)]
    pub gather_ms: u64,
}

/// How to run an audit.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    /// Repair what drifted: settle the streams, write what only Redis knows to the ledger,
    /// rebuild the drifting SKUs in Redis from the ledger.
    #[arg(long)]
    pub repair: bool,

    /// Compare as things are, without settling the streams first.
    #[arg(long)]
    pub no_drain: bool,
}

impl ReconcileArgs {
    /// The reconciler's options.
    pub fn options(&self) -> ReconcileOptions {
        let mut options = ReconcileOptions::new();
        if let Some(consumer) = &self.consumer {
            options.consumer = consumer.clone();
        }
        options.batch = self.batch.max(1);
        options.claim_idle = Duration::from_millis(self.claim_idle_ms);
        options.gather = Duration::from_millis(self.gather_ms);
        options
    }
}
