//! A SKU's life to retirement: a sale run, settled, retired by hand or by time; afterwards
//! nothing of the SKU is left in Redis, every read of it answers from the ledger, the
//! audit does not bring it back, and a late call recreates no key.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::ledger::LedgerRepo;
use flashsale::recovery::audit;
use flashsale::store::Store;
use flashsale_testkit::LocalPostgres;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sale::inspect;
use crate::support::*;

impl TestApp {
    async fn retire(&self, sku: &str) -> Reply {
        self.call(
            Method::DELETE,
            "/v1/skus/{sku}",
            &format!("/v1/skus/{sku}"),
            &[("authorization", &self.admin())],
            None,
        )
        .await
    }
}

/// Every key under the app's prefix that belongs to `sku` (its shards' keys carry the tag
/// `{<sku>:<n>}`, its routing record and lease `{<sku>}`), and whether the SKU set names it.
async fn leftovers(store: &Store, sku: &str) -> (Vec<String>, bool) {
    let mut conn = store.connection();
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", store.keys().prefix()))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(
            batch
                .into_iter()
                .filter(|k| k.contains(&format!("{{{sku}:")) || k.contains(&format!("{{{sku}}}"))),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let member: bool = redis::cmd("SISMEMBER")
        .arg(store.keys().registry())
        .arg(sku)
        .query_async(&mut conn)
        .await
        .unwrap();
    (keys, member)
}

/// Asserts nothing of `sku` is in Redis: no key, no shard hash, no SKU set entry.
async fn assert_gone(store: &Store, sku: &str, shards: u16, when: &str) {
    let (keys, member) = leftovers(store, sku).await;
    assert!(keys.is_empty(), "{when}: keys of {sku} left: {keys:?}");
    assert!(!member, "{when}: {sku} still in the SKU set");
    let sku_id = sku.parse().unwrap();
    for shard in 0..shards {
        let hash = store.keys().shard(&sku_id, shard).hash;
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&hash)
            .query_async(&mut store.connection())
            .await
            .unwrap();
        assert!(fields.is_empty(), "{when}: {hash} has {fields:?}");
    }
}

