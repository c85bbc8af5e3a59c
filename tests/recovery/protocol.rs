//! The repair protocol's own promises: a fenced SKU changes for nobody but its repairer;
//! repairs take turns; drift on a Redis that did not restart is reported, not repaired.

use std::time::Duration;

use flashsale::events::{Entry, Event};
use flashsale::ids::{IdempotencyKey, OpId, UserId};
use flashsale::ledger::{LedgerError, LedgerRepo};
use flashsale::maintenance;
use flashsale::recovery::audit;
use flashsale::store::{SkuSpec, StoreError};
use reqwest::StatusCode;
use serde_json::json;

use crate::app::TestApp;
use crate::support::*;

/// While a repair fences a SKU, nothing changes it: reserves, confirms, cancels and
/// restocks are refused with `Recovering`, the sweeper does not expire its holds, move
/// completion does not touch its pending moves. Lifted, all of it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_sku_changes_for_nobody() {
    let rig = Rig::start().await;
    let sku = flashsale::ids::Sku::new("tv").unwrap();
    let spec = SkuSpec {
        shards: Some(2),
        per_user_limit: 2,
        hold: Duration::from_millis(300),
        ..SkuSpec::new(20)
    };
    rig.store.load(&sku, &spec).await.unwrap();
    let held = rig
        .store
        .reserve(&one_unit(&sku, "ann", "k1"))
        .await
        .unwrap();
    let id = held.reservation.id.clone();
    rig.move_out(&sku, 1, 0, "m1", 4).await;
    let before = rig.totals(&sku).await;
    assert_eq!((before.held, before.in_transit), (1, 4));

    for shard in 0..2 {
        rig.store
            .fence_shard(&sku, shard, "repairer")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let other = rig.second_store().await;
    for store in [&rig.store, &other] {
        let refusals = [
            store.reserve(&one_unit(&sku, "bob", "k1")).await.err(),
            store.confirm(&id, None).await.err(),
            store.cancel(&id, None).await.err(),
            store
                .cancel_by_key(
                    &sku,
                    &one_unit(&sku, "cy", "k").user,
                    &one_unit(&sku, "cy", "k").key,
                    None,
                )
                .await
                .err(),
            store
                .restock(&sku, 5, Some(&OpId::new("op").unwrap()))
                .await
                .err(),
        ];
        for refusal in refusals {
            assert!(
                matches!(refusal, Some(StoreError::Recovering)),
                "{refusal:?}"
            );
        }
    }
    let (swept, moved) = maintenance::run_once(&rig.store).await.unwrap();
    assert_eq!(
        (swept.expired, moved),
        (0, 0),
        "maintenance left the fenced SKU alone"
    );
    let during = rig.totals(&sku).await;
    assert_eq!(
        (during.held, during.in_transit, during.available),
        (before.held, before.in_transit, before.available)
    );
    assert!(during.fenced);

    for shard in 0..2 {
        assert!(rig
            .store
            .unfence_shard(&sku, shard, "repairer")
            .await
            .unwrap());
    }
    let (swept, moved) = maintenance::run_once(&rig.store).await.unwrap();
    assert_eq!((swept.expired, moved), (1, 1));
    let after = rig.totals(&sku).await;
    assert_eq!((after.held, after.in_transit, after.available), (0, 0, 20));
    assert!(!after.fenced);
    assert_conserved(&after, 20, "after the fence");
}

