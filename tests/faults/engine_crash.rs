//! The engine SIGKILLed in the middle of a sale and started again: clients that retry with
//! their idempotency key get exactly one reservation each, nothing is lost, nothing doubled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::random_token;
use flashsale_testkit::{Fsync, LocalRedis, LocalRedisOptions};
use serde_json::json;

use crate::engine::Engine;
use crate::sale::{run_buyers, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_engine_restarts_and_retried_requests_take_effect_once() {
    const STOCK: u64 = 300;
    const BUYERS: u64 = 600;
    let redis = LocalRedis::start_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let prefix = format!("f{}:", random_token());
    let mut engine = Engine::start(&redis.url(), &database_url, &prefix, &[]).await;
    engine
        .put_sku(
            "sale",
            json!({ "stock": STOCK, "shards": 4, "hold_seconds": 600 }),
        )
        .await;

    let progress = Arc::new(AtomicU64::new(0));
    let buyers = tokio::spawn(run_buyers(
        engine.base(),
        "sale",
        BUYERS,
        32,
        progress.clone(),
        false,
    ));
    while progress.load(Ordering::Relaxed) < BUYERS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight_at_kill =
        BUYERS.min(progress.load(Ordering::Relaxed) + 32) - progress.load(Ordering::Relaxed);
    engine.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine.spawn().await;
    let told = buyers.await.unwrap();

    let outcome = verify(&redis.url(), &prefix, &database_url, "sale", STOCK, &told).await;
    assert_eq!(
        outcome.sold, STOCK,
        "demand was twice the supply: every unit sold"
    );
    assert!(
        outcome.retries > 0,
        "the kill cost no retry: it did not strike mid-sale"
    );
    println!(
        "engine SIGKILL: {in_flight_at_kill} buyers in flight, {} retries, {} sold of {STOCK}, lost 0, oversold 0",
        outcome.retries, outcome.sold
    );
}
