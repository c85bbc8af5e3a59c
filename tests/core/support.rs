//! What every core test needs: a private Redis, a store on it, and short constructors.
//!
//! The suite runs on either topology: a single `redis-server` by default, a 3-master Redis
//! Cluster when `FLASHSALE_TEST_TOPOLOGY=cluster` (each test starts its own). A shard's
//! keys share one slot and a SKU's shards are spread over the masters, so on the cluster
//! every multi-shard test crosses nodes.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::events::{Entry, Event};

use flashsale::ids::{random_token, IdempotencyKey, ReservationId, Sku, UserId};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale::topology::RedisTarget;
use flashsale_testkit::{LocalCluster, LocalClusterOptions, LocalRedis, LocalRedisOptions};

/// The servers of one test: a single Redis or a cluster.
pub enum Servers {
    Single(LocalRedis),
    Cluster(LocalCluster),
}

impl Servers {
    /// The topology `FLASHSALE_TEST_TOPOLOGY` names (`single`, the default, or `cluster`).
    pub fn start() -> Self {
        match std::env::var("FLASHSALE_TEST_TOPOLOGY").as_deref() {
            Ok("cluster") => Self::Cluster(
                LocalCluster::start(LocalClusterOptions::default()).expect("start a cluster"),
            ),
            Ok("single") | Err(_) => Self::Single(LocalRedis::start().expect("start redis-server")),
            Ok(other) => panic!("FLASHSALE_TEST_TOPOLOGY={other:?}: use single or cluster"),
        }
    }

    pub fn target(&self) -> RedisTarget {
        match self {
            Self::Single(redis) => RedisTarget::from(redis.url()),
            Self::Cluster(cluster) => RedisTarget::Cluster(cluster.seed_urls()),
        }
    }

    /// Runs a command on every master, returning the first answer.
    pub fn command_everywhere(&self, words: &[&str]) -> String {
        match self {
            Self::Single(redis) => redis.command(words).expect("redis command"),
            Self::Cluster(cluster) => {
                let mut answers = cluster
                    .masters()
                    .expect("masters")
                    .into_iter()
                    .map(|node| cluster.command(node.port, words).expect("redis command"));
                answers.next().expect("a master")
            }
        }
    }

    /// The single Redis; panics on a cluster (the test is about one server).
    pub fn single(&mut self) -> &mut LocalRedis {
        match self {
            Self::Single(redis) => redis,
            Self::Cluster(_) => panic!("this test needs a single Redis"),
        }
    }

    /// A synchronous connection for reading what the scripts wrote.
    fn sync_connection(&self) -> Box<dyn redis::ConnectionLike> {
        match self {
            Self::Single(redis) => Box::new(
                redis::Client::open(redis.url())
                    .unwrap()
                    .get_connection()
                    .unwrap(),
            ),
            Self::Cluster(cluster) => Box::new(
                redis::cluster::ClusterClient::new(cluster.seed_urls())
                    .unwrap()
                    .get_connection()
                    .unwrap(),
            ),
        }
    }
}

/// A private Redis (or cluster) and a store on it under a fresh key prefix.
pub struct Harness {
    pub redis: Servers,
    pub store: Store,
}

impl Harness {
    /// Runs only the first half of a move of up to `units` units of `sku` from shard 0 to
    /// shard 1 under `move_id`, as an engine that crashed right after it would leave it.
    /// Returns the script's code and the units it took.
    pub async fn move_out_only(&self, sku: &Sku, move_id: &str, units: u64) -> (i64, u64) {
        let donor = self.store.keys().shard(sku, 0);
        let (_, _, code, taken): (u64, i64, i64, u64) = flashsale::scripts::Scripts::new()
            .move_out
            .key(&donor.hash)
            .key(&donor.deadlines)
            .key(&donor.events)
            .key(&donor.moves)
            .arg(sku.as_str())
            .arg(0)
            .arg(move_id)
            .arg(1)
            .arg(units)
            .invoke_async(&mut self.store.connection())
            .await
            .unwrap();
        (code, taken)
    }

    pub async fn start() -> Self {
        let redis = Servers::start();
        let store = store_on(&redis.target()).await;
        Self { redis, store }
    }

    /// On a single Redis started with `options` whatever the topology asked: what the
    /// restart tests need (a cluster's counterpart of a restart is a failover).
    pub async fn start_single_with(options: LocalRedisOptions) -> Self {
        let redis = LocalRedis::start_with(options).expect("start redis-server");
        let store = store_on(&RedisTarget::from(redis.url())).await;
        Self {
            redis: Servers::Single(redis),
            store,
        }
    }

    /// Loads `name` with `spec` and returns the SKU.
    pub async fn sku(&self, name: &str, spec: SkuSpec) -> Sku {
        let sku = sku(name);
        self.store.load(&sku, &spec).await.expect("load sku");
        sku
    }

    /// Every event of every shard of `sku`, shard by shard, each shard's in order.
    pub fn events(&self, sku: &Sku, shards: u16) -> Vec<Event> {
        let mut conn = self.redis.sync_connection();
        let mut all = Vec::new();
        for shard in 0..shards {
            let key = self.store.keys().shard(sku, shard).events;
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(conn.as_mut())
                .unwrap();
            for entry in reply.ids {
                let fields: HashMap<String, String> = entry
                    .map
                    .iter()
                    .map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap()))
                    .collect();
                let entry = Entry::parse(&entry.id, &fields).unwrap();
                assert_eq!((&entry.sku, entry.shard), (sku, shard));
                all.extend(entry.events);
            }
        }
        all
    }
}

pub async fn store_on(target: &RedisTarget) -> Store {
    let mut options = StoreOptions::new(target.clone());
    options.prefix = format!("t{}:", random_token());
    options.timeout = Duration::from_secs(5);
    Store::connect(&options).await.expect("connect store")
}

pub fn sku(name: &str) -> Sku {
    Sku::new(name).unwrap()
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

pub fn request(sku: &Sku, who: &str, quantity: u32, idem: &str) -> ReserveRequest {
    ReserveRequest {
        caller: None,
        sku: sku.clone(),
        user: user(who),
        quantity,
        key: key(idem),
    }
}

/// A spec of `stock` units over `shards` shards, `limit` per user, holds of `hold_ms`.
pub fn spec(stock: u64, shards: u16, limit: u32, hold_ms: u64) -> SkuSpec {
    SkuSpec {
        shards: Some(shards),
        per_user_limit: limit,
        hold: Duration::from_millis(hold_ms),
        ..SkuSpec::new(stock)
    }
}

/// A well-formed id that names `shard` of `sku` but no reservation.
pub fn unknown_id(sku: &Sku, shard: u16) -> ReservationId {
    ReservationId::generate(sku, shard)
}
