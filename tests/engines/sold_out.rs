//! A sold-out flag raised on one engine drops within one gate poll when units come back
//! through another engine: the poll reads the sold-out SKU's units in Redis, wherever they
//! came back from.

use std::time::{Duration, Instant};

use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

const POLL_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_engine_reopens_the_sale_on_the_other_within_a_poll() {
    let redis = LocalRedis::start().unwrap();
    let prefix = prefix();
    let tweak = |c: &mut flashsale::config::ServeConfig| c.sold_out_poll_ms = POLL_MS;
    let a = Engine::start(&redis.url(), &prefix, tweak).await;
    let b = Engine::start(&redis.url(), &prefix, tweak).await;
    a.put_sku("tv", json!({ "stock": 1, "per_user_limit": 1 }))
        .await;
    let ann = a.reserve("tv", "ann").await;
    assert_eq!(ann.status, StatusCode::CREATED, "{ann:?}");
    assert_eq!(a.reserve("tv", "bob").await.code, "sold_out");

    // Until A refuses from memory (its flag up, the recorded keys loaded), a reserve there
    // would ask Redis, which would find a returned unit by itself.
    let from_memory = r#"flashsale_admission_refusals_total{reason="sold_out_flag"}"#;
    within(Duration::from_secs(3), || async {
        let before = a.metric(from_memory).await;
        a.reserve("tv", "probe").await.code == "sold_out" && a.metric(from_memory).await > before
    })
    .await
    .expect("A refuses from memory");

    // B cancels ann's reservation: B's own flag was never up, A's is.
    let id = ann.body["reservation_id"].as_str().unwrap();
    let cancelled = Instant::now();
    assert_eq!(b.cancel(id).await.status, StatusCode::OK);
    let mut n = 0;
    within(Duration::from_secs(3), || {
        n += 1;
        let user = format!("late{n}");
        let a = &a;
        async move { a.reserve("tv", &user).await.status == StatusCode::CREATED }
    })
    .await
    .expect("A sells again");
    let took = cancelled.elapsed();
    println!("A sold again {took:?} after B's cancel (poll {POLL_MS} ms)");
    assert!(
        took <= Duration::from_millis(POLL_MS + 150),
        "A stayed sold out {took:?} after the cancel on B"
    );
}
