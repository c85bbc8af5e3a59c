//! `redis-server` SIGKILLed in the middle of a sale and started again from its append-only
//! file. With `appendfsync always` nothing acknowledged is lost. With `everysec` up to about
//! a second of acknowledged writes can be (the test cuts the file's tail, as a power loss
//! would); the engine notices the new Redis, audits it against the ledger and repairs it
//! before it sells again, so nothing the ledger settled is lost and nothing is sold twice.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::random_token;
use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::recovery::audit;
use flashsale::store::{Store, StoreOptions};
use flashsale_testkit::{Fsync, LocalRedis, LocalRedisOptions};
use serde_json::json;

use crate::engine::Engine;
use crate::sale::{run_buyers, verify};

/// Cuts the last `share` of the append-only file's newest part: what a machine that lost
/// power would lose of the writes not yet fsynced (a killed process loses nothing the
/// kernel already has, so the test takes it away by hand).
fn lose_aof_tail(redis: &LocalRedis, share: f64) -> u64 {
    let dir = redis.dir().join("appendonlydir");
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max()
        .expect("an incremental AOF file");
    let len = std::fs::metadata(&newest).unwrap().len();
    let keep = (len as f64 * (1.0 - share)) as u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    file.set_len(keep).unwrap();
    len - keep
}

/// Runs a sale, kills Redis once a quarter of the buyers are done, keeps it down for
/// longer than the engine's Redis timeout (so requests fail with 503 and clients retry),
/// starts it again (after `damage`, if any), and lets the buyers finish. Returns what they
/// were told and the buyers in flight at the kill.
async fn sale_through_a_redis_crash(
    redis: &mut LocalRedis,
    engine: &Engine,
    stock: u64,
    buyers: u64,
    damage: impl FnOnce(&LocalRedis),
    holds_may_vanish: bool,
) -> (crate::sale::Told, u64) {
    engine
        .put_sku(
            "sale",
            json!({ "stock": stock, "shards": 4, "hold_seconds": 600 }),
        )
        .await;
    let progress = Arc::new(AtomicU64::new(0));
    let running = tokio::spawn(run_buyers(
        engine.base(),
        "sale",
        buyers,
        32,
        progress.clone(),
        holds_may_vanish,
    ));
    while progress.load(Ordering::Relaxed) < buyers / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = progress.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        redis.kill();
        damage(redis);
        std::thread::sleep(Duration::from_millis(2_500));
        redis.restart().expect("restart redis");
    });
    (running.await.unwrap(), buyers.min(done + 32) - done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_fsync_always_nothing_acknowledged_is_lost() {
    const STOCK: u64 = 300;
    let mut redis = LocalRedis::start_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let prefix = format!("f{}:", random_token());
    let engine = Engine::start(&redis.url(), &database_url, &prefix, &[]).await;
    let (told, in_flight) =
        sale_through_a_redis_crash(&mut redis, &engine, STOCK, 600, |_| {}, false).await;
    assert!(
        told.retries > 0,
        "the outage cost no retry: it did not strike mid-sale"
    );
    let outcome = verify(&redis.url(), &prefix, &database_url, "sale", STOCK, &told).await;
    assert_eq!(outcome.sold, STOCK);
    println!(
        "redis SIGKILL (fsync always): {in_flight} buyers in flight, {} retries, {} sold of {STOCK}, lost 0, oversold 0",
        outcome.retries, outcome.sold
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_fsync_everysec_the_audit_repairs_from_the_ledger() {
    const STOCK: u64 = 300;
    let mut redis = LocalRedis::start_with(LocalRedisOptions {
        aof: Some(Fsync::EverySec),
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let prefix = format!("f{}:", random_token());
    let engine = Engine::start(&redis.url(), &database_url, &prefix, &[]).await;
    let lost_bytes = Arc::new(AtomicU64::new(0));
    let damage = {
        let lost_bytes = lost_bytes.clone();
        move |redis: &LocalRedis| lost_bytes.store(lose_aof_tail(redis, 0.3), Ordering::Relaxed)
    };
    let (told, in_flight) =
        sale_through_a_redis_crash(&mut redis, &engine, STOCK, 600, damage, true).await;

    let store = Store::connect(&StoreOptions {
        prefix: prefix.clone(),
        ..StoreOptions::new(redis.url())
    })
    .await
    .unwrap();
    let ledger = Ledger::connect(&database_url).await.unwrap();
    let mut options = ReconcileOptions::new();
    options.claim_idle = Duration::from_millis(100);
    let reconciler = Reconciler::new(store.clone(), ledger.clone(), options, None);
    let repair = audit::run(&store, &ledger, Some(&reconciler), true)
        .await
        .unwrap();
    assert!(repair.skipped.is_empty(), "{repair}");
    let after = audit::run(&store, &ledger, Some(&reconciler), false)
        .await
        .unwrap();
    assert!(after.drifts.is_empty(), "{after}");

    // What Redis lost before the reconciler saw it is the documented window; everything
    // the ledger settled is in Redis again, and nothing is sold twice.
    let confirmed: BTreeSet<String> = ledger
        .reservations("sale")
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.state == "confirmed")
        .map(|r| r.rid)
        .collect();
    let lost: Vec<&String> = told
        .confirmed
        .iter()
        .filter(|rid| !confirmed.contains(*rid))
        .collect();
    let totals = store.totals(&"sale".parse().unwrap()).await.unwrap();
    assert!(totals.conserved(), "{totals:?}");
    assert!(totals.sold + totals.held <= STOCK, "oversold: {totals:?}");
    assert_eq!(totals.sold, confirmed.len() as u64);
    assert!(
        confirmed.iter().all(|rid| told.confirmed.contains(rid)),
        "a sale in the ledger that no buyer was told of"
    );
    println!(
        "redis SIGKILL (fsync everysec, last {} AOF bytes lost): {in_flight} buyers in flight, {} retries, \
         drifts left for the test's own audit {}, holds lost in the window {}, confirmed sales lost {}, oversold 0",
        lost_bytes.load(Ordering::Relaxed),
        told.retries,
        repair.drifts.len(),
        told.lost_holds.len(),
        lost.len()
    );
}
