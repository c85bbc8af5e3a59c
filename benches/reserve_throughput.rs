//! Reserve throughput of the store called directly (no HTTP) by many tasks, beside
//! `redis-benchmark` running `EVALSHA` of a one-line script against the same private Redis
//! in the same run, and the Redis time each reserve costs (`INFO commandstats`).
//!
//! `cargo bench --bench reserve_throughput` (options: `-- --tasks 64 --secs 5`).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::ids::{random_token, IdempotencyKey, Sku, UserId};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale_testkit::LocalRedis;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn redis_benchmark(redis: &LocalRedis, clients: u64) -> Option<f64> {
    let sha = redis
        .command(&["SCRIPT", "LOAD", "return redis.call('DECRBY', KEYS[1], 1)"])
        .ok()?;
    let output = Command::new("redis-benchmark")
        .args([
            "-p",
            &redis.port().to_string(),
            "-n",
            "300000",
            "-c",
            &clients.to_string(),
            "-q",
        ])
        .args(["EVALSHA", &sha, "1", "bench:counter"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "EVALSHA ...: 91324.20 requests per second, p50=..."; the last \r-separated part.
    let last = text.rsplit('\r').next()?;
    last.split(": ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let tasks = arg("--tasks", 64);
    let secs = arg("--secs", 5);
    let redis = LocalRedis::start().expect("start redis-server");
    let mut options = StoreOptions::new(redis.url());
    options.prefix = format!("bench-{}:", random_token());
    let store = Store::connect(&options).await.expect("connect");
    let sku = Sku::new("bench").unwrap();
    let spec = SkuSpec {
        shards: Some(8),
        hold: Duration::from_secs(3600),
        ..SkuSpec::new(100_000_000)
    };
    store.load(&sku, &spec).await.unwrap();

    // Warm up (scripts loaded, connection up), then measure.
    for n in 0..100 {
        reserve(&store, &sku, &format!("warm{n}")).await;
    }
    let (usec_before, calls_before) = redis.script_stats();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, sku, stop, done) = (store.clone(), sku.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    reserve(&store, &sku, &format!("t{t}-{n}")).await;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reserves = done.load(Ordering::Relaxed);
    let (usec_after, calls_after) = redis.script_stats();
    let store_rate = reserves as f64 / elapsed;
    let usec_per_reserve = (usec_after - usec_before) as f64 / reserves.max(1) as f64;
    let calls_per_reserve = (calls_after - calls_before) as f64 / reserves.max(1) as f64;

    println!("store.reserve, {tasks} tasks, {secs} s: {reserves} reserves, {store_rate:.0}/s");
    println!("redis time per reserve: {usec_per_reserve:.2} us ({calls_per_reserve:.2} script calls per reserve)");
    // Where the script's time goes: the commands it calls, per reserve.
    let info = redis.command(&["INFO", "commandstats"]).unwrap_or_default();
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = line
            .trim_start_matches("cmdstat_")
            .split(':')
            .next()
            .unwrap_or("");
        let usec: f64 = line
            .split([':', ','])
            .find_map(|kv| kv.strip_prefix("usec="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if usec / reserves.max(1) as f64 >= 0.05 {
            println!(
                "  {name:<10} {:>6.2} us per reserve",
                usec / reserves.max(1) as f64
            );
        }
    }
    match redis_benchmark(&redis, 50) {
        Some(baseline) => println!(
            "redis-benchmark EVALSHA one-line script, 50 clients: {baseline:.0}/s; store.reserve = {:.2}x of it",
            store_rate / baseline
        ),
        None => println!("redis-benchmark not available: no baseline"),
    }
}

async fn reserve(store: &Store, sku: &Sku, user: &str) {
    let request = ReserveRequest {
        caller: None,
        sku: sku.clone(),
        user: UserId::new(user).unwrap(),
        quantity: 1,
        key: IdempotencyKey::new("k").unwrap(),
    };
    store.reserve(&request).await.expect("reserve");
}
