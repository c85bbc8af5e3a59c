//! The engine's clock two hours off Redis's (libfaketime on the engine process): sale
//! windows open and holds expire by Redis's clock, as the scripts read it, never by the
//! engine's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale::ids::random_token;
use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::engine::Engine;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn reserve(engine: &Engine, user: &str) -> (StatusCode, Value) {
    let reply = reqwest::Client::new()
        .post(format!("{}/v1/reservations", engine.base()))
        .header("idempotency-key", "k")
        .json(&json!({ "sku": "tv", "user_id": user }))
        .send()
        .await
        .unwrap();
    (reply.status(), reply.json().await.unwrap())
}

async fn run_with_skew(skew: &str) {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "libfaketime is missing: apt-get install faketime (scripts/setup.sh does)"
    );
    let redis = LocalRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let env = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME", skew),
        // Timers run on the monotonic clock: only the wall clock is shifted.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let engine = Engine::start_with_env(
        &redis.url(),
        &database_url,
        &format!("f{}:", random_token()),
        &[],
        &env,
    )
    .await;
    let starts = OffsetDateTime::now_utc() + time::Duration::milliseconds(1_500);
    engine
        .put_sku(
            "tv",
            json!({ "stock": 1, "hold_seconds": 1, "starts_at": starts.format(&Rfc3339).unwrap() }),
        )
        .await;

    let (status, body) = reserve(&engine, "early").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("sale_not_started")),
        "{skew}"
    );
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let (status, body) = reserve(&engine, "ann").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{skew}: the sale opened by Redis's clock: {body}"
    );
    let expires = OffsetDateTime::parse(body["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let expires_ms = (expires.unix_timestamp_nanos() / 1_000_000) as u64;
    let expected = now_ms() + 1_000;
    assert!(
        expires_ms.abs_diff(expected) < 500,
        "{skew}: deadline {expires_ms}, Redis's clock says about {expected}"
    );
    let (status, body) = reserve(&engine, "bob").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );

    // One second of Redis time later the hold has expired and its unit is back.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let rid = body_rid(&engine, "ann").await;
    let read: Value = reqwest::get(format!("{}/v1/reservations/{rid}", engine.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "expired", "{skew}");
    let (status, _) = reserve(&engine, "cat").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{skew}: the expired unit came back"
    );
}

/// The reservation id ann got (a replay with her key returns it).
async fn body_rid(engine: &Engine, user: &str) -> String {
    let (_, body) = reserve(engine, user).await;
    body["reservation_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_two_hours_behind_redis_follows_redis_time() {
    run_with_skew("-2h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_two_hours_ahead_of_redis_follows_redis_time() {
    run_with_skew("+2h").await;
}
