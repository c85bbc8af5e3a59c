//! What an engine keeps in memory is bounded by the SKUs loaded: requests naming SKUs that
//! do not exist leave nothing behind.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn two_hundred_made_up_sku_names_leave_no_engine_memory() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 1000, "per_user_limit": 5 }))
        .await;
    let held = app.reserve("tv", "ann", 1, "k").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let before = app.tracked().await;
    assert_eq!(before["gates"], 1, "{before:?}");
    assert_eq!(before["configs"], 1, "{before:?}");
    assert_eq!(before["queues"], 1, "{before:?}");

    for n in 0..200 {
        let sku = format!("made-up-{n}");
        let reserve = app.reserve(&sku, "ann", 1, "k").await;
        assert_eq!(reserve.status, StatusCode::NOT_FOUND, "{:?}", reserve.body);
        assert_eq!(reserve.code(), "sku_not_found");
        let by_key = app.cancel_by_key(&sku, "ann", "k").await;
        assert_eq!(by_key.status, StatusCode::NOT_FOUND, "{:?}", by_key.body);
        let id = format!("{sku}~0~abcdefghijklmnopqrst");
        assert_eq!(app.confirm(&id).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.get(&id).await.status, StatusCode::NOT_FOUND);
        let read = app.get_sku(&sku).await;
        assert_eq!(read.status, StatusCode::NOT_FOUND, "{:?}", read.body);
        let cart = app
            .call(
                Method::POST,
                "/v1/carts",
                "/v1/carts",
                &[("idempotency-key", &format!("c{n}"))],
                Some(json!({ "user_id": "ann", "lines": [{ "sku": sku, "quantity": 1 }] })),
            )
            .await;
        assert_eq!(cart.status, StatusCode::NOT_FOUND, "{:?}", cart.body);
    }
    let mut after = app.tracked().await;
    // The loaded SKU's limiter entry may have been dropped meanwhile, once refilled: at
    // most the one it had is left.
    assert!(
        after["rate_limiters"] <= 1,
        "limiter entries for made-up SKUs: {after:?}"
    );
    after.insert("rate_limiters".into(), before["rate_limiters"]);
    assert_eq!(after, before, "memory kept for made-up SKUs");
    // The loaded SKU is served as before.
    let again = app.reserve("tv", "bob", 1, "k").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
}
