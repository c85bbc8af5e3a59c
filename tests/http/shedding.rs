//! Load shedding in memory: refusals that never reach Redis (counted by Redis itself, with
//! `INFO commandstats`), and a sold-out flag that drops when units come back.

use std::time::Duration;

use flashsale::config::ServeConfig;
use flashsale::ids::ReservationId;
use flashsale::store::{Store, StoreOptions};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// The background sweep calls a script per shard every pass, and the registry's heartbeat
/// one every beat; tests that count the script calls requests make keep both out of the
/// count (a slow machine fits more passes in).
const QUIET_MS: u64 = 3_600_000;

fn quiet(config: &mut ServeConfig) {
    config.sweep_interval_ms = QUIET_MS;
    config.heartbeat_ms = QUIET_MS;
}

#[tokio::test]
async fn a_burst_over_the_rate_gets_429_without_touching_redis() {
    let app = TestApp::spawn_with(|c| {
        c.rate_sku = 1;
        c.burst_sku = 5;
        quiet(c);
    })
    .await;
    app.put_sku("tv", json!({ "stock": 1000, "per_user_limit": 1 }))
        .await;
    for n in 0..5 {
        let reply = app.reserve("tv", &format!("u{n}"), 1, "k").await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let before = app.script_calls();
    let mut limited = 0;
    for n in 5..55 {
        let reply = app.reserve("tv", &format!("u{n}"), 1, "k").await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.code(), "rate_limited");
            let wait: u64 = reply.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(wait >= 1);
            limited += 1;
        }
    }
    let admitted = 50 - limited;
    // The bucket refills one token a second: at most a few of the 50 got through.
    assert!(limited >= 45, "only {limited} of 50 were limited");
    assert!(
        app.script_calls() - before <= admitted,
        "refused requests reached Redis: {} script calls for {admitted} admitted",
        app.script_calls() - before
    );
}

#[tokio::test]
async fn after_sell_out_reserves_are_refused_from_memory_until_units_come_back() {
    let app = TestApp::spawn_with(quiet).await;
    app.put_sku("tv", json!({ "stock": 2, "shards": 2, "hold_seconds": 1 }))
        .await;
    let ann = app.reserve("tv", "ann", 1, "k").await;
    let bob = app.reserve("tv", "bob", 1, "k").await;
    assert_eq!(app.reserve("tv", "cat", 1, "k").await.code(), "sold_out");

    // Once the flag is up and the recorded keys are loaded, nothing reaches Redis.
    let mut quiet = false;
    for _ in 0..100 {
        let before = app.script_calls();
        assert_eq!(app.reserve("tv", "probe", 1, "k").await.code(), "sold_out");
        if app.script_calls() == before {
            quiet = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(quiet, "sold-out reserves kept reaching Redis");
    let before = app.script_calls();
    for n in 0..100 {
        let reply = app.reserve("tv", &format!("late{n}"), 1, "k").await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::CONFLICT, "sold_out")
        );
    }
    assert_eq!(
        app.script_calls(),
        before,
        "sold-out answers made script calls"
    );
    // A client retrying a reserve that did succeed gets its reservation, not sold_out.
    let retry = app.reserve("tv", "ann", 1, "k").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body["reservation_id"], ann.body["reservation_id"]);

    // A cancel here lowers the flag at once.
    app.cancel(bob.body["reservation_id"].as_str().unwrap())
        .await;
    assert_eq!(
        app.reserve("tv", "dan", 1, "k").await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.reserve("tv", "eve", 1, "k").await.code(), "sold_out");

    // Units that come back elsewhere (another engine's cancel) are noticed by the poll.
    let other_engine = Store::connect(&StoreOptions {
        prefix: app.prefix.clone(),
        ..StoreOptions::new(app.redis.url())
    })
    .await
    .unwrap();
    let dan_id = ReservationId::parse(
        app.reserve("tv", "dan", 1, "k").await.body["reservation_id"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    other_engine.cancel(&dan_id, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fay = app.reserve("tv", "fay", 1, "k").await;
    assert_eq!(fay.status, StatusCode::CREATED, "{:?}", fay.body);

    // And so are holds that expire: ann's and fay's holds last a second.
    assert_eq!(app.reserve("tv", "gus", 1, "k").await.code(), "sold_out");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let hal = app.reserve("tv", "hal", 1, "k").await;
    assert_eq!(hal.status, StatusCode::CREATED, "{:?}", hal.body);
}

#[tokio::test]
async fn reserves_outside_the_window_never_reach_redis() {
    let app = TestApp::spawn_with(quiet).await;
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let starts = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    app.put_sku("tv", json!({ "stock": 5, "starts_at": starts }))
        .await;
    app.reserve("tv", "warm", 1, "k").await;
    let before = app.script_calls();
    for n in 0..20 {
        let reply = app.reserve("tv", &format!("u{n}"), 1, "k").await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::CONFLICT, "sale_not_started")
        );
    }
    assert_eq!(app.script_calls(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_in_flight_bound_requests_are_refused_at_once() {
    let app = std::sync::Arc::new(
        TestApp::spawn_with(|c| {
            c.max_in_flight = 1;
            c.redis.redis_timeout_ms = 10_000;
        })
        .await,
    );
    app.put_sku("tv", json!({ "stock": 10 })).await;
    // Redis stalls: the first reserve holds the only in-flight permit meanwhile.
    let port = app.redis.port();
    let stall = std::thread::spawn(move || {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .exec(&mut conn)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = tokio::spawn({
        let app = app.clone();
        async move { app.reserve("tv", "ann", 1, "k").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = app.reserve("tv", "bob", 1, "k").await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    stall.join().unwrap();
    assert_eq!(
        app.reserve("tv", "bob", 1, "k").await.status,
        StatusCode::CREATED
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"flashsale_admission_refusals_total{reason="in_flight"} 1"#),
        "{metrics}"
    );
}
