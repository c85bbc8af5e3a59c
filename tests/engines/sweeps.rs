//! With two engines, each SKU is swept every pass by its owner only (rendezvous hashing over
//! the live registry) and every few passes by the other: far fewer sweep calls than every
//! engine sweeping everything.

use std::time::{Duration, Instant};

use flashsale::maintenance::BACKUP_EVERY;
use flashsale_testkit::LocalRedis;
use serde_json::json;

use crate::support::*;

const SKUS: usize = 16;
const SWEEP_MS: u64 = 50;

/// SKU sweep calls and sweeps deferred to the owner so far.
async fn sweeps(engine: &Engine) -> (f64, f64) {
    let calls = engine
        .metric(r#"flashsale_sweep_calls_total{outcome="expired"}"#)
        .await
        + engine
            .metric(r#"flashsale_sweep_calls_total{outcome="idle"}"#)
            .await;
    (calls, engine.metric("flashsale_sweep_deferred_total").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_sweep_each_sku_about_once() {
    let redis = LocalRedis::start().unwrap();
    let prefix = prefix();
    let tweak = |c: &mut flashsale::config::ServeConfig| c.sweep_interval_ms = SWEEP_MS;
    let a = Engine::start(&redis.url(), &prefix, tweak).await;
    for n in 0..SKUS {
        a.put_sku(&format!("s{n}"), json!({ "stock": 10, "shards": 1 }))
            .await;
    }
    // Alone, A sweeps every SKU every pass.
    let window = Duration::from_secs(2);
    let (calls0, deferred0) = sweeps(&a).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (calls1, deferred1) = sweeps(&a).await;
    let alone = (calls1 - calls0) / started.elapsed().as_secs_f64();
    assert_eq!(deferred1, deferred0, "alone, A deferred a sweep");

    let b = Engine::start(&redis.url(), &prefix, tweak).await;
    within(Duration::from_secs(3), || async {
        a.live().await == 2 && b.live().await == 2
    })
    .await
    .expect("both engines see each other");
    tokio::time::sleep(Duration::from_millis(2 * HEARTBEAT_MS)).await;
    let (a0, b0) = (sweeps(&a).await, sweeps(&b).await);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (a1, b1) = (sweeps(&a).await, sweeps(&b).await);
    let seconds = started.elapsed().as_secs_f64();
    let calls = (a1.0 - a0.0) + (b1.0 - b0.0);
    let deferred = (a1.1 - a0.1) + (b1.1 - b0.1);
    let visits = calls + deferred;
    println!(
        "SKU sweep calls per second: {alone:.0} with one engine, {:.0} with two \
         (A {:.0}, B {:.0}; without owners it would be {:.0})",
        calls / seconds,
        (a1.0 - a0.0) / seconds,
        (b1.0 - b0.0) / seconds,
        visits / seconds,
    );
    // Each SKU: every pass by its owner, every BACKUP_EVERY-th by the other.
    let expected = 0.5 * (1.0 + 1.0 / BACKUP_EVERY as f64);
    assert!(
        calls <= visits * (expected + 0.1),
        "{calls} sweep calls of {visits} visits: the owners do not bound the sweeping"
    );
    // Both engines own some SKUs and back the others up.
    assert!(a1.0 > a0.0 && b1.0 > b0.0, "an engine swept nothing");
    assert!(a1.1 > a0.1 && b1.1 > b0.1, "an engine deferred nothing");
}
