//! The rules a client meets in a request body, field by field, and how each refusal reads:
//! the idempotency key's scope, quantities, whole numbers, and what to do after a 503.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::TestApp;

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_the_sku_and_the_user() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 10, "per_user_limit": 3 }))
        .await;
    app.put_sku("radio", json!({ "stock": 10, "per_user_limit": 3 }))
        .await;
    let body = |sku: &str, user: &str, quantity: u32| json!({ "sku": sku, "user_id": user, "quantity": quantity });
    let first = app.reserve_body("order-1", body("tv", "ann", 1)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let id = |reply: &crate::support::Reply| reply.body["reservation_id"].clone();

    // Every field of the body, changed with the same key:
    // the quantity, within the key's scope: refused.
    let quantity = app.reserve_body("order-1", body("tv", "ann", 2)).await;
    assert_eq!(
        (quantity.status, quantity.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        "{:?}",
        quantity.body
    );
    // the SKU, or the user: another scope, so another key and a reservation of its own.
    for (changed, reply) in [
        (
            "sku",
            app.reserve_body("order-1", body("radio", "ann", 1)).await,
        ),
        (
            "user_id",
            app.reserve_body("order-1", body("tv", "bob", 1)).await,
        ),
    ] {
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{changed}: {:?}",
            reply.body
        );
        assert!(
            reply.headers.get("idempotent-replayed").is_none(),
            "{changed}"
        );
        assert_ne!(id(&reply), id(&first), "{changed}");
    }
    // Nothing changed: the original reservation.
    let again = app.reserve_body("order-1", body("tv", "ann", 1)).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(id(&again), id(&first));
    assert_eq!(app.get_sku("tv").await.body["held"], 2);

    // The OpenAPI document states the same rule.
    let reserve = &app.spec["paths"]["/v1/reservations"]["post"];
    let key = reserve["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    let text = key["description"].as_str().unwrap();
    assert!(text.contains("scoped to (sku, user_id)"), "{text}");
    assert!(!text.contains("same key and body"), "{text}");
}

#[tokio::test]
async fn every_invalid_quantity_gets_one_code_that_names_the_limit() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 10, "per_user_limit": 2 }))
        .await;
    let wanted = "quantity must be a whole number from 1 to 2: at most 2 per user for this SKU";
    for (n, quantity) in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("2"),
        json!(null),
        json!(3),
        json!(1_000_000_000_000_u64),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = app
            .reserve_body(
                &format!("k{n}"),
                json!({ "sku": "tv", "user_id": "ann", "quantity": quantity }),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["detail"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_quantity",
                Some(wanted)
            ),
            "{quantity}"
        );
    }
    // A quantity for a SKU that does not exist: the SKU is what is wrong.
    let unknown = app
        .reserve_body(
            "k",
            json!({ "sku": "nope", "user_id": "ann", "quantity": -1 }),
        )
        .await;
    assert_eq!(unknown.code(), "sku_not_found");
    assert_eq!(
        app.get_sku("tv").await.body["available"],
        10,
        "nothing held"
    );
}

