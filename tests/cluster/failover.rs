//! A failover in the middle of a sale: three masters with two replicas each; the replicas
//! of the master of a hot SKU's shard are stopped (SIGSTOP) so that it takes writes they do
//! not receive, then the master is SIGKILLed and they resume: one of them is promoted
//! without those writes, and the engine goes on. What the failover lost is found by the
//! identity check and repaired from the ledger; nothing is sold beyond the ledger's stock.
//! With `--confirm-wait-replicas 1` no acknowledged confirm is lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::ids::Sku;
use flashsale::ledger::LedgerRepo;
use flashsale::topology::RedisTarget;
use flashsale_testkit::{LocalCluster, LocalClusterOptions, Role};
use parking_lot::Mutex;
use reqwest::StatusCode;

use crate::support::*;

const STOCK: u64 = 900;
const SHARDS: u16 = 6;
const BUYERS: usize = 16;

/// What a failover cost one sale.
struct Loss {
    /// A confirm's mean round trip through the API before the replicas were stopped.
    confirm_mean_us: u64,
    /// Confirms acknowledged while the replicas were stopped.
    lagging: usize,
    /// Confirms acknowledged to a buyer, in all.
    confirmed: usize,
    /// Of those, the ones not confirmed after the failover and its repair.
    confirms_lost: usize,
    /// Holds acknowledged (201) whose reservation was gone when its buyer confirmed it.
    holds_lost: u64,
    /// From the kill until every buyer had a reserve answered after the promotion, or the
    /// sale was over.
    unavailable: Duration,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} confirms acknowledged ({} while the replicas lagged), {} of them lost; \
             {} acknowledged holds lost; reserves answered again (or sold out) {:.1} s after the kill; \
             a confirm took {} µs on average before",
            self.confirmed,
            self.lagging,
            self.confirms_lost,
            self.holds_lost,
            self.unavailable.as_secs_f64(),
            self.confirm_mean_us
        )
    }
}

