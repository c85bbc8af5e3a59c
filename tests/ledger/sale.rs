//! A sale through the HTTP API with the reconciler running inside the server; afterwards
//! the ledger equals Redis, reservation by reservation, on SQLite and on PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::recovery::audit;
use flashsale::store::{Store, StoreOptions};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// A store and a draining reconciler of the test's own on the app's Redis and ledger.
pub async fn inspect(app: &TestApp, url: &str) -> (Store, Ledger, Reconciler) {
    let store = Store::connect(&StoreOptions {
        prefix: app.prefix.clone(),
        ..StoreOptions::new(app.redis.url())
    })
    .await
    .unwrap();
    let ledger = Ledger::connect(url).await.unwrap();
    let mut options = ReconcileOptions::new();
    options.claim_idle = Duration::from_millis(200);
    let reconciler = Reconciler::new(store.clone(), ledger.clone(), options, None);
    (store, ledger, reconciler)
}

/// 20,000 mixed operations from 32 concurrent clients.
pub async fn mixed_sale(app: &Arc<TestApp>, operations: u64) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (app, done, held) = (app.clone(), done.clone(), held.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while done.fetch_add(1, Ordering::Relaxed) < operations {
                    n += 1;
                    let (user, qty, roll) = {
                        let mut rng = rand::rng();
                        (
                            rng.random_range(0..4_000),
                            rng.random_range(1..=2),
                            rng.random_range(0..10),
                        )
                    };
                    let user = format!("u{user}");
                    let key = format!("t{t}-{n}");
                    let reply = app.reserve("sale", &user, qty, &key).await;
                    assert!(
                        matches!(
                            reply.status,
                            StatusCode::CREATED
                                | StatusCode::CONFLICT
                                | StatusCode::UNPROCESSABLE_ENTITY
                        ),
                        "{:?}",
                        reply.body
                    );
                    if reply.status != StatusCode::CREATED {
                        if roll == 0 {
                            // A client that gave up: empty rollback of a key never reserved.
                            done.fetch_add(1, Ordering::Relaxed);
                            app.cancel_by_key("sale", &user, &format!("{key}-never"))
                                .await;
                        }
                        continue;
                    }
                    held.fetch_add(1, Ordering::Relaxed);
                    let id = reply.body["reservation_id"].as_str().unwrap().to_owned();
                    done.fetch_add(1, Ordering::Relaxed);
                    match roll {
                        0..=4 => drop(app.confirm(&id).await),
                        5..=6 => drop(app.cancel(&id).await),
                        7 => drop(app.cancel_by_key("sale", &user, &key).await),
                        _ => drop(app.get(&id).await),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    held.load(Ordering::Relaxed)
}

pub async fn ledger_equals_redis_after_a_sale(url: String) {
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.ledger.database_url = Some(url.clone());
            c.audit_interval_s = 0;
            c.sweep_interval_ms = 100;
        })
        .await,
    );
    let loaded = app
        .put_sku(
            "sale",
            json!({ "stock": 3000, "per_user_limit": 2, "hold_seconds": 1.5, "shards": 8 }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED);
    let held = mixed_sale(&app, 20_000).await;
    assert!(held > 1_000, "only {held} holds");
    // Abandoned holds expire and are swept; then everything is settled.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (store, ledger, reconciler) = inspect(&app, &url).await;
    store
        .sweep(&"sale".parse().unwrap(), 100_000)
        .await
        .unwrap();
    assert!(
        reconciler.drain(Duration::from_secs(60)).await.unwrap(),
        "streams not drained"
    );

    let report = audit::run(&store, &ledger, None, false).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    assert_eq!(report.reservations as u64, held);
    let figures = ledger.figures("sale").await.unwrap();
    let totals = store.totals(&"sale".parse().unwrap()).await.unwrap();
    assert_eq!(
        (
            figures.stock,
            figures.available(),
            figures.held,
            figures.sold
        ),
        (
            totals.loaded + totals.restocked,
            totals.available,
            totals.held,
            totals.sold
        )
    );
    assert!(
        figures.sold > 0 && figures.cancelled > 0 && figures.expired > 0,
        "{figures:?}"
    );
    assert!(!ledger.barriers("sale").await.unwrap().is_empty());
    // The API shows the settled figures next to the live ones.
    let sku = app.get_sku("sale").await;
    assert_eq!(sku.body["settled"]["sold"], figures.sold);
    assert_eq!(
        sku.body["settled"]["available"].as_u64(),
        Some(totals.available)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_operations_settle_exactly_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    ledger_equals_redis_after_a_sale(format!("sqlite://{}/ledger.db", dir.path().display())).await;
}