/// Two engines repairing at once: the lease lets one in at a time, and the SKU ends
/// rebuilt once, equal to the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_repairs_at_once_take_turns() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 40, 4, 2).await;
    for n in 0..12 {
        let held = rig
            .store
            .reserve(&one_unit(&sku, &format!("u{n}"), "k"))
            .await
            .unwrap();
        if n % 2 == 0 {
            rig.store.confirm(&held.reservation.id, None).await.unwrap();
        }
    }
    rig.drain().await;
    rig.lose_redis_data().await;
    let other = rig.second_store().await;
    let (first, second) = tokio::join!(
        audit::run(&rig.store, &rig.ledger, Some(&rig.reconciler), true),
        audit::run(&other, &rig.ledger, None, true),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    let repaired = first.repaired.len() + second.repaired.len();
    assert_eq!(
        repaired, 1,
        "one repair rebuilt the SKU:\n{first}\n{second}"
    );
    let busy_or_clean = first.busy.len()
        + second.busy.len()
        + usize::from(first.drifts.is_empty() || second.drifts.is_empty());
    assert!(
        busy_or_clean >= 1,
        "the other waited its turn or found it clean:\n{first}\n{second}"
    );
    let totals = rig.totals(&sku).await;
    assert_conserved(&totals, 40, "after two repairs");
    assert_eq!((totals.sold, totals.held), (6, 6));
    assert_no_drift(&rig.audit().await, "after two repairs");
}

/// Drift found by the periodic audit on a Redis that did not restart is reported (log and
/// metric), never repaired by the engine on its own: only a restart proves a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_on_a_redis_that_did_not_restart_is_reported_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.no_ledger = false;
        c.audit_interval_s = 1;
    })
    .await;
    assert_eq!(
        app.put_sku("tv", json!({ "stock": 10, "shards": 1 }))
            .await
            .status,
        StatusCode::CREATED
    );
    let reply = app.reserve("tv", "ann", 1, "k").await;
    let id = reply.body["reservation_id"].as_str().unwrap().to_owned();
    app.confirm(&id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Someone lowers the sold count behind the engine's back.
    let hash = format!("{}{{tv:0}}", app.prefix);
    app.redis.command(&["HSET", &hash, ":sold", "0"]).unwrap();

    let metric = "flashsale_audit_drifts_total{kind=\"totals_mismatch\"}";
    let started = std::time::Instant::now();
    loop {
        let text = app.metrics().await;
        let count: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix(metric))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if count > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no drift reported:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sold = app.redis.command(&["HGET", &hash, ":sold"]).unwrap();
    assert_eq!(
        sold.trim(),
        "0",
        "the engine repaired a Redis that did not restart"
    );
    assert_eq!(app.get(&id).await.body["status"], "confirmed");
}

/// A request to a SKU under repair is answered 503 `recovering` with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_answers_recovering_while_a_sku_is_fenced() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 10, "shards": 1 })).await;
    let hash = format!("{}{{tv:0}}", app.prefix);
    app.redis
        .command(&["HSET", &hash, ":fence", "someone"])
        .unwrap();
    let refused = app.reserve("tv", "ann", 1, "k").await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "recovering")
    );
    assert!(refused.headers.contains_key("retry-after"));
    app.redis.command(&["HDEL", &hash, ":fence"]).unwrap();
    assert_eq!(
        app.reserve("tv", "ann", 1, "k").await.status,
        StatusCode::CREATED
    );
}

/// A batch read from Redis before a repair began is not applied: it may come from data
/// Redis lost, and the repair rebuilds Redis without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_read_before_a_repair_began_is_not_applied() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 10, 1, 1).await;
    rig.drain().await;
    let batch = [Entry {
        id: "1-0".to_owned(),
        sku: sku.clone(),
        shard: 0,
        ts_ms: 1,
        events: vec![Event::Barrier {
            user: UserId::new("ann").unwrap(),
            key: IdempotencyKey::new("k").unwrap(),
        }],
    }];
    let read_at = rig.ledger.epoch().await.unwrap();
    let before = rig.ledger.events_applied().await.unwrap();
    let moved = rig.ledger.advance_epoch().await.unwrap();
    assert_eq!(moved, read_at + 1);
    assert!(matches!(
        rig.ledger.apply_read_at(&batch, read_at).await,
        Err(LedgerError::Superseded)
    ));
    assert_eq!(rig.ledger.events_applied().await.unwrap(), before);
    let applied = rig.ledger.apply_read_at(&batch, moved).await.unwrap();
    assert_eq!(applied.applied, 1);
}
