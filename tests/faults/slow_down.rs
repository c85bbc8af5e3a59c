//! Redis slow, then down: readiness goes 503, reserves fail fast with 503 and Retry-After
//! instead of piling up, and the service recovers by itself when Redis returns.

use std::time::Duration;

use flashsale::ids::random_token;
use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::json;

use crate::engine::Engine;

async fn reserve(client: &reqwest::Client, base: &str, user: &str) -> (StatusCode, Option<String>) {
    let reply = client
        .post(format!("{base}/v1/reservations"))
        .header("idempotency-key", "k")
        .json(&json!({ "sku": "tv", "user_id": user }))
        .send()
        .await
        .unwrap();
    let retry_after = reply
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (reply.status(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_then_dead_redis_fails_requests_fast_and_the_service_recovers() {
    let mut redis = LocalRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let engine = Engine::start(
        &redis.url(),
        &database_url,
        &format!("f{}:", random_token()),
        &["--redis-timeout-ms", "300", "--max-in-flight", "8"],
    )
    .await;
    engine.put_sku("tv", json!({ "stock": 1000 })).await;
    let client = reqwest::Client::new();
    let base = engine.base();
    assert_eq!(
        reserve(&client, &base, "before").await.0,
        StatusCode::CREATED
    );
    // Let the ledger settle that hold: what it has settled is what survives Redis's loss.
    let started = std::time::Instant::now();
    loop {
        let sku: serde_json::Value = reqwest::get(format!("{base}/v1/skus/tv"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if sku["settled"]["held"].as_u64() == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never settled: {sku}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Slow: Redis stalls for two seconds.
    let port = redis.port();
    let stall = std::thread::spawn(move || {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .exec(&mut conn)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move { reserve(&client, &base, &format!("slow{n}")).await })
        })
        .collect();
    let mut unavailable = 0;
    for task in tasks {
        let (status, retry_after) = task.await.unwrap();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "nothing can succeed while Redis sleeps"
        );
        assert!(
            retry_after.is_some(),
            "a 503 tells the client when to retry"
        );
        unavailable += 1;
    }
    stall.join().unwrap();
    assert_eq!(unavailable, 50);

    // Down: Redis is gone for a while.
    tokio::task::block_in_place(|| redis.kill());
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, retry_after) = reserve(&client, &base, "down").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some());

    // Back (empty: no append-only file): the engine checks the new Redis against the
    // ledger, rebuilds the SKU from it, and serves again, all by itself.
    tokio::task::block_in_place(|| redis.restart()).unwrap();
    let started = std::time::Instant::now();
    loop {
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        let (status, _) = reserve(&client, &base, "after").await;
        if ready == StatusCode::OK && status == StatusCode::CREATED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "did not recover: ready {ready}, reserve {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hold made before the stall survived the rebuild: its retry is a replay.
    let replay = client
        .post(format!("{base}/v1/reservations"))
        .header("idempotency-key", "k")
        .json(&json!({ "sku": "tv", "user_id": "before" }))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(
        replay
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "the hold settled before Redis was lost is rebuilt from the ledger"
    );
    // Reserves answered 503 while Redis slept still ran when it woke (the client was told
    // to retry them with the same key): those the ledger settled before the kill were
    // rebuilt too, the others are gone with that Redis. Either way Redis now says what the
    // ledger says, and no unit was created or lost.
    let started = std::time::Instant::now();
    loop {
        let sku: serde_json::Value = reqwest::get(format!("{base}/v1/skus/tv"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (held, available) = (
            sku["held"].as_u64().unwrap(),
            sku["available"].as_u64().unwrap(),
        );
        assert_eq!(held + available, 1000, "units created or lost: {sku}");
        assert!(
            held >= 2,
            "\"before\" and \"after\" hold a unit each: {sku}"
        );
        if sku["settled"]["held"].as_u64() == Some(held) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the ledger never caught up with Redis: {sku}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
