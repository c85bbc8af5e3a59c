//! `GET /v1/skus`: every SKU in name order, paged by a cursor, filtered by status.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

fn rfc3339(offset: time::Duration) -> String {
    (time::OffsetDateTime::now_utc() + offset)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn list(app: &TestApp, query: &str) -> Reply {
    app.call(
        Method::GET,
        "/v1/skus",
        &format!("/v1/skus{query}"),
        &[],
        None,
    )
    .await
}

fn names(page: &Value) -> Vec<String> {
    page["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sku"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn skus_are_listed_in_pages_and_by_status() {
    let app = TestApp::spawn().await;
    let empty = list(&app, "").await;
    assert_eq!(empty.status, StatusCode::OK, "{:?}", empty.body);
    assert_eq!(empty.body, json!({ "skus": [] }));

    let hour = time::Duration::hours(1);
    for (sku, body) in [
        ("d-later", json!({ "stock": 5, "starts_at": rfc3339(hour) })),
        ("a-live", json!({ "stock": 5 })),
        ("c-gone", json!({ "stock": 1 })),
        (
            "b-over",
            json!({ "stock": 5, "starts_at": rfc3339(-hour - hour), "ends_at": rfc3339(-hour) }),
        ),
        ("e-live", json!({ "stock": 5 })),
    ] {
        let loaded = app.put_sku(sku, body).await;
        assert_eq!(
            loaded.status,
            StatusCode::CREATED,
            "{sku}: {:?}",
            loaded.body
        );
    }
    assert_eq!(
        app.reserve("c-gone", "ann", 1, "k").await.status,
        StatusCode::CREATED
    );

    // Every SKU, two at a time, following the cursor.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = list(&app, &query).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        assert!(names(&page.body).len() <= 2);
        seen.extend(names(&page.body));
        pages += 1;
        match page.body["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["a-live", "b-over", "c-gone", "d-later", "e-live"]);
    assert_eq!(pages, 3);

    // By status, as GET /v1/skus/{sku} states it.
    for (status, expected) in [
        ("live", vec!["a-live", "e-live"]),
        ("scheduled", vec!["d-later"]),
        ("ended", vec!["b-over"]),
        ("sold_out", vec!["c-gone"]),
        ("retired", vec![]),
    ] {
        let page = list(&app, &format!("?status={status}")).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        assert_eq!(names(&page.body), expected, "{status}");
        for sku in page.body["skus"].as_array().unwrap() {
            let one = app.get_sku(sku["sku"].as_str().unwrap()).await;
            assert_eq!(one.body["status"], status);
        }
    }
    let after = list(&app, "?status=live&after=a-live").await;
    assert_eq!(names(&after.body), ["e-live"]);

    // A query it cannot take says which part is wrong.
    for (query, status, code) in [
        (
            "?status=open",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_status",
        ),
        (
            "?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "?limit=201",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "?limit=two",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "?after=a%20b",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_sku",
        ),
        ("?page=2", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        let reply = list(&app, query).await;
        assert_eq!(reply.status, status, "{query}: {:?}", reply.body);
        assert_eq!(reply.code(), code, "{query}");
    }
}
