//! The sale page in a real browser: a headless Chromium (Debian's `chromium` through
//! `chromedriver`, driven over WebDriver by fantoccini) follows a short sale on
//! `/ui/skus/{sku}`, and its figures follow the API's: units sold, the SKU turning sold out,
//! refusals by reason. A screenshot is saved with the test's output.

#[path = "../http/support.rs"]
mod support;

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use flashsale_testkit::LocalBrowser;
use reqwest::StatusCode;
use serde_json::{json, Value};

use support::*;

/// How long the page may trail the API: the stream sends twice a second.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(1);

async fn browser(local: &LocalBrowser) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({ "args": local.chromium_args(1280, 1100) }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&local.webdriver_url())
        .await
        .expect("a WebDriver session with Chromium")
}

/// The text of the first element `selector` matches on the page, if any.
async fn text(page: &Client, selector: &str) -> Option<String> {
    let found = page
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(selector)],
        )
        .await
        .expect("script ran");
    found.as_str().map(str::to_owned)
}

/// Waits until `selector`'s text is `expected`; returns how long it took, or panics after
/// `within`.
async fn shows(page: &Client, selector: &str, expected: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = text(page, selector).await;
        if now.as_deref() == Some(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() <= within,
            "{selector} shows {now:?}, not {expected:?}, {:?} after the API did",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SKU as the API has it now.
async fn api_sku(app: &TestApp) -> Value {
    let reply = app.get_sku("tv").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sale_page_follows_a_sale_in_a_real_browser() {
    let app = TestApp::spawn().await;
    let loaded = app
        .put_sku(
            "tv",
            json!({ "stock": 12, "per_user_limit": 1, "hold_seconds": 600, "shards": 3 }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);

    // The page is one document: nothing is fetched from elsewhere.
    let page_response = app
        .client
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    let policy = page_response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let html = page_response.text().await.unwrap();
    for fetch in ["<script src", "<link", "@import", "url(", "<img", "<iframe"] {
        assert!(!html.contains(fetch), "the page fetches something: {fetch}");
    }
    assert!(!html.contains(ADMIN_TOKEN));

    let local = LocalBrowser::start().expect("chromedriver (apt-get install chromium-driver)");
    let page = browser(&local).await;

    // Every SKU, on the index.
    page.goto(&format!("{}/", app.base)).await.unwrap();
    shows(
        &page,
        r#"tr[data-sku="tv"] [data-status]"#,
        "live",
        Duration::from_secs(10),
    )
    .await;

    // One SKU, followed through a sale.
    page.goto(&format!("{}/ui/skus/tv", app.base))
        .await
        .unwrap();
    shows(&page, "#status", "live", Duration::from_secs(10)).await;
    shows(&page, "#stock", "12", FOLLOWS_WITHIN).await;
    assert_eq!(
        page.execute(
            "return document.querySelectorAll('#shards .shard').length",
            vec![]
        )
        .await
        .unwrap(),
        json!(3)
    );

    let mut worst = Duration::ZERO;
    let mut held = Vec::new();
    for n in 0..12 {
        let reply = app.reserve("tv", &format!("u{n}"), 1, "k").await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        held.push(reply.body["reservation_id"].as_str().unwrap().to_owned());
        if n % 2 == 0 {
            let id = held.pop().unwrap();
            assert_eq!(app.confirm(&id).await.status, StatusCode::OK);
        }
        if n % 4 == 3 {
            let sold = api_sku(&app).await["sold"].to_string();
            worst = worst.max(shows(&page, "#sold", &sold, FOLLOWS_WITHIN).await);
        }
    }
    // Sold out: every unit sold or held. Then buyers keep coming and are refused.
    for n in 12..30 {
        let reply = app.reserve("tv", &format!("u{n}"), 1, "k").await;
        assert_eq!(reply.code(), "sold_out", "{:?}", reply.body);
    }
    let api = api_sku(&app).await;
    assert_eq!(api["status"], "sold_out");
    worst = worst.max(shows(&page, "#status", "sold_out", FOLLOWS_WITHIN).await);
    worst = worst.max(shows(&page, "#available", "0", FOLLOWS_WITHIN).await);
    worst = worst.max(shows(&page, "#held", &api["held"].to_string(), FOLLOWS_WITHIN).await);
    // The refusals by reason: the count the metrics have, and a line on the chart.
    let refused = series(
        &app.metrics().await,
        "flashsale_sku_refusals_total",
        r#"reason="sold_out",sku="tv""#,
    )
    .unwrap();
    assert_eq!(refused, 18.0);
    worst = worst.max(
        shows(
            &page,
            r#"tr[data-reason="sold_out"] .total"#,
            "18",
            FOLLOWS_WITHIN,
        )
        .await,
    );
    let legend = text(&page, "#refusal-legend").await.unwrap_or_default();
    assert!(
        legend.contains("sold_out"),
        "the chart has no sold_out line: {legend:?}"
    );
    let chart_lines = page
        .execute(
            "return document.querySelectorAll('#refusal-chart path').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(chart_lines, json!(1), "one refusal reason drawn");
    assert_eq!(text(&page, "#conn").await.as_deref(), Some("live"));
    // Only the SKU's view is shown, and the reserves' latency is measured.
    let shown = page
        .execute(
            "return [document.getElementById('index').offsetParent === null, \
                     document.getElementById('one').offsetParent !== null]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        shown,
        json!([true, true]),
        "the index and the SKU's view are both shown"
    );
    let p99 = text(&page, "#p99").await.unwrap_or_default();
    let p99_ms: f64 = p99.trim_end_matches(" ms").parse().unwrap_or(0.0);
    assert!(p99_ms > 0.0, "no reserve latency on the page: {p99:?}");

    let shot = page.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sale-page.png");
    std::fs::write(&path, shot).unwrap();
    println!(
        "sale page screenshot: {}; the page trailed the API by at most {worst:?}",
        path.display()
    );
    page.close().await.unwrap();
}
