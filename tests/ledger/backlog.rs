//! The unsettled stream is watched, not lost: with no reconciler reading, the engine says
//! how far behind settlement is, refuses new holds past `--max-unsettled` (confirms go on),
//! trims nothing, and once a reconciler returns everything is settled and reserves resume.

use std::time::{Duration, Instant};

use flashsale::ledger::LedgerRepo;
use flashsale::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sale::inspect;
use crate::support::*;

const LIMIT: u64 = 4;

/// `length` and `entries-added` of the SKU's one shard stream.
async fn stream(store: &Store) -> (u64, u64) {
    let key = store.keys().shard(&"tv".parse().unwrap(), 0).events;
    let info: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&key)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    let field = |name: &str| {
        info.chunks(2)
            .find_map(|pair| match (&pair[0], &pair[1]) {
                (redis::Value::BulkString(n), redis::Value::Int(v)) if n == name.as_bytes() => {
                    Some(*v as u64)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {name} in XINFO STREAM"))
    };
    (field("length"), field("entries-added"))
}

async fn readiness(app: &TestApp) -> Value {
    let reply = app.call(Method::GET, "/readyz", "/readyz", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_with_the_reconciler_stopped_is_refused_at_the_backlog_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.no_reconcile = true;
        c.audit_interval_s = 0;
        c.max_unsettled = LIMIT;
    })
    .await;
    let loaded = app
        .put_sku(
            "tv",
            json!({ "stock": 100, "per_user_limit": 1, "shards": 1 }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);
    let (store, ledger, reconciler) = inspect(&app, &url).await;

    // Reserve one at a time until refused: each reserve is one stream entry.
    let mut held = Vec::new();
    let refused = loop {
        assert!(
            held.len() < 200,
            "never refused with {:?}",
            stream(&store).await
        );
        let reply = app.reserve("tv", &format!("u{}", held.len()), 1, "k").await;
        match reply.status {
            StatusCode::CREATED => {
                held.push(reply.body["reservation_id"].as_str().unwrap().to_owned())
            }
            _ => break reply,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.code(), "settlement_behind");
    assert_eq!(refused.headers["retry-after"], "5");
    let (length, added) = stream(&store).await;
    assert!(
        added >= LIMIT,
        "refused with {added} entries written, under the limit"
    );
    assert_eq!(length, added, "entries trimmed before they were settled");

    // Readiness and the metrics say so; the engine stays ready.
    let ready = readiness(&app).await;
    eprintln!("readiness while refusing: {ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["settlement"]["refusing_reserves"], true, "{ready}");
    assert_eq!(ready["settlement"]["max_unsettled"], LIMIT);
    assert!(
        ready["settlement"]["unsettled_events"].as_u64().unwrap() >= LIMIT,
        "{ready}"
    );
    let page = app.metrics().await;
    assert_eq!(series(&page, "flashsale_settlement_behind", ""), Some(1.0));
    assert!(
        series(
            &page,
            "flashsale_admission_refusals_total",
            r#"reason="settlement_behind""#
        )
        .unwrap()
            >= 1.0
    );
    assert!(series(&page, "flashsale_reconciler_pending_events", "").unwrap() >= LIMIT as f64);
    let shard = |page: &str| {
        series(
            page,
            "flashsale_stream_backlog_entries",
            r#"shard="0",sku="tv""#,
        )
    };
    assert!(shard(&page).unwrap() >= LIMIT as f64, "{page}");

    // A cart is refused alike; a confirm of a hold goes on.
    let cart = app
        .open_cart(
            "c",
            json!({ "user_id": "cy", "lines": [{ "sku": "tv", "quantity": 1 }] }),
        )
        .await;
    assert_eq!(
        cart.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        cart.body
    );
    assert_eq!(cart.code(), "settlement_behind");
    let confirmed = app.confirm(&held[0]).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);

    // Nothing reads the streams: nothing is trimmed, however long it waits.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (length, added) = stream(&store).await;
    assert_eq!(length, added, "entries trimmed before they were settled");
    assert!(ledger.reservations("tv").await.unwrap().is_empty());

    // The reconciler returns: everything is settled, and reserves are taken again.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(reconciler.run(stopped));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = readiness(&app).await;
        if ready["settlement"]["refusing_reserves"] == false
            && ready["settlement"]["unsettled_events"] == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = ledger.reservations("tv").await.unwrap();
    assert_eq!(settled.len(), held.len(), "{settled:?}");
    assert_eq!(
        settled.iter().filter(|r| r.state == "confirmed").count(),
        1,
        "{settled:?}"
    );
    let again = app.reserve("tv", "late", 1, "k").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    let page = app.metrics().await;
    assert_eq!(series(&page, "flashsale_settlement_behind", ""), Some(0.0));
    assert!(shard(&page).unwrap() <= 1.0, "{page}");
    // What is settled is trimmed now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream(&store).await.0 >= added {
        assert!(Instant::now() < deadline, "settled entries never trimmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    running.await.unwrap();
}
