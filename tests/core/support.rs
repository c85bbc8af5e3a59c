//! What every core test needs: a private Redis, a store on it, and short constructors.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::events::{Entry, Event};

use flashsale::ids::{random_token, IdempotencyKey, ReservationId, Sku, UserId};
use flashsale::local_redis::{LocalRedis, LocalRedisOptions};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};

/// A private Redis and a store on it under a fresh key prefix.
pub struct Harness {
    pub redis: LocalRedis,
    pub store: Store,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(LocalRedisOptions::default()).await
    }

    pub async fn start_with(options: LocalRedisOptions) -> Self {
        let redis = LocalRedis::start_with(options).expect("start redis-server");
        let store = store_on(&redis).await;
        Self { redis, store }
    }

    /// Loads `name` with `spec` and returns the SKU.
    pub async fn sku(&self, name: &str, spec: SkuSpec) -> Sku {
        let sku = sku(name);
        self.store.load(&sku, &spec).await.expect("load sku");
        sku
    }

    /// Every event of every shard of `sku`, shard by shard, each shard's in order.
    pub fn events(&self, sku: &Sku, shards: u16) -> Vec<Event> {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let mut all = Vec::new();
        for shard in 0..shards {
            let key = self.store.keys().shard(sku, shard).events;
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(&mut conn)
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

pub async fn store_on(redis: &LocalRedis) -> Store {
    let mut options = StoreOptions::new(redis.url());
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
