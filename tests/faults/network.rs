//! Network faults between the engine and Redis, through a TCP proxy run inside the test:
//! added latency, a stall longer than the engine's Redis timeout, and connections reset
//! right after a script was sent (it runs, its reply is lost). Requests succeed or fail
//! with a clear 503; clients retrying with their idempotency key never get a second hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::random_token;
use flashsale_testkit::LocalRedis;
use serde_json::json;

use crate::engine::Engine;
use crate::proxy::FaultProxy;
use crate::sale::{run_buyers, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_stalls_and_resets_mid_script_double_nothing() {
    const STOCK: u64 = 700;
    const BUYERS: u64 = 800;
    let redis = LocalRedis::start().unwrap();
    let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let prefix = format!("f{}:", random_token());
    let engine = Engine::start(
        &proxy.url(),
        &database_url,
        &prefix,
        &["--redis-timeout-ms", "1000"],
    )
    .await;
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
    let at = |share: u64| {
        let progress = progress.clone();
        async move {
            while progress.load(Ordering::Relaxed) < BUYERS * share / 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    at(1).await;
    // Scripts reach Redis and run, and their replies are lost on the way back: on until a
    // few were, however many calls the engine coalesced into each write, and 40 % of the
    // buyers are through.
    proxy.set_reset_after_request_probability(0.05);
    while proxy.resets_injected() < 3 && progress.load(Ordering::Relaxed) < BUYERS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    at(4).await;
    proxy.set_reset_after_request_probability(0.0);
    proxy.set_latency(Duration::from_millis(30));
    at(5).await;
    proxy.set_latency(Duration::ZERO);
    // Longer than the engine's Redis timeout: requests in flight fail with 503.
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.unstall();
    let told = buyers.await.unwrap();

    let outcome = verify(&redis.url(), &prefix, &database_url, "sale", STOCK, &told).await;
    assert_eq!(outcome.sold, STOCK);
    assert!(proxy.resets_injected() > 0, "no reset was injected");
    assert!(outcome.retries > 0, "the faults cost no retry");
    println!(
        "network faults: {} connections, {} resets injected, {} retries, {} sold of {STOCK}, doubled 0, oversold 0",
        proxy.connections_accepted(),
        proxy.resets_injected(),
        outcome.retries,
        outcome.sold
    );
}
