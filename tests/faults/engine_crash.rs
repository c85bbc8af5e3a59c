//! The engine SIGKILLed in the middle of a sale and started again: clients that retry with
//! their idempotency key get exactly one reservation each, nothing is lost, nothing doubled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::random_token;
use flashsale_testkit::{Fsync, LocalRedis, LocalRedisOptions};
use serde_json::json;

use reqwest::StatusCode;

use crate::engine::{until_answered, Engine};
use crate::sale::{run_buyers, settled_and_audited, verify};

/// A Redis that loses nothing (`appendfsync always`), an SQLite ledger, and an engine on
/// them under a key prefix of the test's own.
struct Durable {
    redis: LocalRedis,
    _dir: tempfile::TempDir,
    database_url: String,
    prefix: String,
    engine: Engine,
}

async fn durable() -> Durable {
    let redis = LocalRedis::start_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let prefix = format!("f{}:", random_token());
    let engine = Engine::start(&redis.url(), &database_url, &prefix, &[]).await;
    Durable {
        redis,
        _dir: dir,
        database_url,
        prefix,
        engine,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_engine_restarts_and_retried_requests_take_effect_once() {
    const STOCK: u64 = 300;
    const BUYERS: u64 = 600;
    let Durable {
        redis,
        _dir,
        database_url,
        prefix,
        mut engine,
    } = durable().await;
    engine
        .put_sku(
            "sale",
            json!({ "stock": STOCK, "shards": 4, "hold_seconds": 600 }),
        )
        .await;

    let progress = Arc::new(AtomicU64::new(0));
    let buyers = tokio::spawn(run_buyers(
        engine.base(),
        "sale",
        BUYERS,
        32,
        progress.clone(),
        false,
    ));
    while progress.load(Ordering::Relaxed) < BUYERS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight_at_kill =
        BUYERS.min(progress.load(Ordering::Relaxed) + 32) - progress.load(Ordering::Relaxed);
    engine.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine.spawn().await;
    let told = buyers.await.unwrap();

    let outcome = verify(&redis.url(), &prefix, &database_url, "sale", STOCK, &told).await;
    assert_eq!(
        outcome.sold, STOCK,
        "demand was twice the supply: every unit sold"
    );
    assert!(
        outcome.retries > 0,
        "the kill cost no retry: it did not strike mid-sale"
    );
    println!(
        "engine SIGKILL: {in_flight_at_kill} buyers in flight, {} retries, {} sold of {STOCK}, lost 0, oversold 0",
        outcome.retries, outcome.sold
    );
}

/// The engine SIGKILLed while buyers open and confirm carts of two SKUs, started again:
/// every cart ends whole (held, confirmed, or rolled back by the maintenance pass once its
/// lease ran out), each of its lines in its cart's state, and every unit held or sold
/// belongs to a cart that holds or bought it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_engine_leaves_no_partial_cart() {
    const STOCK: u64 = 120;
    const BUYERS: u64 = 200;
    const SKUS: [&str; 2] = ["phone", "case"];
    let Durable {
        redis,
        _dir,
        database_url,
        prefix,
        mut engine,
    } = durable().await;
    for sku in SKUS {
        engine
            .put_sku(
                sku,
                json!({ "stock": STOCK, "shards": 2, "hold_seconds": 600 }),
            )
            .await;
    }
    let progress = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    // Requests the kill left unanswered and a buyer sent again, opens and confirms alike,
    // counting a cart asked again while its rollback was pending.
    let retried = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let base = engine.base();
    let buyers: Vec<_> = (0..24)
        .map(|_| {
            let (progress, next, retried, client, base) = (
                progress.clone(),
                next.clone(),
                retried.clone(),
                client.clone(),
                base.clone(),
            );
            tokio::spawn(async move {
                let mut told = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= BUYERS {
                        return told;
                    }
                    let body = json!({ "user_id": format!("buyer-{n}"), "lines": [
                        { "sku": "phone" }, { "sku": "case" } ] });
                    // A careful client: the same key until a definite answer; "pending"
                    // (its cart being rolled back after the kill) is asked again.
                    let give_up = std::time::Instant::now() + Duration::from_secs(30);
                    let reply = loop {
                        let reply = until_answered("cart", || {
                            client
                                .post(format!("{base}/v1/carts"))
                                .header("idempotency-key", format!("cart-{n}"))
                                .json(&body)
                        })
                        .await;
                        retried.fetch_add(u64::from(reply.attempts - 1), Ordering::Relaxed);
                        if reply.body["code"] != "cart_pending" {
                            break reply;
                        }
                        retried.fetch_add(1, Ordering::Relaxed);
                        assert!(
                            std::time::Instant::now() < give_up,
                            "cart-{n} still pending after 30 s: nothing rolled it back"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    };
                    if reply.status == StatusCode::CREATED && n % 2 == 0 {
                        let id = reply.body["cart_id"].as_str().unwrap().to_owned();
                        let confirmed = until_answered("confirm", || {
                            client.post(format!("{base}/v1/carts/{id}/confirm"))
                        })
                        .await;
                        retried.fetch_add(u64::from(confirmed.attempts - 1), Ordering::Relaxed);
                        assert_eq!(
                            confirmed.body["status"], "confirmed",
                            "{:?}",
                            confirmed.body
                        );
                    }
                    told.push(reply);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while progress.load(Ordering::Relaxed) < BUYERS / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    engine.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.spawn().await;
    let mut told = Vec::new();
    for buyer in buyers {
        told.extend(buyer.await.unwrap());
    }
    let held = told
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count() as u64;
    assert!(
        held > 0 && held <= STOCK,
        "{held} carts held of {STOCK} units"
    );
    // The kill struck while buyers were waiting on answers: one request at least (an
    // open or a confirm) went unanswered and was sent again. The last answer a buyer kept
    // may be a first attempt (its earlier tries answered `cart_pending`), so every try
    // counts, not only the answers kept.
    assert!(
        retried.load(Ordering::Relaxed) > 0,
        "the kill cost no retry: it did not strike mid-cart"
    );

    // Every cart in Redis, whoever made it, and each of its lines as Redis has it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut in_carts: std::collections::HashMap<String, u64> = Default::default();
    let mut carts = 0;
    for bucket in 0..flashsale::ids::CART_BUCKETS {
        let records: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{prefix}{{cart~{bucket}}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        for (field, record) in records.iter().filter(|(f, _)| f.starts_with("cart~")) {
            carts += 1;
            let record: serde_json::Value = serde_json::from_str(record).unwrap();
            let state = record["state"].as_str().unwrap();
            let letter = match state {
                "held" => Some("h"),
                "confirmed" => Some("c"),
                "rolled_back" => None,
                other => panic!("cart {field} left {other}"),
            };
            for line in record["lines"].as_array().unwrap() {
                let (sku, rid) = (line["sku"].as_str().unwrap(), line["rid"].as_str().unwrap());
                let shard = rid.split('~').nth(1).unwrap();
                let hold: Option<String> = redis::cmd("HGET")
                    .arg(format!("{prefix}{{{sku}:{shard}}}"))
                    .arg(flashsale::store::hold_field(rid))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let hold_state = hold.as_deref().map(|h| &h[..1]);
                match letter {
                    Some(want) => {
                        assert_eq!(hold_state, Some(want), "{state} cart {field}, line {rid}");
                        *in_carts.entry(sku.to_owned()).or_default() += 1;
                    }
                    // Returned (cancelled, or a tombstone), or never taken.
                    None => assert!(
                        matches!(hold_state, None | Some("x")),
                        "rolled back cart {field}, line {rid} is {hold:?}"
                    ),
                }
            }
        }
    }
    assert!(carts as u64 >= held);
    for sku in SKUS {
        let view = engine.get_sku(sku).await;
        let (available, held, sold) = (
            view["available"].as_u64().unwrap(),
            view["held"].as_u64().unwrap(),
            view["sold"].as_u64().unwrap(),
        );
        assert_eq!(available + held + sold, STOCK, "{sku}: {view}");
        assert_eq!(
            held + sold,
            in_carts[sku],
            "{sku}: a unit held outside any cart"
        );
    }
    // The ledger, once settled, agrees with Redis reservation by reservation: lines,
    // returned lines and the tombstones of lines never taken included.
    settled_and_audited(&redis.url(), &prefix, &database_url).await;
    println!(
        "engine SIGKILL mid-cart: {carts} carts recorded, {held} held or bought, none partial"
    );
}
