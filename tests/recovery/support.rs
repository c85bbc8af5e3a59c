//! What every recovery sequence needs: a private Redis, an SQLite ledger in a temporary
//! directory, a store and a reconciler on them, and the few steps the public API does not
//! offer (half a stock move, a Redis that lost everything), done with the scripts and plain
//! Redis commands.

use std::time::Duration;

use flashsale::ids::{random_token, IdempotencyKey, Sku, UserId};
use flashsale::ledger::{Ledger, LedgerFigures, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::recovery::audit::{self, AuditReport};
use flashsale::scripts::{ScriptCode, Scripts};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions, Totals};
use flashsale_testkit::LocalRedis;

/// Long enough that no hold of a test expires while it runs: expiries are not under test.
pub const HOLD: Duration = Duration::from_secs(600);

/// How long a drain may take before the test calls the reconciler stuck.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

/// One engine's view of a private Redis and its ledger.
pub struct Rig {
    pub redis: LocalRedis,
    /// Holds the SQLite file; dropped (and deleted) with the rig.
    _dir: tempfile::TempDir,
    pub prefix: String,
    pub store: Store,
    pub ledger: Ledger,
    pub reconciler: Reconciler,
    scripts: Scripts,
}

impl Rig {
    /// A fresh Redis, a fresh ledger, and a store and reconciler on them.
    pub async fn start() -> Self {
        let redis = LocalRedis::start().expect("start redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let ledger = Ledger::connect(&url).await.expect("sqlite ledger");
        let prefix = format!("t{}:", random_token());
        let store = store_under(&redis, &prefix).await;
        let reconciler =
            Reconciler::new(store.clone(), ledger.clone(), ReconcileOptions::new(), None);
        Self {
            redis,
            _dir: dir,
            prefix,
            store,
            ledger,
            reconciler,
            scripts: Scripts::new(),
        }
    }

    /// A second engine on the same Redis and keys: its caches are its own.
    pub async fn second_store(&self) -> Store {
        store_under(&self.redis, &self.prefix).await
    }

    /// Loads `name` with `stock` units over `shards` shards, `limit` per user.
    pub async fn load(&self, name: &str, stock: u64, shards: u16, limit: u32) -> Sku {
        let sku = Sku::new(name).expect("sku");
        load_with(&self.store, &sku, stock, shards, limit).await;
        sku
    }

    /// Settles every stream entry into the ledger; a drain that does not finish fails the
    /// test, since every figure read afterwards would be a lagging one.
    pub async fn drain(&self) {
        let drained = self
            .reconciler
            .drain(DRAIN_WITHIN)
            .await
            .expect("reconciler drain");
        assert!(drained, "the reconciler did not settle the streams");
    }

    /// Redis loses everything, as a restart without persistence would (the test's own
    /// Redis: nothing else lives there).
    pub async fn lose_redis_data(&self) {
        let reply: String = redis::cmd("FLUSHALL")
            .query_async(&mut self.store.connection())
            .await
            .expect("FLUSHALL");
        assert_eq!(reply, "OK", "FLUSHALL answered {reply:?}");
    }

    /// The audit's repair: settle the streams, then rebuild drifting SKUs from the ledger.
    pub async fn repair(&self) -> AuditReport {
        audit::run(&self.store, &self.ledger, Some(&self.reconciler), true)
            .await
            .expect("audit with repair")
    }

    /// An audit that only reports, after everything was settled.
    pub async fn audit(&self) -> AuditReport {
        self.drain().await;
        audit::run(&self.store, &self.ledger, Some(&self.reconciler), false)
            .await
            .expect("audit")
    }

    /// The ledger's settled figures for `sku`.
    pub async fn figures(&self, sku: &Sku) -> LedgerFigures {
        self.ledger.figures(sku.as_str()).await.expect("figures")
    }

    /// Redis's totals for `sku`, read fresh (never from a configuration cached before the
    /// data loss).
    pub async fn totals(&self, sku: &Sku) -> Totals {
        self.store.reload_config(sku).await.expect("reload config");
        self.store.totals(sku).await.expect("totals")
    }

    /// The first half of a stock move, as `moves.rs` runs it: `move_out.lua` on the donor.
    /// Returns the units taken.
    pub async fn move_out(&self, sku: &Sku, from: u16, to: u16, move_id: &str, want: u64) -> u64 {
        let keys = self.store.keys().shard(sku, from);
        let (_, _, code, taken): (u64, i64, i64, u64) = self
            .scripts
            .move_out
            .prepare_invoke()
            .key(&keys.hash)
            .key(&keys.deadlines)
            .key(&keys.events)
            .key(&keys.moves)
            .arg(sku.as_str())
            .arg(from)
            .arg(move_id)
            .arg(to)
            .arg(want)
            .invoke_async(&mut self.store.connection())
            .await
            .expect("move_out.lua");
        assert_eq!(
            ScriptCode::from_i64(code),
            Some(ScriptCode::Ok),
            "move_out {move_id}"
        );
        taken
    }

    /// The second half of a stock move: `move_in.lua` on the receiver. Returns its code.
    pub async fn move_in(
        &self,
        sku: &Sku,
        from: u16,
        to: u16,
        move_id: &str,
        units: u64,
    ) -> Option<ScriptCode> {
        let keys = self.store.keys().shard(sku, to);
        let (_, _, code): (u64, i64, i64) = self
            .scripts
            .move_in
            .prepare_invoke()
            .key(&keys.hash)
            .key(&keys.deadlines)
            .key(&keys.events)
            .arg(sku.as_str())
            .arg(to)
            .arg(move_id)
            .arg(from)
            .arg(units)
            .invoke_async(&mut self.store.connection())
            .await
            .expect("move_in.lua");
        ScriptCode::from_i64(code)
    }

    /// Drops a move's pending record, as the mover does once both halves are applied.
    pub async fn forget_pending_move(&self, sku: &Sku, from: u16, move_id: &str) {
        let moves = self.store.keys().shard(sku, from).moves;
        let removed: u64 = redis::cmd("HDEL")
            .arg(&moves)
            .arg(move_id)
            .query_async(&mut self.store.connection())
            .await
            .expect("HDEL");
        assert_eq!(removed, 1, "no pending record of {move_id}");
    }

    /// Units `user` holds or bought in one shard: their record's allowance.
    pub async fn allowance(&self, sku: &Sku, shard: u16, user: &UserId) -> u64 {
        let hash = self.store.keys().shard(sku, shard).hash;
        let record: Option<String> = redis::cmd("HGET")
            .arg(&hash)
            .arg(user.as_str())
            .query_async(&mut self.store.connection())
            .await
            .expect("HGET the user's record");
        record.map_or(0, |text| {
            flashsale::store::UserRecord::parse(&text)
                .expect("a user's record")
                .units
        })
    }
}

/// A store under `prefix` on `redis`, with a timeout generous for a loaded test machine.
async fn store_under(redis: &LocalRedis, prefix: &str) -> Store {
    let mut options = StoreOptions::new(redis.url());
    options.prefix = prefix.to_owned();
    options.timeout = Duration::from_secs(5);
    Store::connect(&options).await.expect("connect store")
}

/// Loads (or replaces) `sku` through `store`.
pub async fn load_with(store: &Store, sku: &Sku, stock: u64, shards: u16, limit: u32) {
    let spec = SkuSpec {
        shards: Some(shards),
        per_user_limit: limit,
        hold: HOLD,
        ..SkuSpec::new(stock)
    };
    store.load(sku, &spec).await.expect("load sku");
}

/// A reserve of one unit.
pub fn one_unit(sku: &Sku, user: &str, key: &str) -> ReserveRequest {
    ReserveRequest {
        caller: None,
        sku: sku.clone(),
        user: UserId::new(user).expect("user"),
        quantity: 1,
        key: IdempotencyKey::new(key).expect("key"),
    }
}

/// Units Redis says were put on sale.
pub fn stock_of(totals: &Totals) -> u64 {
    totals.loaded + totals.restocked
}

/// Units Redis can account for: available, held, sold or on their way between shards.
pub fn accounted_of(totals: &Totals) -> u64 {
    totals.available + totals.held + totals.sold + totals.in_transit
}

/// Fails unless Redis puts exactly `stock` units on sale and accounts for every one.
pub fn assert_conserved(totals: &Totals, stock: u64, when: &str) {
    assert_eq!(
        stock_of(totals),
        stock,
        "{when}: Redis's loaded + restocked, {totals:?}"
    );
    assert_eq!(
        accounted_of(totals),
        stock,
        "{when}: Redis's available + held + sold + in transit, {totals:?}"
    );
}

/// Fails unless the audit found nothing to report.
pub fn assert_no_drift(report: &AuditReport, when: &str) {
    assert!(report.drifts.is_empty(), "{when}: {report}");
}
