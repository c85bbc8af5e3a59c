//! `/v1/carts`: a cart held whole or refused whole, confirmed and cancelled whole.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

async fn open(app: &TestApp, key: &str, body: Value) -> Reply {
    app.open_cart(key, body).await
}

async fn on_cart(app: &TestApp, method: Method, id: &str, action: &str) -> Reply {
    let (route, path) = match action {
        "" => ("/v1/carts/{id}".to_owned(), format!("/v1/carts/{id}")),
        _ => (
            format!("/v1/carts/{{id}}/{action}"),
            format!("/v1/carts/{id}/{action}"),
        ),
    };
    app.call(method, &route, &path, &[], None).await
}

#[tokio::test]
async fn a_cart_is_held_read_confirmed_and_replayed_whole() {
    let app = TestApp::spawn().await;
    for sku in ["phone", "case"] {
        let put = app
            .put_sku(
                sku,
                json!({ "stock": 3, "per_user_limit": 2, "hold_seconds": 60 }),
            )
            .await;
        assert_eq!(put.status, StatusCode::CREATED);
    }
    let body = json!({ "user_id": "ann", "lines": [
        { "sku": "phone", "quantity": 1 }, { "sku": "case", "quantity": 2 } ] });
    let held = open(&app, "c-1", body.clone()).await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    assert_eq!(held.body["status"], "held");
    let id = held.body["cart_id"].as_str().unwrap().to_owned();
    let lines = held.body["lines"].as_array().unwrap().clone();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["sku"], "case", "lines in SKU order");
    let again = open(&app, "c-1", body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["cart_id"], id.as_str());
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // Each line is a reservation that names its cart, and is not settled alone.
    for line in &lines {
        let rid = line["reservation_id"].as_str().unwrap();
        let read = app.get(rid).await;
        assert_eq!(read.body["cart_id"], id.as_str());
        assert_eq!(read.body["status"], "held");
        let alone = app.confirm(rid).await;
        assert_eq!(
            (alone.status, alone.code()),
            (StatusCode::CONFLICT, "cart_line")
        );
        let alone = app.cancel(rid).await;
        assert_eq!(alone.code(), "cart_line");
    }
    assert_eq!(app.get_sku("case").await.body["available"], 1);

    let confirmed = on_cart(&app, Method::POST, &id, "confirm").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    assert_eq!(confirmed.body["status"], "confirmed");
    let read = on_cart(&app, Method::GET, &id, "").await;
    assert_eq!(read.body["status"], "confirmed");
    for line in &lines {
        let rid = line["reservation_id"].as_str().unwrap();
        assert_eq!(app.get(rid).await.body["status"], "confirmed");
    }
    let cancel = on_cart(&app, Method::POST, &id, "cancel").await;
    assert_eq!(
        (cancel.status, cancel.code()),
        (StatusCode::CONFLICT, "cart_confirmed")
    );
    let missing = on_cart(&app, Method::GET, "cart~3~aaaaaaaaaaaaaaaaaaaa", "").await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "cart_not_found")
    );
    let malformed = on_cart(&app, Method::GET, "nope", "").await;
    assert_eq!(malformed.code(), "cart_not_found");
}

