//! A `redis-server` (append-only file, fsync always) killed and restarted in the middle of
//! a sale: the scripts come back by themselves, clients retrying with their idempotency
//! keys get each hold once, nothing acknowledged is lost, conservation holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::store::{HoldState, StoreError};
use flashsale_testkit::{Fsync, LocalRedisOptions};
use parking_lot::Mutex;

use crate::support::*;

/// Waits before a retry; a Redis that stays away for many seconds fails the test.
async fn backoff(failures: &AtomicU64, error: redis::RedisError) {
    let failed = failures.fetch_add(1, Ordering::Relaxed);
    assert!(failed < 2_000, "redis did not come back: {error}");
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripts_reload_and_nothing_acknowledged_is_lost_across_a_restart() {
    const STOCK: u64 = 400;
    const BUYERS: u64 = 800;
    let mut h = Harness::start_single_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .await;
    let tv = h.sku("tv", spec(STOCK, 4, 1, 600_000)).await;
    let next = Arc::new(AtomicU64::new(0));
    let acknowledged: Arc<Mutex<HashMap<String, (String, HoldState)>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, tv, next, acknowledged, failures) = (
            h.store.clone(),
            tv.clone(),
            next.clone(),
            acknowledged.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= BUYERS {
                    return;
                }
                let who = format!("buyer{n}");
                // A client retries with the same key until it gets an answer.
                let held = loop {
                    match store.reserve(&request(&tv, &who, 1, "order")).await {
                        Ok(r) => break Some(r.reservation),
                        Err(StoreError::SoldOut) => break None,
                        Err(StoreError::Redis(e)) => backoff(&failures, e).await,
                        // Queued when the connection dropped: refused until Redis is trusted.
                        Err(StoreError::Recovering) => {
                            assert!(failures.fetch_add(1, Ordering::Relaxed) < 2_000);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                };
                let Some(held) = held else { continue };
                let state = if n % 2 == 0 {
                    loop {
                        match store.confirm(&held.id, None).await {
                            Ok(r) => break r.state,
                            Err(StoreError::Redis(e)) => backoff(&failures, e).await,
                            // After the drop, until Redis is trusted again.
                            Err(StoreError::Recovering) => {
                                assert!(failures.fetch_add(1, Ordering::Relaxed) < 2_000);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                } else {
                    held.state
                };
                acknowledged
                    .lock()
                    .insert(who, (held.id.to_string(), state));
            }
        }));
    }
    // Let the sale get going, then crash Redis and bring it back.
    while next.load(Ordering::Relaxed) < BUYERS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| h.redis.single().restart()).expect("restart redis");
    // What the engine's gate task does after its check: this Redis synced every write to
    // its append-only file, so it lost nothing and is trusted again.
    let gate = {
        let store = h.store.clone();
        tokio::spawn(async move {
            loop {
                store.trust_redis();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    gate.abort();

    let acknowledged = acknowledged.lock().clone();
    assert_eq!(
        acknowledged.len() as u64,
        STOCK,
        "every unit was held by someone"
    );
    let mut sold = 0;
    for (who, (id, state)) in &acknowledged {
        let stored = h
            .store
            .reservation(&flashsale::ids::ReservationId::parse(id).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (&stored.user.to_string(), stored.state),
            (who, *state),
            "{id}"
        );
        sold += u64::from(*state == HoldState::Confirmed);
    }
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (0, STOCK - sold, sold));
    assert!(t.conserved(), "{t:?}");
    println!(
        "calls failed during the restart and retried: {}",
        failures.load(Ordering::Relaxed)
    );
}

/// A restock admitted before Redis went away must not reach the Redis that answers after
/// it until that one is checked: a restarted Redis may have lost the record that makes the
/// op idempotent (its write was in the lost tail of the append-only file) while the ledger
/// settled the op's first application, and applying it again would make units from
/// nothing. It is refused (`recovering`), as reserves and carts are, and goes through once
/// the Redis is trusted again, applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_waits_for_a_restarted_redis_to_be_checked() {
    let mut h = Harness::start_single_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .await;
    let tv = h.sku("tv", spec(10, 2, 1, 600_000)).await;
    let op = flashsale::ids::OpId::new("op-1").unwrap();
    tokio::task::block_in_place(|| h.redis.single().restart()).expect("restart redis");
    // The first call after the restart finds the connection gone (a read, it is sent again
    // on the new one): the store is suspect.
    h.store.totals(&tv).await.unwrap();
    assert!(h.store.redis_suspect());
    assert!(
        matches!(
            h.store.restock(&tv, 5, Some(&op)).await,
            Err(StoreError::Recovering)
        ),
        "a restock reached a Redis not yet checked"
    );
    assert_eq!(h.store.totals(&tv).await.unwrap().restocked, 0);
    h.store.trust_redis();
    h.store.restock(&tv, 5, Some(&op)).await.unwrap();
    h.store.restock(&tv, 5, Some(&op)).await.unwrap();
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.restocked, t.available), (5, 15));
}

/// The second half of a move cut short waits for a restarted Redis to be checked too: a
/// Redis that lost the receiver's record of the move could take its units in twice. The
/// move stays in transit, and is completed once, after the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_short_waits_for_a_restarted_redis_to_be_checked() {
    let mut h = Harness::start_single_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .await;
    let tv = h.sku("tv", spec(10, 2, 1, 600_000)).await;
    // The first half of a move, as an engine that crashed right after it would leave it.
    assert_eq!(h.move_out_only(&tv, "move-1", 3).await, (0, 3));
    tokio::task::block_in_place(|| h.redis.single().restart()).expect("restart redis");
    h.store.totals(&tv).await.unwrap();
    assert!(h.store.redis_suspect());
    assert!(
        matches!(
            h.store.recover_moves(&tv).await,
            Err(StoreError::Recovering)
        ),
        "a move was completed on a Redis not yet checked"
    );
    assert_eq!(h.store.totals(&tv).await.unwrap().in_transit, 3);
    h.store.trust_redis();
    assert_eq!(h.store.recover_moves(&tv).await.unwrap(), 1);
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.in_transit), (10, 0));
    assert!(t.conserved(), "{t:?}");
}
