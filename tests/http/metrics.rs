//! The metrics an operator's page, dashboard and rules read: per-SKU series present from
//! the load on, refusals counted by SKU and reason, Redis errors by operation.

use reqwest::StatusCode;
use serde_json::json;

use flashsale::metrics::SKU_REFUSALS;

use crate::support::*;

fn refusals(page: &str, sku: &str, reason: &str) -> Option<f64> {
    series(
        page,
        "flashsale_sku_refusals_total",
        &format!(r#"reason="{reason}",sku="{sku}""#),
    )
}

#[tokio::test]
async fn refusals_are_counted_by_sku_and_reason_from_the_load_on() {
    let mut app = TestApp::spawn().await;
    app.put_sku("tv", json!({ "stock": 1 })).await;
    app.put_sku("radio", json!({ "stock": 5 })).await;
    let page = app.metrics().await;
    for reason in SKU_REFUSALS {
        assert_eq!(refusals(&page, "tv", reason), Some(0.0), "{reason}");
    }
    assert_eq!(
        series(&page, "flashsale_sku_sold_out", r#"sku="tv""#),
        Some(0.0)
    );
    assert_eq!(series(&page, "flashsale_max_in_flight", ""), Some(4096.0));
    assert_eq!(series(&page, "flashsale_fenced_skus", ""), Some(0.0));

    assert_eq!(
        app.reserve("tv", "ann", 1, "k").await.status,
        StatusCode::CREATED
    );
    // Refused by the store (no unit left), then from memory (the flag is up).
    for user in ["bob", "cy"] {
        assert_eq!(app.reserve("tv", user, 1, "k").await.code(), "sold_out");
    }
    let made_up = app.reserve("nope", "ann", 1, "k").await;
    assert_eq!(made_up.status, StatusCode::NOT_FOUND);
    let page = app.metrics().await;
    assert_eq!(refusals(&page, "tv", "sold_out"), Some(2.0));
    assert_eq!(refusals(&page, "tv", "limit_exceeded"), Some(0.0));
    assert_eq!(
        series(&page, "flashsale_sku_sold_out", r#"sku="tv""#),
        Some(1.0)
    );
    assert!(
        !page.contains(r#"sku="nope""#),
        "a made-up SKU got a series"
    );

    // Redis gone: the reserve's failure is counted under its operation.
    app.redis.kill();
    let failed = app.reserve("radio", "dan", 1, "k").await;
    assert_eq!(
        failed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        failed.body
    );
    let page = app.metrics().await;
    let errors: f64 = ["timeout", "error"]
        .iter()
        .filter_map(|kind| {
            series(
                &page,
                "flashsale_redis_errors_total",
                &format!(r#"kind="{kind}",op="reserve""#),
            )
        })
        .sum();
    assert!(errors >= 1.0, "no Redis error counted:\n{page}");
    assert_eq!(refusals(&page, "radio", "unavailable"), Some(1.0));
}