#[tokio::test]
async fn a_refused_cart_names_each_refused_line_and_holds_nothing() {
    let app = TestApp::spawn().await;
    for (sku, stock) in [("seat-a", 1), ("seat-b", 1), ("zz-parking", 0)] {
        app.put_sku(sku, json!({ "stock": stock, "per_user_limit": 1 }))
            .await;
    }
    let body = json!({ "user_id": "ann", "lines": [
        { "sku": "seat-a" }, { "sku": "seat-b" }, { "sku": "zz-parking" } ] });
    let refused = open(&app, "c-1", body.clone()).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::CONFLICT, "sold_out")
    );
    assert_eq!(refused.body["lines"][0]["sku"], "zz-parking");
    assert_eq!(refused.body["lines"][0]["code"], "sold_out");
    assert_eq!(refused.body["lines"].as_array().unwrap().len(), 1);
    for seat in ["seat-a", "seat-b"] {
        let sku = app.get_sku(seat).await;
        assert_eq!(
            (sku.body["available"].clone(), sku.body["held"].clone()),
            (json!(1), json!(0))
        );
    }
    // Sold out is now known from memory: the same cart is refused before Redis, alike.
    let again = open(&app, "c-2", body).await;
    assert_eq!(again.code(), "sold_out");
    assert_eq!(again.body["lines"][0]["sku"], "zz-parking");

    // A quantity over a SKU's limit names that line; nothing is held either.
    let over = open(
        &app,
        "c-3",
        json!({ "user_id": "ann", "lines": [
        { "sku": "seat-a", "quantity": 1 }, { "sku": "seat-b", "quantity": 5 } ] }),
    )
    .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity")
    );
    assert_eq!(over.body["lines"][0]["sku"], "seat-b");
    assert_eq!(app.get_sku("seat-a").await.body["available"], 1);

    // Carts that cannot be: no lines, a SKU twice, an unknown SKU.
    let empty = open(&app, "c-4", json!({ "user_id": "ann", "lines": [] })).await;
    assert_eq!(
        (empty.status, empty.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_cart")
    );
    let twice = open(
        &app,
        "c-5",
        json!({ "user_id": "ann", "lines": [
        { "sku": "seat-a" }, { "sku": "seat-a" } ] }),
    )
    .await;
    assert_eq!(twice.code(), "invalid_cart");
    let unknown = open(
        &app,
        "c-6",
        json!({ "user_id": "ann", "lines": [
        { "sku": "seat-a" }, { "sku": "ghost" } ] }),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "sku_not_found")
    );
    assert_eq!(unknown.body["lines"][0]["sku"], "ghost");
    let no_key = app
        .call(
            Method::POST,
            "/v1/carts",
            "/v1/carts",
            &[],
            Some(json!({ "user_id": "ann", "lines": [{ "sku": "seat-a" }] })),
        )
        .await;
    assert_eq!(no_key.code(), "missing_idempotency_key");
}

#[tokio::test]
async fn a_line_found_sold_out_in_redis_refuses_the_next_carts_from_memory() {
    let app = TestApp::spawn().await;
    app.put_sku("a-seat", json!({ "stock": 3, "per_user_limit": 1 }))
        .await;
    app.put_sku("z-parking", json!({ "stock": 1, "per_user_limit": 1 }))
        .await;
    let cart = |who: &str| json!({ "user_id": who, "lines": [{ "sku": "a-seat" }, { "sku": "z-parking" }] });
    assert_eq!(
        open(&app, "k", cart("ann")).await.status,
        StatusCode::CREATED
    );
    // Redis says the parking is gone: the seat taken for it goes back.
    let refused = open(&app, "k", cart("bob")).await;
    assert_eq!(refused.code(), "sold_out");
    // Once the SKU's recorded keys are loaded (in the background, as for a reserve), the
    // next carts naming it are refused before Redis: no script runs for them.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for n in 0.. {
        let calls = app.script_calls();
        let again = open(&app, &format!("k{n}"), cart(&format!("cat{n}"))).await;
        assert_eq!(again.code(), "sold_out");
        assert_eq!(again.body["lines"][0]["sku"], "z-parking");
        if app.script_calls() == calls {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "carts of a SKU Redis said is sold out still reach Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.get_sku("a-seat").await.body["available"], 2);
    // Refused from memory or not, a key that made a cart gets it back, and with other
    // lines is refused as reused.
    let replay = open(&app, "k", cart("ann")).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let other = open(
        &app,
        "k",
        json!({ "user_id": "ann", "lines": [{ "sku": "z-parking" }] }),
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
}