#[tokio::test]
async fn whole_numbers_may_be_written_with_a_zero_fraction() {
    let app = TestApp::spawn().await;
    let loaded = app
        .put_sku(
            "tv",
            json!({ "stock": 639.0, "per_user_limit": 2.0, "shards": 3.0 }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);
    assert_eq!(
        (
            &loaded.body["stock"],
            &loaded.body["per_user_limit"],
            &loaded.body["shards"]
        ),
        (&json!(639), &json!(2), &json!(3))
    );
    let held = app
        .reserve_body(
            "k",
            json!({ "sku": "tv", "user_id": "ann", "quantity": 2.0 }),
        )
        .await;
    assert_eq!(
        (held.status, &held.body["quantity"]),
        (StatusCode::CREATED, &json!(2))
    );
    let restocked = app.restock_body("tv", json!({ "quantity": 639.0 })).await;
    assert_eq!(restocked.status, StatusCode::OK, "{:?}", restocked.body);
    assert_eq!(restocked.body["stock"], 1278);
    for quantity in [json!(1.5), json!("5"), json!(0), json!(-3)] {
        let refused = app
            .restock_body("tv", json!({ "quantity": quantity }))
            .await;
        assert_eq!(
            (refused.code(), refused.body["detail"].as_str()),
            (
                "invalid_quantity",
                Some("quantity must be a whole number from 1 to 1000000000000")
            ),
            "{quantity}"
        );
    }
    let fraction = app.put_sku("radio", json!({ "stock": 2.5 })).await;
    assert_eq!(
        (fraction.status, fraction.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
    );
    let detail = fraction.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("expected a whole number (got 2.5)"),
        "{detail}"
    );
    let too_many = app
        .put_sku("radio", json!({ "stock": 5, "shards": 70000 }))
        .await;
    assert_eq!(
        (too_many.code(), too_many.body["detail"].as_str()),
        (
            "invalid_sku_spec",
            Some("invalid sku specification: shards must be between 1 and 1024")
        )
    );
}

#[tokio::test]
async fn refused_ids_say_which_characters_are_allowed() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 1 })).await;
    let reply = app
        .reserve_body("k", json!({ "sku": "tv", "user_id": "José" }))
        .await;
    assert_eq!(
        (reply.code(), reply.body["detail"].as_str()),
        (
            "invalid_user_id",
            Some("user_id may contain only ASCII letters and digits, '.', '_' and '-'")
        )
    );
    let value: Value = reply.body;
    assert_eq!(value["status"], 422);
}

#[tokio::test]
async fn a_sale_window_edge_before_1970_counts_as_the_epoch() {
    let app = TestApp::spawn().await;
    let open = app
        .put_sku(
            "old",
            json!({ "stock": 1, "starts_at": "1900-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(
        (open.status, &open.body["status"], &open.body["starts_at"]),
        (StatusCode::CREATED, &json!("live"), &Value::Null)
    );
    let over = app
        .put_sku(
            "older",
            json!({ "stock": 1, "ends_at": "1969-12-31T23:59:59Z" }),
        )
        .await;
    assert_eq!(
        (over.status, &over.body["status"]),
        (StatusCode::CREATED, &json!("ended"))
    );
    let garbled = app
        .put_sku("x", json!({ "stock": 1, "ends_at": "soon" }))
        .await;
    assert_eq!(garbled.code(), "invalid_time");
}

#[tokio::test]
async fn the_spec_links_each_creation_to_what_follows_it() {
    let app = TestApp::spawn().await;
    let operation_ids: Vec<&str> = app.spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let links = |path: &str, method: &str, status: &str| -> Vec<(String, Value)> {
        let links = &app.spec["paths"][path][method]["responses"][status]["links"];
        links
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} {status} has no links"))
            .values()
            .map(|l| {
                (
                    l["operationId"].as_str().unwrap().to_owned(),
                    l["parameters"].clone(),
                )
            })
            .collect()
    };
    let from_reserve = links("/v1/reservations", "post", "201");
    let mut targets: Vec<&str> = from_reserve.iter().map(|(id, _)| id.as_str()).collect();
    targets.sort();
    assert_eq!(targets, ["cancel", "confirm", "get_reservation"]);
    for (_, parameters) in &from_reserve {
        assert_eq!(
            parameters,
            &json!({ "id": "$response.body#/reservation_id" })
        );
    }
    for status in ["200", "201"] {
        assert_eq!(
            links("/v1/skus/{sku}", "put", status),
            [("get_sku".to_owned(), json!({ "sku": "$request.path.sku" }))]
        );
    }
    for (target, _) in from_reserve {
        assert!(operation_ids.contains(&target.as_str()), "{target}");
    }
}
