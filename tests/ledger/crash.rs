//! Crashes on the ledger side: the reconciler process killed with SIGKILL mid-batch, and
//! Redis restarted without its append-only file and rebuilt from the ledger.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale::events::Entry;
use flashsale::ids::random_token;
use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::recovery::audit::{self, DriftKind};
use flashsale::store::{SkuSpec, Store, StoreOptions};
use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::json;

use crate::reconcile::request;
use crate::sale::inspect;
use crate::support::*;

fn reconciler_process(redis: &LocalRedis, prefix: &str, url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "reconcile",
            "--redis-url",
            &redis.url(),
            "--key-prefix",
            prefix,
        ])
        .args([
            "--database-url",
            url,
            "--batch",
            "100",
            "--claim-idle-ms",
            "300",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flashsale reconcile")
}

/// Every event in every stream of `sku`, counted.
async fn events_in_streams(redis: &LocalRedis, store: &Store, sku: &str, shards: u16) -> u64 {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut events = 0;
    for shard in 0..shards {
        let key = store.keys().shard(&sku.parse().unwrap(), shard).events;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for entry in reply.ids {
            let fields: HashMap<String, String> = entry
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap()))
                .collect();
            events += Entry::parse(&entry.id, &fields).unwrap().events.len() as u64;
        }
    }
    events
}