async fn sale_through_a_failover(confirm_wait: bool) -> Loss {
    let mut cluster = LocalCluster::start(LocalClusterOptions {
        masters: 3,
        replicas: 2,
    })
    .expect("cluster");
    let target = RedisTarget::Cluster(cluster.seed_urls());
    let dir = tempfile::tempdir().unwrap();
    let (prefix, database_url) = fresh(&dir);
    let engine = Arc::new(
        Engine::start_with(&target, &prefix, &database_url, |c| {
            if confirm_wait {
                c.redis.confirm_wait_replicas = 1;
                // Well below the Redis timeout: after the failover the promoted replica has
                // no replica of its own, and every confirm on it waits this long.
                c.redis.confirm_wait_ms = 50;
            }
        })
        .await,
    );
    engine.load("hot", STOCK, SHARDS, 600).await;

    let sold_out = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let holds_lost = Arc::new(AtomicU64::new(0));
    let reserves = Arc::new(AtomicU64::new(0));
    // Confirms answered before the replicas were stopped, and their time in µs.
    let timing = Arc::new(Mutex::new((0u64, 0u64)));
    let healthy = Arc::new(AtomicBool::new(true));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let buyers: Vec<_> = (0..BUYERS)
        .map(|b| {
            let (engine, sold_out, acknowledged) =
                (engine.clone(), sold_out.clone(), acknowledged.clone());
            let (holds_lost, reserves, errors) =
                (holds_lost.clone(), reserves.clone(), errors.clone());
            let (timing, healthy) = (timing.clone(), healthy.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !sold_out.load(Ordering::Acquire) {
                    n += 1;
                    let user = format!("b{b}-{n}");
                    // A buyer retries a 503 with the same key, as the API asks.
                    let (status, body) = retry(|| engine.reserve("hot", &user, 1, &user)).await;
                    reserves.fetch_add(1, Ordering::Relaxed);
                    match status {
                        StatusCode::CREATED => {
                            let id = body["reservation_id"].as_str().unwrap().to_owned();
                            let started = Instant::now();
                            let (status, body) = retry(|| engine.confirm(&id)).await;
                            if healthy.load(Ordering::Acquire) && status == StatusCode::OK {
                                let mut timing = timing.lock();
                                timing.0 += 1;
                                timing.1 += started.elapsed().as_micros() as u64;
                            }
                            match status {
                                StatusCode::OK => acknowledged.lock().push(id),
                                StatusCode::NOT_FOUND => {
                                    holds_lost.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => errors.lock().push(format!("confirm {status} {body}")),
                            }
                        }
                        StatusCode::CONFLICT if body["code"] == "sold_out" => {
                            sold_out.store(true, Ordering::Release);
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

    // A third of the way in, the master of shard 0 dies.
    until("a third of the stock confirmed", &buyers, || {
        acknowledged.lock().len() as u64 >= STOCK / 3
    })
    .await;
    let victim = cluster
        .master_of(&format!("{prefix}{{hot:0}}"))
        .expect("owner");
    let replicas: Vec<u32> = cluster
        .nodes()
        .expect("nodes")
        .into_iter()
        .filter(|n| {
            n.role
                == Role::Replica {
                    master_port: victim.port,
                }
        })
        .map(|n| n.pid)
        .collect();
    assert_eq!(replicas.len(), 2, "the victim's replicas");
    healthy.store(false, Ordering::Release);
    signal(&replicas, "-STOP");
    // The master goes on alone for a moment: what it takes now, its replicas never get.
    let lagging = acknowledged.lock().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lagging = acknowledged.lock().len() - lagging;
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim.port)).expect("kill the master");
    signal(&replicas, "-CONT");
    let cluster = Arc::new(cluster);
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            cluster.wait_failover(victim.port, Duration::from_secs(30))
        })
        .await
        .unwrap()
        .expect("the replica is promoted");
    }
    // The other masters sell on meanwhile: the sale may well be over by now.
    let before = reserves.load(Ordering::Relaxed);
    until("reserves answered after the failover", &buyers, || {
        reserves.load(Ordering::Relaxed) >= before + BUYERS as u64
    })
    .await;
    let unavailable = killed.elapsed();
    for buyer in buyers {
        buyer.await.unwrap();
    }
    let errors = errors.lock().clone();
    assert!(
        errors.is_empty(),
        "{} calls failed beyond retries, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    let (store, ledger) = inspect(&target, &prefix, &database_url).await;
    let sku = Sku::new("hot").unwrap();
    let report = audit_clean(&store, &ledger).await;
    assert!(
        report.drifts.is_empty(),
        "Redis and the ledger differ after the repair: {report}"
    );
    let totals = store.totals(&sku).await.unwrap();
    check_totals(&totals, STOCK);
    let figures = ledger.figures("hot").await.expect("ledger figures");
    assert!(
        figures.sold + figures.held <= figures.stock && figures.stock == STOCK,
        "the ledger sold beyond its stock: {figures:?}"
    );

    let acknowledged = acknowledged.lock().clone();
    let unique: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(
        unique.len(),
        acknowledged.len(),
        "a reservation confirmed twice"
    );
    let mut confirms_lost = 0;
    for id in &acknowledged {
        // The engine may still be repairing what the failover lost: it answers 503 then.
        let (status, body) = retry(|| engine.reservation(id)).await;
        if status != StatusCode::OK || body["status"] != "confirmed" {
            confirms_lost += 1;
        }
    }
    let (timed, micros) = *timing.lock();
    Loss {
        confirm_mean_us: micros / timed.max(1),
        lagging,
        confirmed: acknowledged.len(),
        confirms_lost,
        holds_lost: holds_lost.load(Ordering::Relaxed),
        unavailable,
    }
}

/// Waits until `done` holds or every buyer has stopped (the sale is over, or failed), for
/// at most two minutes: a sale that neither progresses nor ends fails the test rather than
/// hanging it.
async fn until(what: &str, buyers: &[tokio::task::JoinHandle<()>], done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() && !buyers.iter().all(|b| b.is_finished()) {
        assert!(Instant::now() < deadline, "waited two minutes for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to the processes.
fn signal(pids: &[u32], signal: &str) {
    for pid in pids {
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// Calls `call` until it answers something other than 503 (or a transport failure), for
/// at most a minute.
async fn retry<F, Fut>(mut call: F) -> (StatusCode, serde_json::Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, serde_json::Value)>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = call().await;
        let retryable = status == StatusCode::SERVICE_UNAVAILABLE || status.as_u16() == 599;
        if !retryable || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_mid_sale_is_repaired_from_the_ledger() {
    let loss = sale_through_a_failover(false).await;
    println!("failover without WAIT: {loss}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_confirm_wait_no_acknowledged_confirm_is_lost_in_a_failover() {
    let loss = sale_through_a_failover(true).await;
    println!("failover with WAIT 1: {loss}");
    assert_eq!(loss.confirms_lost, 0, "{loss}");
}
