//! What `--confirm-wait-replicas 1` costs a confirm, on a private Redis Cluster of three
//! masters with a replica each (`flashsale_testkit::LocalCluster`).
//!
//! `cargo bench --bench confirm_wait`. Two stores on the same cluster and key prefix, one
//! waiting for a replica after each confirm (`WAIT 1 100`), one not, confirm the holds of
//! one SKU in alternating rounds of 2,000 with 32 confirms in flight, so that both see the
//! same machine. Printed per confirm: the wall time over a round, and this process's CPU
//! (utime + stime from `/proc/self/stat`) over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::ids::{random_token, IdempotencyKey, ReservationId, Sku, UserId};
use flashsale::store::{ReplicaWait, ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale::topology::RedisTarget;
use flashsale_testkit::{LocalCluster, LocalClusterOptions};
use futures::stream::{self, StreamExt};

const ROUNDS: usize = 6;
const PER_ROUND: usize = 2_000;
const IN_FLIGHT: usize = 32;

/// This process's CPU time so far, in µs (utime + stime, at 100 ticks a second).
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10_000
}

async fn store(target: &RedisTarget, prefix: &str, wait: Option<ReplicaWait>) -> Store {
    let mut options = StoreOptions::new(target.clone());
    options.prefix = prefix.to_owned();
    options.timeout = Duration::from_secs(2);
    options.confirm_wait = wait;
    Store::connect(&options).await.expect("connect")
}

/// Confirms `ids` through `store`; returns (wall µs, CPU µs) per confirm.
async fn confirm_all(store: &Store, ids: &[ReservationId]) -> (f64, f64) {
    let (cpu, wall) = (cpu_us(), Instant::now());
    stream::iter(ids)
        .for_each_concurrent(IN_FLIGHT, |id| async move {
            store.confirm(id, None).await.expect("confirm");
        })
        .await;
    let n = ids.len() as f64;
    (
        wall.elapsed().as_micros() as f64 / n,
        (cpu_us() - cpu) as f64 / n,
    )
}

fn main() {
    let cluster = LocalCluster::start(LocalClusterOptions {
        masters: 3,
        replicas: 1,
    })
    .expect("start a cluster");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let target = RedisTarget::Cluster(cluster.seed_urls());
        let prefix = format!("bench-{}:", random_token());
        let plain = Arc::new(store(&target, &prefix, None).await);
        let waiting = store(
            &target,
            &prefix,
            Some(ReplicaWait {
                replicas: 1,
                timeout: Duration::from_millis(100),
            }),
        )
        .await;
        let sku = Sku::new("wait").unwrap();
        let total = ROUNDS * PER_ROUND;
        let spec = SkuSpec {
            shards: Some(6),
            hold: Duration::from_secs(3600),
            ..SkuSpec::new(total as u64)
        };
        plain.load(&sku, &spec).await.expect("load");
        let ids: Vec<ReservationId> = stream::iter(0..total)
            .map(|n| {
                let (plain, sku) = (plain.clone(), sku.clone());
                async move {
                    let request = ReserveRequest {
                        caller: None,
                        sku,
                        user: UserId::new(format!("u{n}")).unwrap(),
                        quantity: 1,
                        key: IdempotencyKey::new(format!("k{n}")).unwrap(),
                    };
                    plain
                        .reserve(&request)
                        .await
                        .expect("reserve")
                        .reservation
                        .id
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for (round, ids) in ids.chunks(PER_ROUND).enumerate() {
            if round % 2 == 0 {
                off.push(confirm_all(&plain, ids).await);
            } else {
                on.push(confirm_all(&waiting, ids).await);
            }
        }
        let mean = |rows: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
            rows.iter().map(pick).sum::<f64>() / rows.len() as f64
        };
        let (wall_off, cpu_off) = (mean(&off, |r| r.0), mean(&off, |r| r.1));
        let (wall_on, cpu_on) = (mean(&on, |r| r.0), mean(&on, |r| r.1));
        println!("confirm, {IN_FLIGHT} in flight, 3 masters x 1 replica:");
        println!("  no wait     {wall_off:8.1} µs wall  {cpu_off:6.1} µs CPU per confirm");
        println!("  WAIT 1 100  {wall_on:8.1} µs wall  {cpu_on:6.1} µs CPU per confirm");
        println!(
            "  ratio       {:8.2}x wall  {:6.2}x CPU",
            wall_on / wall_off,
            cpu_on / cpu_off
        );
        println!(
            "  short of replicas: {}",
            waiting.confirms_short_of_replicas()
        );
    });
}
