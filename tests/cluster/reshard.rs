//! A reshard in the middle of a sale: the slots holding a hot SKU's shards move between
//! masters (keys migrating one by one, `ASK`, `TRYAGAIN`, then `MOVED`) while buyers reserve
//! and confirm. No buyer sees an error, and the sale ends exactly right.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::Sku;
use flashsale::topology::RedisTarget;
use flashsale_testkit::{LocalCluster, LocalClusterOptions};
use parking_lot::Mutex;
use reqwest::StatusCode;

use crate::support::*;

const STOCK: u64 = 3_000;
const SHARDS: u16 = 4;
const BUYERS: usize = 24;
/// Each shard's slot goes round the masters this many times.
const ROUNDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_mid_sale_is_invisible_to_buyers_and_loses_nothing() {
    let cluster = Arc::new(LocalCluster::start(LocalClusterOptions::default()).expect("cluster"));
    let target = RedisTarget::Cluster(cluster.seed_urls());
    let dir = tempfile::tempdir().unwrap();
    let (prefix, database_url) = fresh(&dir);
    let engine = Arc::new(Engine::start(&target, &prefix, &database_url).await);
    engine.load("hot", STOCK, SHARDS, 600).await;

    let resharding = Arc::new(AtomicBool::new(true));
    let reserved = Arc::new(AtomicU64::new(0));
    let moved = {
        let (cluster, prefix, resharding) = (cluster.clone(), prefix.clone(), resharding.clone());
        let reserved = reserved.clone();
        tokio::task::spawn_blocking(move || {
            // The buyers stop when the reshard is over, even one that failed.
            let ends = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reshard(&cluster, &prefix, &reserved)
            }));
            resharding.store(false, Ordering::Release);
            ends.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    };

    let confirmed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let buyers: Vec<_> = (0..BUYERS)
        .map(|b| {
            let (engine, resharding) = (engine.clone(), resharding.clone());
            let (reserved, confirmed, errors) =
                (reserved.clone(), confirmed.clone(), errors.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut sold_out_seen = false;
                // Until the stock is gone and the reshard is over.
                while !sold_out_seen || resharding.load(Ordering::Acquire) {
                    n += 1;
                    let user = format!("b{b}-{n}");
                    let (status, body) = engine.reserve("hot", &user, 1, &user).await;
                    match status {
                        StatusCode::CREATED => {
                            reserved.fetch_add(1, Ordering::Relaxed);
                            if n % 2 == 0 {
                                let id = body["reservation_id"].as_str().unwrap().to_owned();
                                let (status, body) = engine.confirm(&id).await;
                                if status == StatusCode::OK {
                                    confirmed.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    errors.lock().push(format!("confirm {status} {body}"));
                                }
                            }
                        }
                        StatusCode::CONFLICT if body["code"] == "sold_out" => {
                            sold_out_seen = true;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        _ => {
                            errors.lock().push(format!("reserve {status} {body}"));
                            // A buyer that cannot reserve stops: the test reports why.
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for buyer in buyers {
        buyer.await.unwrap();
    }
    let mid_sale = moved.await.unwrap();
    assert!(
        mid_sale >= usize::from(SHARDS),
        "only {mid_sale} slot moves happened while units were on sale"
    );

    let errors = errors.lock().clone();
    assert!(
        errors.is_empty(),
        "{} buyers' calls failed during the reshard, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let (store, ledger) = inspect(&target, &prefix, &database_url).await;
    let sku = Sku::new("hot").unwrap();
    let totals = store.totals(&sku).await.unwrap();
    check_totals(&totals, STOCK);
    // Every unit went to exactly one buyer who was told so: none lost, none invented.
    assert_eq!(totals.held + totals.sold, STOCK, "{totals:?}");
    assert_eq!(reserved.load(Ordering::Relaxed), STOCK, "{totals:?}");
    assert_eq!(totals.sold, confirmed.load(Ordering::Relaxed), "{totals:?}");
    let report = audit_clean(&store, &ledger).await;
    assert!(
        report.drifts.is_empty(),
        "ledger and Redis differ: {report}"
    );
    println!(
        "reshard mid-sale: {mid_sale} of {} slot moves while units sold, {} reserved, {} confirmed, no client error",
        ROUNDS * usize::from(SHARDS),
        STOCK, totals.sold
    );
}

/// Moves every shard's slot round the masters `ROUNDS` times; the number of moves that
/// ended while units were still being sold.
fn reshard(cluster: &LocalCluster, prefix: &str, reserved: &AtomicU64) -> usize {
    let mut mid_sale = 0;
    for _ in 0..ROUNDS {
        for shard in 0..SHARDS {
            let key = format!("{prefix}{{hot:{shard}}}");
            let owner = cluster.master_of(&key).expect("owner");
            let masters = cluster.masters().expect("masters");
            let next = masters
                .iter()
                .find(|m| m.port != owner.port)
                .expect("another master");
            cluster
                .move_slot_of(&key, next.port)
                .expect("move the slot");
            if reserved.load(Ordering::Relaxed) < STOCK {
                mid_sale += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    mid_sale
}
