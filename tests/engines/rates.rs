//! Two engines share one global rate: driven hard, together they admit no more than the
//! rate allows, plus one heartbeat's worth and the burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::registry::RateSplit;
use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

const RATE: u32 = 200;
const BURST: u32 = 20;

/// What one engine answered while driven.
#[derive(Debug, Default)]
struct Driven {
    /// Reserves that took a token: every answer but a rate refusal or a 503.
    admitted: AtomicU64,
    /// Rate refusals.
    limited: AtomicU64,
    /// 503s: refused before the buckets (an engine whose lease on its share ran out, on a
    /// starved machine), or in flight (none here: the bound is the default 4,096).
    unavailable: AtomicU64,
}

/// Reserves of distinct users on `engine`, `per_second` of them, open loop (each sent at
/// its time whatever the answers to the others: an engine's demand is what it is offered,
/// not what it answers quickly), until `until`.
async fn drive(engine: Arc<Engine>, per_second: u32, until: Instant, tag: &'static str) -> Driven {
    let driven = Arc::new(Driven::default());
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        let (engine, driven) = (engine.clone(), driven.clone());
        let user = format!("{tag}-{}", sent.len());
        sent.push(tokio::spawn(async move {
            let reply = engine.reserve("tv", &user).await;
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(reply.code, "rate_limited");
                driven.limited.fetch_add(1, Ordering::Relaxed);
            } else if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                driven.unavailable.fetch_add(1, Ordering::Relaxed);
            } else {
                driven.admitted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for request in sent {
        request.await.unwrap();
    }
    Arc::try_unwrap(driven).unwrap()
}

/// Starts two engines splitting [`RATE`] as `split` says, offers them `a_rate` and
/// `b_rate` reserves a second for three seconds, and checks the bound. Returns what each
/// admitted.
async fn two_engines_driven(split: RateSplit, a_rate: u32, b_rate: u32) -> (u64, u64) {
    let redis = LocalRedis::start().unwrap();
    let prefix = prefix();
    let tweak = move |c: &mut flashsale::config::ServeConfig| {
        c.rate_global = RATE;
        c.burst_global = BURST;
        c.rate_sku = 0;
        c.rate_split = split;
    };
    let a = Arc::new(Engine::start(&redis.url(), &prefix, tweak).await);
    a.put_sku(
        "tv",
        json!({ "stock": 1_000_000, "shards": 4, "per_user_limit": 1 }),
    )
    .await;
    let b = Arc::new(Engine::start(&redis.url(), &prefix, tweak).await);
    // Past the join: both have seen each other (its excess is not what is measured here).
    within(Duration::from_secs(3), || async {
        a.live().await == 2 && b.live().await == 2
    })
    .await
    .expect("both engines see each other");
    tokio::time::sleep(Duration::from_millis(2 * HEARTBEAT_MS)).await;

    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let (da, db) = tokio::join!(
        drive(a.clone(), a_rate, until, "a"),
        drive(b.clone(), b_rate, until, "b")
    );
    // Until the last answer: every reserve admitted was admitted by then.
    let seconds = started.elapsed().as_secs_f64();
    let admitted = [&da, &db].map(|d| d.admitted.load(Ordering::Relaxed));
    let limited = [&da, &db].map(|d| d.limited.load(Ordering::Relaxed));
    let unavailable = [&da, &db].map(|d| d.unavailable.load(Ordering::Relaxed));
    let total = admitted[0] + admitted[1];
    // R per second over the run, one heartbeat's worth, and the buckets' fill (at most one
    // burst between them) when the drive began.
    let heartbeat = HEARTBEAT_MS as f64 / 1_000.0;
    let bound = f64::from(RATE) * (seconds + heartbeat) + f64::from(BURST);
    println!(
        "{split:?}: admitted {admitted:?} (total {total}), limited {limited:?}, 503 \
         {unavailable:?} in {seconds:.2} s; bound {bound:.0}; shares now {:.3} / {:.3}",
        a.global_share().await,
        b.global_share().await,
    );
    assert!(
        (total as f64) <= bound,
        "two engines admitted {total} in {seconds:.2} s, more than {bound:.0}"
    );
    assert!(
        limited[0] > 0 && limited[1] > 0,
        "the rate never bound: {limited:?}"
    );
    // Both engines sold.
    assert!(admitted[0] > 0 && admitted[1] > 0, "{admitted:?}");
    (admitted[0], admitted[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_split_evenly_stay_within_the_rate() {
    // Each offered twice the whole rate.
    two_engines_driven(RateSplit::Even, 2 * RATE, 2 * RATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_split_by_demand_stay_within_the_rate_and_follow_demand() {
    // A is offered three times what B is, both more than the rate: A ends with the larger
    // share, and together they still stay within the rate.
    let (a, b) = two_engines_driven(RateSplit::Demand, 3 * RATE, RATE).await;
    assert!(a > b, "the busier engine admitted less: {a} vs {b}");
}
