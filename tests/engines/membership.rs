//! Joins, graceful leaves and crashes change every engine's share of the rates: a join or a
//! leave within two heartbeats, a crash once the crashed engine's entry has expired.

use std::time::{Duration, Instant};

use flashsale::registry::TTL_BEATS;
use flashsale_testkit::LocalRedis;

use crate::support::*;

/// Two heartbeats, and room for a slow machine.
fn two_beats() -> Duration {
    Duration::from_millis(2 * HEARTBEAT_MS + 600)
}

/// Redis's clock, ms.
fn redis_now(conn: &mut redis::Connection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn).unwrap();
    secs * 1_000 + micros / 1_000
}

/// Waits until every engine of `engines` holds `share` of the global rate and sees `live`
/// engines; panics after `limit`. Returns how long it took.
async fn shares_become(engines: &[&Engine], live: u64, share: f64, limit: Duration) -> Duration {
    let took = within(limit, || async {
        for engine in engines {
            if engine.live().await != live || !same(engine.global_share().await, share) {
                return false;
            }
        }
        true
    })
    .await;
    match took {
        Some(took) => took,
        None => {
            let mut seen = Vec::new();
            for engine in engines {
                seen.push((engine.live().await, engine.global_share().await));
            }
            panic!("not {live} engines at {share} each within {limit:?}: {seen:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_follow_joins_leaves_and_crashes() {
    let redis = LocalRedis::start().unwrap();
    let prefix = prefix();
    let a = Engine::start(&redis.url(), &prefix, |_| {}).await;
    assert_eq!(a.live().await, 1);
    assert!(same(a.global_share().await, 1.0));

    // A joins B: B holds its share from its first heartbeat, A within two.
    let b = Engine::start(&redis.url(), &prefix, |_| {}).await;
    assert!(
        same(b.global_share().await, 0.5),
        "the joiner starts at its share"
    );
    let took = shares_become(&[&a, &b], 2, 0.5, two_beats()).await;
    println!("join of a second engine seen by all in {took:?}");

    let c = Engine::start(&redis.url(), &prefix, |_| {}).await;
    let took = shares_become(&[&a, &b, &c], 3, 1.0 / 3.0, two_beats()).await;
    println!("join of a third engine seen by all in {took:?}");

    // A graceful leave removes the entry at once.
    c.leave().await;
    let took = shares_become(&[&a, &b], 2, 0.5, two_beats()).await;
    println!("graceful leave seen by all in {took:?}");

    // A crash leaves the entry until it expires: the share comes back then, not before.
    let b_id = b.id.clone();
    b.crash().await;
    let crashed = Instant::now();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let expiry: Option<u64> = redis::cmd("ZSCORE")
        .arg(format!("{prefix}{{engines}}"))
        .arg(&b_id)
        .query(&mut conn)
        .unwrap();
    let ttl = Duration::from_millis(HEARTBEAT_MS * u64::from(TTL_BEATS));
    shares_become(&[&a], 1, 1.0, ttl + two_beats()).await;
    let took = crashed.elapsed();
    println!("crash seen in {took:?} (entry lives {ttl:?})");
    // The entry outlived the crash (nothing removed it), and A took the share back only
    // once it had expired.
    let expiry = expiry.expect("the crashed engine's entry is still there");
    assert!(
        redis_now(&mut conn) >= expiry,
        "the share came back before the crashed engine's entry expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_sku_share_is_split_too() {
    let redis = LocalRedis::start().unwrap();
    let prefix = prefix();
    let a = Engine::start(&redis.url(), &prefix, |c| c.rate_sku = 1_000).await;
    let b = Engine::start(&redis.url(), &prefix, |c| c.rate_sku = 1_000).await;
    let series = r#"flashsale_rate_share_sku{sku="*"}"#;
    within(two_beats(), || async {
        same(a.metric(series).await, 0.5) && same(b.metric(series).await, 0.5)
    })
    .await
    .expect("both engines at half the per-SKU rate");
    b.leave().await;
    within(two_beats(), || async { same(a.metric(series).await, 1.0) })
        .await
        .expect("the per-SKU share back after the leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_cut_off_from_redis_for_longer_than_its_entry_lives_admits_no_reserve() {
    let redis = LocalRedis::start().unwrap();
    let a = Engine::start(&redis.url(), &prefix(), |c| {
        c.heartbeat_ms = 100;
        c.redis.redis_timeout_ms = 250;
        c.rate_global = 1_000;
    })
    .await;
    a.put_sku("tv", serde_json::json!({ "stock": 10 })).await;
    let share = || a.registry.shares().global.unwrap();
    within(Duration::from_secs(2), || async { same(share(), 1.0) })
        .await
        .expect("alone, the engine holds the whole rate");
    // Redis answers no one for 1.5 s: every heartbeat times out, and after 3 of them the
    // others would have dropped the entry.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_500)
        .arg("ALL")
        .exec(&mut conn)
        .unwrap();
    let paused = Instant::now();
    within(Duration::from_millis(1_200), || async { share() == 0.0 })
        .await
        .expect("the engine gave up its share");
    // Refused from memory (Redis does not answer): retry with the same key.
    let refused = a.reserve("tv", "ann").await;
    assert_eq!(
        (refused.status.as_u16(), refused.code.as_str()),
        (503, "unavailable"),
        "{refused:?}"
    );
    // Redis answers again: the share comes back within a retry or two.
    within(Duration::from_secs(2), || async { same(share(), 1.0) })
        .await
        .expect("the share came back");
    println!(
        "share back {:?} after the pause began (1.5 s)",
        paused.elapsed()
    );
    assert!(a.metric("flashsale_heartbeat_failures_total").await >= 3.0);
    assert_eq!(
        a.metric(r#"flashsale_admission_refusals_total{reason="unregistered"}"#)
            .await,
        1.0
    );
    assert_eq!(a.reserve("tv", "ann").await.status.as_u16(), 201);
}
