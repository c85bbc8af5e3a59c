//! The ledger on PostgreSQL: the same sale, and the database stopped for ten seconds in
//! the middle of one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::recovery::audit;
use flashsale_testkit::LocalPostgres;
use reqwest::StatusCode;
use serde_json::json;

use crate::sale::{inspect, ledger_equals_redis_after_a_sale};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_operations_settle_exactly_into_postgres() {
    let postgres = LocalPostgres::start().expect("start a private PostgreSQL");
    ledger_equals_redis_after_a_sale(postgres.url()).await;
}

/// `flashsale_reconciler_lag_seconds` from the app's metrics.
async fn lag(app: &TestApp) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("flashsale_reconciler_lag_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sale_goes_on_while_postgres_is_down_and_the_ledger_catches_up() {
    let mut postgres = LocalPostgres::start().expect("start a private PostgreSQL");
    let url = postgres.url();
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.ledger.database_url = Some(url.clone());
            c.audit_interval_s = 0;
        })
        .await,
    );
    app.put_sku(
        "sale",
        json!({ "stock": 100000, "per_user_limit": 1, "shards": 4 }),
    )
    .await;

    // Buyers keep coming for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (reserved, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let buyers: Vec<_> = (0..4)
        .map(|t| {
            let (app, stop, reserved, failed) =
                (app.clone(), stop.clone(), reserved.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let reply = app.reserve("sale", &format!("b{t}-{n}"), 1, "k").await;
                    let counter = if reply.status == StatusCode::CREATED {
                        &reserved
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_outage = reserved.load(Ordering::Relaxed);

    postgres.stop();
    let outage = Instant::now();
    let mut lag_at_worst: f64 = 0.0;
    while outage.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lag_at_worst = lag_at_worst.max(lag(&app).await);
    }
    let during = reserved.load(Ordering::Relaxed) - before_outage;
    postgres.start_again().expect("restart PostgreSQL");

    // The lag falls back under a second once the database is back.
    let started = Instant::now();
    let mut recovered = f64::NAN;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        recovered = lag(&app).await;
        if recovered < 1.0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        buyer.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "reserves failed while the database was down"
    );
    assert!(during > 100, "only {during} reserves during the outage");
    assert!(
        lag_at_worst > 5.0,
        "lag during the outage: {lag_at_worst} s"
    );
    assert!(recovered < 1.0, "lag after the outage: {recovered} s");
    println!(
        "postgres down 10 s: {during} reserves made during the outage, 0 failed, lag at worst \
         {lag_at_worst:.1} s, {recovered:.2} s {:.1} s after the database came back",
        started.elapsed().as_secs_f64()
    );

    let (store, ledger, reconciler) = inspect(&app, &url).await;
    assert!(reconciler.drain(Duration::from_secs(60)).await.unwrap());
    let report = audit::run(&store, &ledger, None, false).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    assert_eq!(report.reservations as u64, reserved.load(Ordering::Relaxed));
}
