//! Settlement throughput: events per second the reconciler applies into SQLite and into
//! PostgreSQL (each started privately), from streams filled beforehand.
//!
//! `cargo bench --bench settle_throughput` (options: `-- --reservations 20000`).

use std::time::{Duration, Instant};

use flashsale::ids::{random_token, IdempotencyKey, Sku, UserId};
use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale_testkit::{LocalPostgres, LocalRedis};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills fresh streams with `reservations` reserves, half of them confirmed, under a new
/// prefix; returns the store.
async fn fill(redis: &LocalRedis, reservations: u64) -> Store {
    let mut options = StoreOptions::new(redis.url());
    options.prefix = format!("bench-{}:", random_token());
    let store = Store::connect(&options).await.unwrap();
    let sku = Sku::new("bench").unwrap();
    let spec = SkuSpec {
        shards: Some(8),
        hold: Duration::from_secs(3600),
        ..SkuSpec::new(reservations)
    };
    store.load(&sku, &spec).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (store, sku) = (store.clone(), sku.clone());
            tokio::spawn(async move {
                let mut n = t;
                while n < reservations {
                    let request = ReserveRequest {
                        sku: sku.clone(),
                        user: UserId::new(format!("u{n}")).unwrap(),
                        quantity: 1,
                        key: IdempotencyKey::new("k").unwrap(),
                        caller: None,
                    };
                    let held = store.reserve(&request).await.unwrap();
                    if n % 2 == 0 {
                        store.confirm(&held.reservation.id, None).await.unwrap();
                    }
                    n += 32;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    store
}

async fn settle(label: &str, store: Store, url: &str) {
    let ledger = Ledger::connect(url).await.unwrap();
    let reconciler = Reconciler::new(store, ledger.clone(), ReconcileOptions::new(), None);
    let started = Instant::now();
    assert!(reconciler.drain(Duration::from_secs(600)).await.unwrap());
    let secs = started.elapsed().as_secs_f64();
    let events = ledger.events_applied().await.unwrap();
    println!(
        "{label:<10} {events} events in {secs:.2} s: {:.0} events/s",
        events as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    let reservations = arg("--reservations", 20_000);
    let redis = LocalRedis::start().expect("start redis-server");

    let store = fill(&redis, reservations).await;
    let dir = tempfile::tempdir().unwrap();
    settle(
        "sqlite",
        store,
        &format!("sqlite://{}/ledger.db", dir.path().display()),
    )
    .await;

    let store = fill(&redis, reservations).await;
    match LocalPostgres::start() {
        Ok(postgres) => settle("postgres", store, &postgres.url()).await,
        Err(error) => println!("postgres   not measured: {error}"),
    }
}
