//! Self-test of the fault-injection proxy in `tests/faults/proxy.rs`: each fault, tried
//! against a private `redis-server` with the `redis` client the engine uses.
//!
//! The only timing assertion is a lower bound on added latency. Everything else waits for an
//! outcome (with a generous deadline, so that a broken proxy fails instead of hanging).

#[path = "faults/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flashsale_testkit::LocalRedis;
use proxy::FaultProxy;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

/// Deadline for outcomes that should come at once; only a broken proxy reaches it.
const PATIENCE: Duration = Duration::from_secs(2);

/// A private Redis with a proxy in front of it.
async fn setup() -> (LocalRedis, FaultProxy) {
    let redis = LocalRedis::start().expect("start redis-server");
    let upstream = SocketAddr::from(([127, 0, 0, 1], redis.port()));
    let proxy = FaultProxy::start(upstream).await.expect("start proxy");
    (redis, proxy)
}

/// A multiplexed connection to `url`. The client's default 500 ms response timeout is raised
/// so that it never fires before an outcome the test waits for: errors here must come from
/// the proxy.
async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PATIENCE))
        .set_response_timeout(Some(PATIENCE));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn ping(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn forwards_commands() {
    let (_redis, proxy) = setup().await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    let _: () = conn.set("k", "v").await.unwrap();
    assert_eq!(conn.get::<_, String>("k").await.unwrap(), "v");
    assert_eq!(proxy.connections_accepted(), 1);
    assert_eq!(proxy.resets_injected(), 0);
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let (_redis, proxy) = setup().await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    let latency = Duration::from_millis(100);
    proxy.set_latency(latency);
    let start = Instant::now();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    // The request and the reply are each delayed, so twice the latency is a lower bound.
    let elapsed = start.elapsed();
    assert!(elapsed >= 2 * latency, "PING took only {elapsed:?}");
}

#[tokio::test]
async fn stall_holds_traffic_until_unstall() {
    let (_redis, proxy) = setup().await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    let _: () = conn.set("k", "held").await.unwrap();
    proxy.stall();
    // In a task of its own, so the GET stays in flight when the timeout gives up on it.
    let mut held = conn.clone();
    let mut get = tokio::spawn(async move { held.get::<_, String>("k").await });
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut get).await;
    assert!(waited.is_err(), "GET completed while stalled: {waited:?}");
    proxy.unstall();
    let reply = tokio::time::timeout(PATIENCE, get)
        .await
        .expect("held GET completes after unstall")
        .unwrap();
    assert_eq!(reply.unwrap(), "held");
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

#[tokio::test]
async fn reset_all_breaks_open_connections_only() {
    let (_redis, proxy) = setup().await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    proxy.reset_all();
    assert_eq!(proxy.resets_injected(), 1);
    let after = tokio::time::timeout(PATIENCE, ping(&mut conn))
        .await
        .expect("a reset connection fails at once");
    assert!(after.is_err(), "PING on a reset connection: {after:?}");
    let mut fresh = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn reset_after_request_runs_the_command_but_loses_the_reply() {
    let (redis, proxy) = setup().await;
    // Connect first: the client's own setup commands would be reset too.
    let mut conn = connect(&proxy.url()).await.unwrap();
    proxy.set_reset_after_request_probability(1.0);
    let incr = tokio::time::timeout(PATIENCE, conn.incr::<_, _, i64>("k", 1))
        .await
        .expect("a reset connection fails at once");
    assert!(incr.is_err(), "INCR through the proxy replied: {incr:?}");
    assert_eq!(proxy.resets_injected(), 1);

    // The proxy forwarded the INCR before resetting, but the server may run it a moment
    // after the client saw the reset: wait for it rather than assume it.
    let mut direct = connect(&redis.url()).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let k: Option<i64> = direct.get("k").await.unwrap();
        if k == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "INCR never ran: k = {k:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.set_reset_after_request_probability(0.0);
    let mut fresh = connect(&proxy.url()).await.unwrap();
    assert_eq!(fresh.incr::<_, _, i64>("k", 1).await.unwrap(), 2);
}

#[tokio::test]
async fn refuse_fails_new_connections_only() {
    let (_redis, proxy) = setup().await;
    let mut open = connect(&proxy.url()).await.unwrap();
    proxy.set_refuse(true);
    let refused = connect(&proxy.url()).await;
    assert!(refused.is_err(), "connected while refusing");
    assert_eq!(proxy.connections_accepted(), 2);
    assert_eq!(ping(&mut open).await.unwrap(), "PONG");
    proxy.set_refuse(false);
    let mut fresh = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn drop_resets_open_connections() {
    let (_redis, proxy) = setup().await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    drop(proxy);
    let after = tokio::time::timeout(PATIENCE, ping(&mut conn))
        .await
        .expect("a dropped proxy's connection fails at once");
    assert!(
        after.is_err(),
        "PING after the proxy was dropped: {after:?}"
    );
}
