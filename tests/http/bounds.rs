//! What an engine keeps in memory is bounded by the SKUs loaded: requests naming SKUs that
//! do not exist leave nothing behind.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn two_hundred_made_up_sku_names_leave_no_engine_memory() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 1000, "per_user_limit": 5 }))
        .await;
    let held = app.reserve("tv", "ann", 1, "k").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let before = app.tracked().await;
    assert_eq!(before["gates"], 1, "{before:?}");
    assert_eq!(before["configs"], 1, "{before:?}");
    assert_eq!(before["queues"], 1, "{before:?}");

    for n in 0..200 {
        let sku = format!("made-up-{n}");
        let reserve = app.reserve(&sku, "ann", 1, "k").await;
        assert_eq!(reserve.status, StatusCode::NOT_FOUND, "{:?}", reserve.body);
        assert_eq!(reserve.code(), "sku_not_found");
        let by_key = app.cancel_by_key(&sku, "ann", "k").await;
        assert_eq!(by_key.status, StatusCode::NOT_FOUND, "{:?}", by_key.body);
        let id = format!("{sku}~0~abcdefghijklmnopqrst");
        assert_eq!(app.confirm(&id).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.get(&id).await.status, StatusCode::NOT_FOUND);
        let read = app.get_sku(&sku).await;
        assert_eq!(read.status, StatusCode::NOT_FOUND, "{:?}", read.body);
        let lines = json!({ "user_id": "ann", "lines": [{ "sku": sku, "quantity": 1 }] });
        let cart = app.open_cart(&format!("c{n}"), lines).await;
        assert_eq!(cart.status, StatusCode::NOT_FOUND, "{:?}", cart.body);
    }
    let mut after = app.tracked().await;
    // The loaded SKU's limiter entry may have been dropped meanwhile, once refilled: at
    // most the one it had is left.
    assert!(
        after["rate_limiters"] <= 1,
        "limiter entries for made-up SKUs: {after:?}"
    );
    after.insert("rate_limiters".into(), before["rate_limiters"]);
    assert_eq!(after, before, "memory kept for made-up SKUs");
    // The loaded SKU is served as before.
    let again = app.reserve("tv", "bob", 1, "k").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
}

/// Calls of Redis command `name` so far (`INFO commandstats`).
fn calls_of(app: &TestApp, name: &str) -> u64 {
    let info = app.redis.command(&["INFO", "commandstats"]).unwrap();
    let head = format!("cmdstat_{name}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|l| l.split(['=', ',']).nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_sold_out_sku_is_polled_while_live_and_not_once_its_window_ended() {
    // No maintenance pass during the test: what reads the shards is the gates' poll.
    let app = TestApp::spawn_with(|c| c.sweep_interval_ms = 600_000).await;
    let ends = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let ends = ends
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let loaded = app
        .put_sku("tv", json!({ "stock": 1, "ends_at": ends, "shards": 1 }))
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);
    assert_eq!(
        app.reserve("tv", "ann", 1, "k").await.status,
        StatusCode::CREATED
    );
    let refused = app.reserve("tv", "bob", 1, "k").await;
    assert_eq!(refused.code(), "sold_out", "{:?}", refused.body);
    // Live and sold out: its shards are read every poll (HLEN of the moves hash is one of
    // the poll's reads) for units that come back.
    let polls = || calls_of(&app, "hlen");
    let flag = |page: String| series(&page, "flashsale_sku_sold_out", r#"sku="tv""#);
    assert_eq!(flag(app.metrics().await), Some(1.0));
    let tracked = app.tracked().await;
    assert_eq!(
        (tracked["queues"], tracked["refill_locks"]),
        (1, 1),
        "{tracked:?}"
    );
    let before = polls();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(polls() > before, "a live sold-out SKU was not polled");
    // Ended: nothing can be reserved of it, and it is not polled any more.
    while app.get_sku("tv").await.body["status"] != "ended" {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = polls();
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(polls(), before, "an ended SKU was polled");
    // Its flag is not kept up to date any more: it reads as down.
    assert_eq!(flag(app.metrics().await), Some(0.0));
    // What served its reserves is gone; what answers for it stays until it is retired.
    let tracked = app.tracked().await;
    assert_eq!(
        (tracked["queues"], tracked["refill_locks"]),
        (0, 0),
        "{tracked:?}"
    );
    assert_eq!(
        (tracked["gates"], tracked["configs"]),
        (1, 1),
        "{tracked:?}"
    );
    let replay = app.reserve("tv", "ann", 1, "k").await;
    assert_eq!(replay.status, StatusCode::CREATED, "{:?}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
}
