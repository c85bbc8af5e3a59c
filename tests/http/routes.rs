//! Every route: its successes, its error codes, idempotent replays.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

fn in_an_hour() -> String {
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn an_hour_ago() -> String {
    let earlier = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    earlier
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn admin_routes_need_the_token_and_load_restock_and_read_skus() {
    let app = TestApp::spawn().await;
    let body = json!({ "stock": 10, "per_user_limit": 2, "hold_seconds": 60, "shards": 2 });
    let route = "/v1/skus/{sku}";
    let put = |auth: &'static str| {
        let body = body.clone();
        let app = &app;
        async move {
            app.call(
                Method::PUT,
                route,
                "/v1/skus/tv",
                &[("authorization", auth)],
                Some(body),
            )
            .await
        }
    };
    let no_token = app
        .call(Method::PUT, route, "/v1/skus/tv", &[], Some(body.clone()))
        .await;
    assert_eq!(
        (no_token.status, no_token.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(put("Bearer wrong").await.code(), "unauthorized");
    assert_eq!(put("Basic dGVzdA==").await.code(), "unauthorized");

    let created = app.put_sku("tv", body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["available"], 10);
    assert_eq!(created.body["status"], "live");
    assert_eq!(created.body["shards"], 2);
    // Not live yet: a replace is allowed.
    let replaced = app
        .put_sku("tv", json!({ "stock": 12, "per_user_limit": 2 }))
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.body["stock"], 12);

    assert_eq!(
        app.reserve("tv", "ann", 1, "k1").await.status,
        StatusCode::CREATED
    );
    let live = app.put_sku("tv", body.clone()).await;
    assert_eq!(
        (live.status, live.code()),
        (StatusCode::CONFLICT, "sku_live")
    );

    let restocked = app.restock("tv", 3).await;
    assert_eq!(restocked.status, StatusCode::OK);
    assert_eq!(
        (
            restocked.body["stock"].as_u64(),
            restocked.body["available"].as_u64()
        ),
        (Some(15), Some(14))
    );
    assert_eq!(app.restock("nope", 3).await.code(), "sku_not_found");
    assert_eq!(app.restock("tv", 0).await.code(), "invalid_quantity");

    let read = app.get_sku("tv").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        (read.body["held"].as_u64(), read.body["sold"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(read.body["per_user_limit"], 2);
    assert_eq!(app.get_sku("nope").await.code(), "sku_not_found");
    assert_eq!(app.get_sku("bad:id").await.code(), "invalid_sku");

    let scheduled = app
        .put_sku("later", json!({ "stock": 1, "starts_at": in_an_hour() }))
        .await;
    assert_eq!(scheduled.body["status"], "scheduled");
    let over = app
        .put_sku(
            "over",
            json!({ "stock": 1, "starts_at": "2020-01-01T00:00:00Z", "ends_at": an_hour_ago() }),
        )
        .await;
    assert_eq!(over.body["status"], "ended");

    for (bad, code) in [
        (json!({ "stock": -1 }), "invalid_body"),
        (json!({ "stock": 1, "extra": true }), "invalid_body"),
        (json!({ "stock": 1, "shards": 0 }), "invalid_sku_spec"),
        (json!({ "stock": 1, "hold_seconds": 0 }), "invalid_sku_spec"),
        (
            json!({ "stock": 1, "per_user_limit": 0 }),
            "invalid_sku_spec",
        ),
        (
            json!({ "stock": 1, "starts_at": "tomorrow" }),
            "invalid_time",
        ),
        (
            json!({ "stock": 1, "starts_at": in_an_hour(), "ends_at": an_hour_ago() }),
            "invalid_sku_spec",
        ),
    ] {
        let reply = app.put_sku("fresh", bad.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{bad}"
        );
    }
    let bad_id = app.put_sku("a*b", json!({ "stock": 1 })).await;
    assert_eq!(
        (bad_id.status, bad_id.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_sku")
    );
}

#[tokio::test]
async fn without_a_configured_token_admin_routes_refuse_everyone() {
    let app = TestApp::spawn_with(|c| c.admin_token = None).await;
    let reply = app.put_sku("tv", json!({ "stock": 1 })).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "admin_disabled")
    );
    assert_eq!(app.restock("tv", 1).await.code(), "admin_disabled");
}

#[tokio::test]
async fn reserve_answers_every_case_with_its_code() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 3, "per_user_limit": 2 }))
        .await;

    let held = app.reserve("tv", "ann", 2, "k1").await;
    assert_eq!(held.status, StatusCode::CREATED);
    assert_eq!(held.body["status"], "held");
    assert_eq!(
        (held.body["sku"].as_str(), held.body["user_id"].as_str()),
        (Some("tv"), Some("ann"))
    );
    assert!(held.headers.get("idempotent-replayed").is_none());

    let replay = app.reserve("tv", "ann", 2, "k1").await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.body, held.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");

    let cases = [
        (
            app.reserve("tv", "ann", 1, "k1").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        ),
        (
            app.reserve("tv", "ann", 1, "k2").await,
            StatusCode::CONFLICT,
            "limit_exceeded",
        ),
        (
            app.reserve("tv", "bob", 2, "k1").await,
            StatusCode::CONFLICT,
            "insufficient_stock",
        ),
        (
            app.reserve("tv", "bob", 3, "k1").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            app.reserve("tv", "bob", 0, "k1").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            app.reserve("nope", "bob", 1, "k1").await,
            StatusCode::NOT_FOUND,
            "sku_not_found",
        ),
        (
            app.reserve("tv", "b b", 1, "k1").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        (
            app.reserve("tv", "bob", 1, "k{1}").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
        ),
    ];
    for (reply, status, code) in cases {
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{:?}",
            reply.body
        );
    }
    app.reserve("tv", "bob", 1, "k1").await;
    let sold_out = app.reserve("tv", "cat", 1, "k1").await;
    assert_eq!(
        (sold_out.status, sold_out.code()),
        (StatusCode::CONFLICT, "sold_out")
    );

    // A cancel by key before any reserve bars the key.
    app.put_sku("radio", json!({ "stock": 5 })).await;
    assert_eq!(
        app.cancel_by_key("radio", "dan", "late").await.status,
        StatusCode::OK
    );
    let barred = app.reserve("radio", "dan", 1, "late").await;
    assert_eq!(
        (barred.status, barred.code()),
        (StatusCode::CONFLICT, "reservation_cancelled")
    );

    app.put_sku("later", json!({ "stock": 1, "starts_at": in_an_hour() }))
        .await;
    assert_eq!(
        app.reserve("later", "ann", 1, "k").await.code(),
        "sale_not_started"
    );
    app.put_sku(
        "over",
        json!({ "stock": 1, "starts_at": "2020-01-01T00:00:00Z", "ends_at": an_hour_ago() }),
    )
    .await;
    assert_eq!(
        app.reserve("over", "ann", 1, "k").await.code(),
        "sale_ended"
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_problems() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 3 })).await;
    let route = "/v1/reservations";
    let send = |headers: Vec<(&'static str, &'static str)>, body: Vec<u8>| {
        let app = &app;
        async move {
            let mut request = app.client.post(format!("{}/v1/reservations", app.base));
            for (k, v) in headers {
                request = request.header(k, v);
            }
            let response = request.body(body).send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.unwrap();
            let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            let reply = Reply {
                status,
                headers,
                body,
            };
            app.conforms(&Method::POST, route, &reply, &text);
            reply
        }
    };
    let json_key = vec![
        ("content-type", "application/json"),
        ("idempotency-key", "k"),
    ];
    let no_key = send(
        vec![("content-type", "application/json")],
        br#"{"sku":"tv","user_id":"a"}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (no_key.status, no_key.code()),
        (StatusCode::BAD_REQUEST, "missing_idempotency_key")
    );
    let syntax = send(json_key.clone(), b"{\"sku\":".to_vec()).await;
    assert_eq!(
        (syntax.status, syntax.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    // A body that fails is described as axum describes it, the field named.
    let missing = send(json_key.clone(), br#"{"sku":"tv"}"#.to_vec()).await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
    );
    let detail = missing.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("user_id"), "{detail}");
    let wrong_type = send(json_key.clone(), br#"{"sku":"tv","user_id":7}"#.to_vec()).await;
    let detail = wrong_type.body["detail"].as_str().unwrap_or_default();
    assert!(
        wrong_type.code() == "invalid_body" && detail.contains("user_id"),
        "{detail}"
    );
    // A media type with parameters is JSON too: this body is read, and its quantity refused.
    let charset = send(
        vec![
            ("content-type", "application/json; charset=utf-8"),
            ("idempotency-key", "k-charset"),
        ],
        br#"{"sku":"tv","user_id":"cs","quantity":0}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (charset.status, charset.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity")
    );
    let text = send(
        vec![("content-type", "text/plain"), ("idempotency-key", "k")],
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!(r#"{{"sku":"tv","user_id":"{}"}}"#, "a".repeat(20_000));
    let too_large = send(json_key.clone(), huge.into_bytes()).await;
    assert_eq!(
        (too_large.status, too_large.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let negative = send(
        json_key.clone(),
        br#"{"sku":"tv","user_id":"a","quantity":-1}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (negative.status, negative.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity")
    );
    let huge_qty = send(
        json_key.clone(),
        br#"{"sku":"tv","user_id":"a","quantity":99999999999}"#.to_vec(),
    )
    .await;
    assert_eq!(huge_qty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let long_key = "k".repeat(129);
    let reply = app.reserve("tv", "a", 1, &long_key).await;
    assert_eq!(reply.code(), "invalid_idempotency_key");

    let unknown = app
        .client
        .get(format!("{}/v2/nothing", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    let wrong_method = app
        .client
        .delete(format!("{}/v1/reservations", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        app.get_sku("tv").await.body["available"],
        3,
        "nothing was reserved"
    );
}

#[tokio::test]
async fn confirm_cancel_and_read_follow_the_reservation() {
    let app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 5, "hold_seconds": 0.2 }))
        .await;
    let id = |r: &Reply| r.body["reservation_id"].as_str().unwrap().to_owned();

    let a = id(&app.reserve("tv", "ann", 1, "k").await);
    let confirmed = app.confirm(&a).await;
    assert_eq!(
        (confirmed.status, confirmed.body["status"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
    assert_eq!(app.confirm(&a).await.body, confirmed.body, "idempotent");
    assert_eq!(app.get(&a).await.body, confirmed.body);
    let refused = app.cancel(&a).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::CONFLICT, "reservation_confirmed")
    );

    let b = id(&app.reserve("tv", "bob", 1, "k").await);
    let cancelled = app.cancel(&b).await;
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(app.cancel(&b).await.body, cancelled.body, "idempotent");
    let refused = app.confirm(&b).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::CONFLICT, "reservation_cancelled")
    );

    // cat's hold expires; dan and eve take every unit left; cat's late confirm finds none.
    let c = id(&app.reserve("tv", "cat", 1, "k").await);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(app.get(&c).await.body["status"], "expired");
    app.put_sku("radio", json!({ "stock": 1 })).await;
    for user in ["dan", "eve", "fay", "gus"] {
        let r = app.reserve("tv", user, 1, "k").await;
        assert_eq!(r.status, StatusCode::CREATED, "{user}: {:?}", r.body);
    }
    let late = app.confirm(&c).await;
    assert_eq!(
        (late.status, late.code()),
        (StatusCode::GONE, "reservation_expired")
    );
    let expired = app.cancel(&c).await;
    assert_eq!(
        (expired.status, expired.body["status"].as_str()),
        (StatusCode::OK, Some("expired"))
    );

    let ghost = "tv~0~aaaaaaaaaaaaaaaaaaaa";
    for reply in [
        app.get(ghost).await,
        app.confirm(ghost).await,
        app.cancel(ghost).await,
        app.get("garbage").await,
    ] {
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::NOT_FOUND, "reservation_not_found")
        );
    }

    let by_key = app.cancel_by_key("radio", "hal", "order-1").await;
    assert_eq!(by_key.status, StatusCode::OK);
    assert_eq!(
        by_key.body,
        json!({ "status": "cancelled", "reservation": null })
    );
    let held = app.reserve("radio", "ivy", 1, "order-2").await;
    let by_key = app.cancel_by_key("radio", "ivy", "order-2").await;
    assert_eq!(
        by_key.body["reservation"]["reservation_id"],
        held.body["reservation_id"]
    );
    assert_eq!(by_key.body["reservation"]["status"], "cancelled");
    let sold = app.reserve("radio", "joe", 1, "order-3").await;
    app.confirm(&id(&sold)).await;
    let refused = app.cancel_by_key("radio", "joe", "order-3").await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::CONFLICT, "reservation_confirmed")
    );
    assert_eq!(
        app.cancel_by_key("nope", "joe", "k").await.code(),
        "sku_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_with_one_key_make_one_reservation() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    app.put_sku("tv", json!({ "stock": 100, "per_user_limit": 5 }))
        .await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.reserve("tv", "ann", 1, "the-one-key").await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut replayed = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        ids.insert(reply.body["reservation_id"].as_str().unwrap().to_owned());
        replayed += usize::from(reply.headers.get("idempotent-replayed").is_some());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(replayed, 199);
    let sku = app.get_sku("tv").await;
    assert_eq!(
        (sku.body["held"].as_u64(), sku.body["available"].as_u64()),
        (Some(1), Some(99))
    );
}

#[tokio::test]
async fn health_readiness_metrics_and_the_spec() {
    let mut app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 2 })).await;
    app.reserve("tv", "ann", 1, "k").await;
    let get = |route: &'static str| {
        let app = &app;
        async move { app.call(Method::GET, route, route, &[], None).await }
    };
    assert_eq!(get("/healthz").await.body, json!({ "status": "ok" }));
    assert_eq!(get("/readyz").await.body, json!({ "status": "ready" }));
    let metrics = app.metrics().await;
    for needle in [
        r#"flashsale_http_requests_total{caller="anonymous",method="POST",outcome="ok",route="/v1/reservations"} 1"#,
        "flashsale_http_request_duration_seconds_bucket",
        r#"flashsale_redis_call_duration_seconds_count{op="reserve"} 1"#,
        "flashsale_in_flight_requests 0",
        r#"flashsale_sku_units{sku="tv",state="held"} 1"#,
        r#"flashsale_sku_units{sku="tv",state="available"} 1"#,
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }

    // Every route of the API, with its method, is in the document.
    let spec = get("/openapi.json").await.body;
    assert_eq!(spec["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    for (method, path) in [
        ("get", "/v1/skus"),
        ("put", "/v1/skus/{sku}"),
        ("get", "/v1/skus/{sku}"),
        ("post", "/v1/skus/{sku}/restock"),
        ("post", "/v1/reservations"),
        ("get", "/v1/reservations/{id}"),
        ("post", "/v1/reservations/{id}/confirm"),
        ("post", "/v1/reservations/{id}/cancel"),
        ("post", "/v1/reservations/cancel-by-key"),
        ("post", "/v1/carts"),
        ("get", "/v1/carts/{id}"),
        ("post", "/v1/carts/{id}/confirm"),
        ("post", "/v1/carts/{id}/cancel"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    // And every operation of the document is served (no route-level 404 or 405).
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                app.base,
                path.replace("{sku}", "tv").replace("{id}", "x")
            );
            let response = app
                .client
                .request(method.to_uppercase().parse().unwrap(), url)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert!(
                body["code"] != "not_found" && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed"
            );
        }
    }

    app.redis.kill();
    let down = app.call(Method::GET, "/readyz", "/readyz", &[], None).await;
    assert_eq!(
        (down.status, down.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let reserve = app.reserve("tv", "bob", 1, "k").await;
    assert_eq!(
        (reserve.status, reserve.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(reserve.headers.contains_key("retry-after"));
    app.redis.restart().unwrap();
    let ready = app.call(Method::GET, "/readyz", "/readyz", &[], None).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "ready again once Redis is back"
    );
}
