//! Client tokens: with `--client-token NAME=TOKEN` configured, every reservation and cart
//! route refuses a request without one of the tokens, a hold answers only to the caller
//! that made it, confirms and cancels spend the reserves' tokens, and the metrics name the
//! caller.

use flashsale::config::ServeConfig;
use flashsale::server::Application;
use flashsale_testkit::LocalRedis;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

const SHOP: &str = "shop-token-0123456789abcdef";
const OTHER: &str = "other-token-0123456789abcdef";

fn with_clients(config: &mut ServeConfig) {
    config.client_tokens = vec![format!("shop={SHOP}"), format!("other={OTHER}")];
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A call of `route` (the spec's template) on `path` with `auth` as the Authorization
/// header (none if empty) and an idempotency key.
async fn as_caller(
    app: &TestApp,
    auth: &str,
    method: Method,
    route: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut headers = vec![("idempotency-key", "k-auth")];
    if !auth.is_empty() {
        headers.push(("authorization", auth));
    }
    app.call(method, route, path, &headers, body).await
}

#[tokio::test]
async fn every_client_route_refuses_a_missing_or_wrong_token() {
    let app = TestApp::spawn_with(with_clients).await;
    app.put_sku("tv", json!({ "stock": 10 })).await;
    let held = as_caller(
        &app,
        &bearer(SHOP),
        Method::POST,
        "/v1/reservations",
        "/v1/reservations",
        Some(json!({ "sku": "tv", "user_id": "ann" })),
    )
    .await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let id = held.body["reservation_id"].as_str().unwrap().to_owned();
    let cart = "cart~0~aaaaaaaaaaaaaaaaaaaa";
    let routes: Vec<(Method, &str, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/reservations",
            "/v1/reservations".into(),
            Some(json!({ "sku": "tv", "user_id": "bob" })),
        ),
        (
            Method::GET,
            "/v1/reservations/{id}",
            format!("/v1/reservations/{id}"),
            None,
        ),
        (
            Method::POST,
            "/v1/reservations/{id}/confirm",
            format!("/v1/reservations/{id}/confirm"),
            None,
        ),
        (
            Method::POST,
            "/v1/reservations/{id}/cancel",
            format!("/v1/reservations/{id}/cancel"),
            None,
        ),
        (
            Method::POST,
            "/v1/reservations/cancel-by-key",
            "/v1/reservations/cancel-by-key".into(),
            Some(json!({ "sku": "tv", "user_id": "ann", "idempotency_key": "k-auth" })),
        ),
        (
            Method::POST,
            "/v1/carts",
            "/v1/carts".into(),
            Some(json!({ "user_id": "bob", "lines": [{ "sku": "tv", "quantity": 1 }] })),
        ),
        (
            Method::GET,
            "/v1/carts/{id}",
            format!("/v1/carts/{cart}"),
            None,
        ),
        (
            Method::POST,
            "/v1/carts/{id}/confirm",
            format!("/v1/carts/{cart}/confirm"),
            None,
        ),
        (
            Method::POST,
            "/v1/carts/{id}/cancel",
            format!("/v1/carts/{cart}/cancel"),
            None,
        ),
    ];
    // The admin token opens the admin routes, not these.
    let admin = app.admin();
    let wrong = bearer("not-a-token-of-this-engine");
    for (method, route, path, body) in &routes {
        for (auth, code) in [
            ("", "unauthenticated"),
            (wrong.as_str(), "invalid_token"),
            (admin.as_str(), "invalid_token"),
            ("Basic c2hvcDpzaG9w", "unauthenticated"),
        ] {
            let reply = as_caller(&app, auth, method.clone(), route, path, body.clone()).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}: {:?}",
                reply.body
            );
            assert_eq!(reply.code(), code, "{method} {path} with {auth:?}");
            let challenge = reply.headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    // Nothing the refused requests asked for happened: the one hold is still held.
    let read = as_caller(
        &app,
        &bearer(SHOP),
        Method::GET,
        "/v1/reservations/{id}",
        &format!("/v1/reservations/{id}"),
        None,
    )
    .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["status"], "held");
    assert_eq!(app.get_sku("tv").await.body["held"], 1);
    // The SKU's public routes stay open.
    assert_eq!(app.get_sku("tv").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_caller_cannot_touch_another_callers_reservation_or_cart() {
    let app = TestApp::spawn_with(with_clients).await;
    app.put_sku("tv", json!({ "stock": 10 })).await;
    let (shop, other) = (bearer(SHOP), bearer(OTHER));
    let reserve = |auth: String, user: &'static str| {
        let app = &app;
        async move {
            as_caller(
                app,
                &auth,
                Method::POST,
                "/v1/reservations",
                "/v1/reservations",
                Some(json!({ "sku": "tv", "user_id": user })),
            )
            .await
        }
    };
    let held = reserve(shop.clone(), "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let id = held.body["reservation_id"].as_str().unwrap().to_owned();
    let on = |action: &str| {
        (
            format!("/v1/reservations/{{id}}{action}"),
            format!("/v1/reservations/{id}{action}"),
        )
    };
    for (method, action) in [
        (Method::GET, ""),
        (Method::POST, "/confirm"),
        (Method::POST, "/cancel"),
    ] {
        let (route, path) = on(action);
        let reply = as_caller(&app, &other, method.clone(), &route, &path, None).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            reply.body
        );
        assert_eq!(reply.code(), "not_your_reservation");
    }
    // Nor by its key: neither a cancel nor a replay of the reserve.
    let by_key = as_caller(
        &app,
        &other,
        Method::POST,
        "/v1/reservations/cancel-by-key",
        "/v1/reservations/cancel-by-key",
        Some(json!({ "sku": "tv", "user_id": "ann", "idempotency_key": "k-auth" })),
    )
    .await;
    assert_eq!(by_key.status, StatusCode::FORBIDDEN, "{:?}", by_key.body);
    let replay = reserve(other.clone(), "ann").await;
    assert_eq!(replay.status, StatusCode::FORBIDDEN, "{:?}", replay.body);
    assert_eq!(app.get_sku("tv").await.body["held"], 1, "still held");
    // Its own caller confirms it.
    let (route, path) = on("/confirm");
    let confirmed = as_caller(&app, &shop, Method::POST, &route, &path, None).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    assert_eq!(confirmed.body["status"], "confirmed");

    // A cart likewise.
    let opened = as_caller(
        &app,
        &shop,
        Method::POST,
        "/v1/carts",
        "/v1/carts",
        Some(json!({ "user_id": "cy", "lines": [{ "sku": "tv", "quantity": 1 }] })),
    )
    .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    let cart = opened.body["cart_id"].as_str().unwrap().to_owned();
    for (method, action) in [
        (Method::GET, ""),
        (Method::POST, "/confirm"),
        (Method::POST, "/cancel"),
    ] {
        let route = format!("/v1/carts/{{id}}{action}");
        let path = format!("/v1/carts/{cart}{action}");
        let reply = as_caller(&app, &other, method.clone(), &route, &path, None).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            reply.body
        );
    }
    let cancelled = as_caller(
        &app,
        &shop,
        Method::POST,
        "/v1/carts/{id}/cancel",
        &format!("/v1/carts/{cart}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(app.get_sku("tv").await.body["held"], 0);
}

#[tokio::test]
async fn metrics_name_the_caller_from_the_start() {
    let app = TestApp::spawn_with(with_clients).await;
    let reserves = |caller: &str| {
        format!(r#"caller="{caller}",method="POST",outcome="ok",route="/v1/reservations""#)
    };
    let page = app.metrics().await;
    for caller in ["shop", "other", "anonymous"] {
        assert_eq!(
            series(&page, "flashsale_http_requests_total", &reserves(caller)),
            Some(0.0),
            "{caller}'s reserve series is not there before its first request"
        );
    }
    app.put_sku("tv", json!({ "stock": 10 })).await;
    for user in ["ann", "bob"] {
        let reply = as_caller(
            &app,
            &bearer(SHOP),
            Method::POST,
            "/v1/reservations",
            "/v1/reservations",
            Some(json!({ "sku": "tv", "user_id": user })),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let refused = as_caller(
        &app,
        "",
        Method::POST,
        "/v1/reservations",
        "/v1/reservations",
        Some(json!({ "sku": "tv", "user_id": "cy" })),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let page = app.metrics().await;
    assert_eq!(
        series(&page, "flashsale_http_requests_total", &reserves("shop")),
        Some(2.0)
    );
    assert_eq!(
        series(&page, "flashsale_http_requests_total", &reserves("other")),
        Some(0.0)
    );
    assert_eq!(
        series(
            &page,
            "flashsale_http_requests_total",
            r#"caller="anonymous",method="POST",outcome="unauthenticated",route="/v1/reservations""#
        ),
        Some(1.0)
    );
    assert!(
        page.contains(r#"flashsale_http_request_duration_seconds_count{caller="shop",method="POST",outcome="ok",route="/v1/reservations"} 2"#),
        "{page}"
    );
}

#[tokio::test]
async fn confirms_and_cancels_by_key_spend_the_reserves_tokens() {
    // Three tokens for the SKU, and one a minute after: none comes back during the test.
    let app = TestApp::spawn_with(|c| {
        with_clients(c);
        c.rate_sku = 1;
        c.burst_sku = 3;
    })
    .await;
    app.put_sku("tv", json!({ "stock": 10 })).await;
    let shop = bearer(SHOP);
    let held = as_caller(
        &app,
        &shop,
        Method::POST,
        "/v1/reservations",
        "/v1/reservations",
        Some(json!({ "sku": "tv", "user_id": "ann" })),
    )
    .await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let id = held.body["reservation_id"].as_str().unwrap().to_owned();
    let confirmed = as_caller(
        &app,
        &shop,
        Method::POST,
        "/v1/reservations/{id}/confirm",
        &format!("/v1/reservations/{id}/confirm"),
        None,
    )
    .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let cancel_by_key = |key: &'static str| {
        let (app, shop) = (&app, shop.clone());
        async move {
            as_caller(
                app,
                &shop,
                Method::POST,
                "/v1/reservations/cancel-by-key",
                "/v1/reservations/cancel-by-key",
                Some(json!({ "sku": "tv", "user_id": "bob", "idempotency_key": key })),
            )
            .await
        }
    };
    // One token is left, and one more comes back each second: of ten barriers made as fast
    // as they can be, most are refused. Without the buckets, all ten would pass.
    let mut limited = Vec::new();
    for key in ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9"] {
        let reply = cancel_by_key(key).await;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => limited.push(reply),
            other => panic!("{other}: {:?}", reply.body),
        }
    }
    assert!(!limited.is_empty(), "no barrier was rate limited");
    for reply in &limited {
        assert_eq!(reply.code(), "rate_limited");
        assert!(reply.headers.contains_key("retry-after"));
    }
}

#[tokio::test]
async fn bad_client_tokens_stop_the_engine_with_what_to_change() {
    let redis = LocalRedis::start().unwrap();
    for (tokens, says) in [
        (vec!["shop=short".to_owned()], "must be 16 to 256"),
        (
            vec![format!("shop={SHOP}"), format!("shop={OTHER}")],
            "given twice",
        ),
        (vec![format!("sh op={SHOP}")], "is not valid"),
        (
            vec![format!("shop={}", ADMIN_TOKEN.repeat(2))],
            "is the admin token",
        ),
    ] {
        let mut config = ServeConfig::local(redis.url());
        config.admin_token = Some(ADMIN_TOKEN.repeat(2));
        config.client_tokens = tokens.clone();
        let error = match Application::build(&config).await {
            Ok(_) => panic!("{tokens:?} accepted"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(says), "{tokens:?}: {error}");
        assert!(error.contains("--client-token"), "{error}");
    }
}