async fn wait_for(ledger: &Ledger, at_least: u64, within: Duration) -> u64 {
    let started = Instant::now();
    loop {
        let applied = ledger.events_applied().await.unwrap();
        if applied >= at_least || started.elapsed() > within {
            return applied;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciler_killed_mid_batch_loses_nothing_and_doubles_nothing() {
    let redis = LocalRedis::start().unwrap();
    let prefix = format!("t{}:", random_token());
    let store = Store::connect(&StoreOptions {
        prefix: prefix.clone(),
        ..StoreOptions::new(redis.url())
    })
    .await
    .unwrap();
    let tv = "tv".parse().unwrap();
    store
        .load(
            &tv,
            &SkuSpec {
                shards: Some(4),
                hold: Duration::from_secs(3600),
                ..SkuSpec::new(20_000)
            },
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..500 {
                    let r = store
                        .reserve(&request("tv", &format!("u{t}-{n}"), "k"))
                        .await
                        .unwrap();
                    if n % 2 == 0 {
                        store.confirm(&r.reservation.id, None).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let expected = events_in_streams(&redis, &store, "tv", 4).await;
    assert_eq!(expected, 4 + 8_000 + 4_000, "loads, reserves, confirms");

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let ledger = Ledger::connect(&url).await.unwrap();
    let mut first = reconciler_process(&redis, &prefix, &url);
    let applied = wait_for(&ledger, expected / 4, Duration::from_secs(60)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let at_kill = ledger.events_applied().await.unwrap();
    assert!(
        applied > 0 && at_kill < expected,
        "killed at {at_kill} of {expected}: not mid-way"
    );

    // The restarted reconciler claims what the dead one left pending and goes on.
    let mut second = reconciler_process(&redis, &prefix, &url);
    let settled = wait_for(&ledger, expected, Duration::from_secs(120)).await;
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    second.wait().unwrap();
    assert_eq!(settled, expected, "every event settled once");
    assert_eq!(
        ledger.events_applied().await.unwrap(),
        expected,
        "nothing doubled"
    );
    let report = audit::run(&store, &ledger, None, false).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    assert_eq!(ledger.figures("tv").await.unwrap().sold, 4_000);
    println!(
        "reconciler SIGKILL: killed with {at_kill} of {expected} events settled, restarted, \
         {settled} settled in the end, doubled 0, lost 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_without_aof_is_rebuilt_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    // Repair left to the operator: the engine must not sell on a Redis that lost data.
    let mut app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.audit_interval_s = 0;
        c.no_audit_repair = true;
    })
    .await;
    app.put_sku("sale", json!({ "stock": 100, "shards": 4 }))
        .await;
    let mut confirmed = Vec::new();
    let mut held = Vec::new();
    for n in 0..60 {
        let reply = app.reserve("sale", &format!("u{n}"), 1, "k").await;
        let id = reply.body["reservation_id"].as_str().unwrap().to_owned();
        match n % 3 {
            0 => {
                app.confirm(&id).await;
                confirmed.push(id);
            }
            1 => drop(app.cancel(&id).await),
            _ => held.push(id),
        }
    }
    app.cancel_by_key("sale", "barred", "k").await;
    let (store, ledger, reconciler) = inspect(&app, &url).await;
    assert!(reconciler.drain(Duration::from_secs(30)).await.unwrap());

    // Redis comes back empty: the engine notices the new Redis, finds it lost data, and
    // refuses to sell on it.
    app.redis.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..5 {
        let refused = app.reserve("sale", &format!("new{n}"), 1, "k").await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "nothing can be sold before the repair"
        );
    }
    let report = audit::run(&store, &ledger, None, false).await.unwrap();
    let kinds = report.by_kind();
    assert_eq!(
        kinds.get(&DriftKind::SkuMissingInRedis),
        Some(&1),
        "{report}"
    );
    assert_eq!(
        kinds.get(&DriftKind::ReservationMissingInRedis),
        Some(&60),
        "{report}"
    );
    assert_eq!(
        kinds.get(&DriftKind::BarrierMissingInRedis),
        Some(&1),
        "{report}"
    );

    let repaired = audit::run(&store, &ledger, Some(&reconciler), true)
        .await
        .unwrap();
    assert_eq!(repaired.repaired, vec!["sale".to_owned()], "{repaired}");
    let after = audit::run(&store, &ledger, Some(&reconciler), false)
        .await
        .unwrap();
    assert!(after.drifts.is_empty(), "{after}");
    // The engine sees the repaired Redis check out against the ledger and serves again.
    let started = std::time::Instant::now();
    while app.get_sku("sale").await.status != StatusCode::OK
        || app.reserve("sale", "probe", 1, "k").await.status == StatusCode::SERVICE_UNAVAILABLE
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the engine stayed suspended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for id in &confirmed {
        assert_eq!(
            app.get(id).await.body["status"],
            "confirmed",
            "a confirmed sale was lost"
        );
    }
    for id in &held {
        assert_eq!(app.get(id).await.body["status"], "held");
    }
    assert_eq!(
        app.reserve("sale", "barred", 1, "k").await.code(),
        "reservation_cancelled"
    );
    let sku = app.get_sku("sale").await;
    // 20 sold and 20 held before the crash, and the probe's hold since.
    assert_eq!(
        (sku.body["sold"].as_u64(), sku.body["held"].as_u64()),
        (Some(20), Some(21))
    );

    // The sale goes on to the end: the 60 units left sell once, no more.
    let mut bought = 0;
    for n in 0..200 {
        let reply = app.reserve("sale", &format!("late{n}"), 1, "k").await;
        if reply.status == StatusCode::CREATED {
            app.confirm(reply.body["reservation_id"].as_str().unwrap())
                .await;
            bought += 1;
        }
    }
    assert_eq!(bought, 59);
    let sku = app.get_sku("sale").await;
    assert_eq!(
        (sku.body["sold"].as_u64(), sku.body["available"].as_u64()),
        (Some(79), Some(0))
    );
    let end = audit::run(&store, &ledger, Some(&reconciler), false)
        .await
        .unwrap();
    assert!(end.drifts.is_empty(), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_repairs_a_restarted_redis_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let mut app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.audit_interval_s = 0;
    })
    .await;
    app.put_sku("sale", json!({ "stock": 30, "shards": 2 }))
        .await;
    let mut confirmed = Vec::new();
    for n in 0..20 {
        let reply = app.reserve("sale", &format!("u{n}"), 1, "k").await;
        let id = reply.body["reservation_id"].as_str().unwrap().to_owned();
        app.confirm(&id).await;
        confirmed.push(id);
    }
    let (store, ledger, reconciler) = inspect(&app, &url).await;
    assert!(reconciler.drain(Duration::from_secs(30)).await.unwrap());

    app.redis.restart().unwrap();
    // Requests are refused (503) while the engine checks the new Redis and rebuilds it.
    let started = std::time::Instant::now();
    let first = loop {
        let reply = app.reserve("sale", "after", 1, "k").await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never repaired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    for id in &confirmed {
        assert_eq!(app.get(id).await.body["status"], "confirmed");
    }
    let sku = app.get_sku("sale").await;
    assert_eq!(
        (
            sku.body["sold"].as_u64(),
            sku.body["held"].as_u64(),
            sku.body["available"].as_u64()
        ),
        (Some(20), Some(1), Some(9))
    );
    let after = audit::run(&store, &ledger, Some(&reconciler), false)
        .await
        .unwrap();
    assert!(after.drifts.is_empty(), "{after}");
}