/// Asserts that the engine, whose only SKU was retired, keeps nothing in memory for SKUs
/// (its limiter entry goes at the next reload once refilled: waited for, up to 10 s).
async fn assert_untracked(app: &TestApp, when: &str) {
    // The stream backlog's series go at the next measurement (every second).
    let mut left = (String::new(), std::collections::BTreeMap::new());
    for _ in 0..200 {
        let page = app.metrics().await;
        let series: Vec<&str> = page
            .lines()
            .filter(|l| l.contains(r#"sku="gone""#))
            .collect();
        let tracked = app.tracked().await;
        if series.is_empty() && tracked.values().all(|n| *n == 0) {
            return;
        }
        left = (series.join("\n"), tracked);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{when}: the engine still keeps {:?} and these series:\n{}",
        left.1, left.0
    );
}

/// Polls `GET /v1/skus/{sku}` until its status is `status`; panics after a minute.
async fn until_status(app: &TestApp, sku: &str, status: &str) -> Value {
    for _ in 0..1_200 {
        let reply = app.get_sku(sku).await;
        if reply.status == StatusCode::OK && reply.body["status"] == status {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{sku} never became {status}: {:?}",
        app.get_sku(sku).await.body
    );
}

/// Reserve, confirm, cancel, cancel by key, an empty rollback, holds left to expire; a
/// retirement refused while holds are open, then accepted; then nothing in Redis, and the
/// ledger answers every read.
async fn a_sale_run_to_retirement(url: String) {
    let app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.audit_interval_s = 1;
        c.sweep_interval_ms = 50;
        c.retire_after_s = 0;
    })
    .await;
    let shards = 4u16;
    let loaded = app
        .put_sku(
            "gone",
            json!({ "stock": 40, "per_user_limit": 1, "hold_seconds": 0.5, "shards": shards }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);

    let mut expected: Vec<(String, &str)> = Vec::new();
    for n in 0..12 {
        let reply = app
            .reserve("gone", &format!("u{n}"), 1, &format!("k{n}"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let id = reply.body["reservation_id"].as_str().unwrap().to_owned();
        let state = match n % 4 {
            0 => {
                assert_eq!(app.confirm(&id).await.status, StatusCode::OK);
                "confirmed"
            }
            1 => {
                assert_eq!(app.cancel(&id).await.status, StatusCode::OK);
                "cancelled"
            }
            2 => {
                let by_key = app
                    .cancel_by_key("gone", &format!("u{n}"), &format!("k{n}"))
                    .await;
                assert_eq!(by_key.status, StatusCode::OK, "{:?}", by_key.body);
                "cancelled"
            }
            _ => "expired",
        };
        expected.push((id, state));
    }
    // An empty rollback: a barrier, no reservation.
    assert_eq!(
        app.cancel_by_key("gone", "u99", "never").await.status,
        StatusCode::OK
    );

    // While loaded, the engine reports the SKU's units.
    assert!(app
        .metrics()
        .await
        .contains(r#"flashsale_sku_units{sku="gone",state="held"}"#));

    // Holds are open: refused, with what to do.
    let refused = app.retire("gone").await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    assert_eq!(refused.code(), "sku_holds_open");
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("confirm or cancel"));
    assert_eq!(app.get_sku("gone").await.body["status"], "live");

    // The abandoned holds expire and are swept.
    for _ in 0..1_200 {
        if app.get_sku("gone").await.body["held"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = app.retire("gone").await;
    assert!(
        matches!(started.status, StatusCode::ACCEPTED | StatusCode::OK),
        "{:?}",
        started.body
    );
    let view = until_status(&app, "gone", "retired").await;
    assert_eq!(view["sold"], 3);
    assert_eq!(view["held"], 0);
    assert_eq!(view["stock"], 40);
    assert_eq!(view["available"], 37);
    assert_eq!(view["settled"]["reservations"], 12);
    assert_eq!(view["settled"]["expired"], 3);
    assert_eq!(view["settled"]["cancelled"], 6);

    let (store, ledger, _) = inspect(&app, &url).await;
    assert_gone(&store, "gone", shards, "after retirement").await;
    assert_untracked(&app, "after retirement").await;
    assert!(ledger.retired("gone").await.unwrap().is_some());

    // Every reservation answers from the ledger, marked retired.
    for (id, state) in &expected {
        let read = app.get(id).await;
        assert_eq!(read.status, StatusCode::OK, "{id}: {:?}", read.body);
        assert_eq!(read.body["status"], *state, "{id}");
        assert_eq!(read.body["retired"], true, "{id}");
    }

    // Late calls: refused, and not one key comes back.
    let late = app.reserve("gone", "u50", 1, "late").await;
    assert_eq!(late.status, StatusCode::GONE, "{:?}", late.body);
    assert_eq!(late.code(), "sku_retired");
    let replay = app.reserve("gone", "u0", 1, "k0").await;
    assert_eq!(replay.status, StatusCode::GONE, "{:?}", replay.body);
    let late_cancel = app.cancel_by_key("gone", "u51", "late").await;
    assert_eq!(
        late_cancel.status,
        StatusCode::NOT_FOUND,
        "{:?}",
        late_cancel.body
    );
    // A confirm or cancel answers as the store would for the ledger's state, from the
    // ledger: a repeated confirm is still a 200.
    for (n, action, status, code) in [
        (0, "confirm", StatusCode::OK, ""),
        (0, "cancel", StatusCode::CONFLICT, "reservation_confirmed"),
        (1, "cancel", StatusCode::OK, ""),
        (1, "confirm", StatusCode::CONFLICT, "reservation_cancelled"),
        (3, "confirm", StatusCode::GONE, "reservation_expired"),
        (3, "cancel", StatusCode::OK, ""),
    ] {
        let (id, state) = &expected[n];
        let late = match action {
            "confirm" => app.confirm(id).await,
            _ => app.cancel(id).await,
        };
        assert_eq!(
            late.status, status,
            "{action} of {state} {id}: {:?}",
            late.body
        );
        assert_eq!(late.code(), code, "{action} of {state} {id}");
        if status == StatusCode::OK {
            assert_eq!(late.body["status"], *state);
            assert_eq!(late.body["retired"], true);
        }
    }
    let unknown = app.confirm("gone~0~abcdefghijklmnopqrst").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{:?}", unknown.body);
    let reload = app.put_sku("gone", json!({ "stock": 5 })).await;
    assert_eq!(reload.status, StatusCode::GONE, "{:?}", reload.body);
    assert_eq!(reload.code(), "sku_retired");
    let restock = app.restock("gone", 5).await;
    assert_eq!(restock.status, StatusCode::NOT_FOUND, "{:?}", restock.body);
    // Repeating the retirement is idempotent.
    let again = app.retire("gone").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["status"], "retired");
    assert_gone(&store, "gone", shards, "after late calls").await;
    assert_untracked(&app, "after late calls").await;

    // The quick audit (every second) and a full audit with repair do not bring it back.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_gone(&store, "gone", shards, "after quick audits").await;
    let page = app.metrics().await;
    assert!(
        series(&page, "flashsale_audits_total", r#"outcome="clean""#).unwrap() >= 1.0,
        "{page}"
    );
    assert_eq!(
        series(&page, "flashsale_audits_total", r#"outcome="drift""#),
        Some(0.0)
    );
    let report = audit::run(&store, &ledger, None, true).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    assert_gone(&store, "gone", shards, "after audit --repair").await;

    // What a hand leaves behind of a retired SKU is deleted by a repair, not restored.
    redis::cmd("HSET")
        .arg(store.keys().shard(&"gone".parse().unwrap(), 1).hash)
        .arg(":fence")
        .arg("stray")
        .exec_async(&mut store.connection())
        .await
        .unwrap();
    let report = audit::run(&store, &ledger, None, true).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    assert_gone(&store, "gone", shards, "after a stray key was repaired").await;
    assert_eq!(app.get_sku("gone").await.body["status"], "retired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_run_to_retirement_leaves_nothing_in_redis_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_sale_run_to_retirement(format!("sqlite://{}/ledger.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_run_to_retirement_leaves_nothing_in_redis_on_postgres() {
    let postgres = LocalPostgres::start().expect("start a private PostgreSQL");
    a_sale_run_to_retirement(postgres.url()).await;
}

/// `--retire-after`: a SKU whose window ended is settled, then retired by the maintenance
/// pass, with no call; the SKU that is still live beside it is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sku_is_retired_by_itself_after_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.audit_interval_s = 1;
        c.sweep_interval_ms = 50;
        c.retire_after_s = 1;
    })
    .await;
    let ends = time::OffsetDateTime::now_utc() + Duration::from_millis(1_500);
    let ends = ends
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let loaded = app
        .put_sku(
            "brief",
            json!({ "stock": 10, "shards": 2, "ends_at": ends }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);
    assert_eq!(
        app.put_sku("stays", json!({ "stock": 10 })).await.status,
        StatusCode::CREATED
    );
    let reply = app.reserve("brief", "u1", 1, "k1").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.body["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(app.confirm(&id).await.status, StatusCode::OK);

    until_status(&app, "brief", "settled").await;
    let view = until_status(&app, "brief", "retired").await;
    assert_eq!(view["sold"], 1);
    let (store, _, _) = inspect(&app, &url).await;
    assert_gone(&store, "brief", 2, "after automatic retirement").await;
    let read = app.get(&id).await;
    assert_eq!(read.body["status"], "confirmed");
    assert_eq!(read.body["retired"], true);
    assert_eq!(app.get_sku("stays").await.body["status"], "live");
}
