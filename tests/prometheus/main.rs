//! The deployed monitoring against a real engine: a real Prometheus (Debian's) scrapes an
//! engine with a ledger during a short sale and evaluates `deploy/prometheus`'s rules;
//! then every recording rule and every dashboard query returns data, and every selector of
//! every alert names series that exist: no panel is blank and no rule silent because a
//! metric or label name is wrong.

#[path = "../http/support.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use flashsale::grpc::proto::reservations_client::ReservationsClient;
use flashsale::grpc::proto::ReserveRequest;
use flashsale_testkit::LocalPrometheus;
use reqwest::StatusCode;
use serde_json::{json, Value};

use support::*;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/flashsale.rules.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/flashsale.json");

/// A rule of the rules file: `record` or `alert`, its name and its expression.
#[derive(Debug)]
struct Rule {
    kind: &'static str,
    name: String,
    expr: String,
}

/// The rules of a rules file, read with no YAML library: each `- record:` / `- alert:` and
/// the `expr:` after it, written on its line or as a block (`>-`, `|`) indented below it.
fn rules(yaml: &str) -> Vec<Rule> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut found = Vec::new();
    let mut current: Option<(&'static str, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let indent = lines[i].len() - line.len();
        let line = line.strip_prefix("- ").unwrap_or(line);
        if let Some(name) = line.strip_prefix("record:") {
            current = Some(("record", name.trim().to_owned()));
        } else if let Some(name) = line.strip_prefix("alert:") {
            current = Some(("alert", name.trim().to_owned()));
        } else if let Some(rest) = line.strip_prefix("expr:") {
            let rest = rest.trim();
            let expr = if rest.starts_with('>') || rest.starts_with('|') {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                block.join(" ")
            } else {
                rest.trim_matches(|c| c == '"' || c == '\'').to_owned()
            };
            if let Some((kind, name)) = current.take() {
                found.push(Rule { kind, name, expr });
            }
        }
        i += 1;
    }
    found
}

/// Every panel target's expression of a Grafana dashboard, with its panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panel: &Value, out: &mut Vec<(String, String)>) {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_owned()));
            }
        }
        for inner in panel["panels"].as_array().into_iter().flatten() {
            walk(inner, out);
        }
    }
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        walk(panel, &mut out);
    }
    out
}

/// Each selector of `expr`: a metric name (`flashsale_...`, `flashsale:...` or `up`) with
/// its matchers, if any.
fn selectors(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    while i < bytes.len() {
        let starts_word = i == 0 || !word(bytes[i - 1]);
        let rest = &expr[i..];
        let in_quotes = expr[..i].matches('"').count() % 2 == 1;
        if starts_word
            && !in_quotes
            && (rest.starts_with("flashsale_")
                || rest.starts_with("flashsale:")
                || rest.starts_with("up{"))
        {
            let mut end = i;
            while end < bytes.len() && word(bytes[end]) {
                end += 1;
            }
            if end < bytes.len() && bytes[end] == b'{' {
                end += expr[end..].find('}').map_or(0, |close| close + 1);
            }
            found.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// Keeps only the matchers on labels that say what a series is (not what happened to it:
/// an outcome, a reason, a kind the short sale may not have produced).
fn structural(selector: &str) -> String {
    let Some((name, matchers)) = selector.split_once('{') else {
        return selector.to_owned();
    };
    let kept: Vec<&str> = matchers
        .trim_end_matches('}')
        .split(',')
        .map(str::trim)
        .filter(|m| {
            ["job", "route", "method", "state", "sku"]
                .iter()
                .any(|l| m.starts_with(l))
        })
        .collect();
    format!("{name}{{{}}}", kept.join(","))
}

/// The series `query` returns now (an empty vector is none).
async fn query(client: &reqwest::Client, prometheus: &str, query: &str) -> Vec<Value> {
    let reply: Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["status"], "success", "{query}: {reply}");
    match reply["data"]["resultType"].as_str() {
        Some("scalar") | Some("string") => vec![reply["data"]["result"].clone()],
        _ => reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rule_and_dashboard_query_has_data_from_a_real_engine() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let app = TestApp::spawn_with(|c| {
        c.ledger.database_url = Some(url.clone());
        c.audit_interval_s = 1;
        c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut grpc = ReservationsClient::connect(format!("http://{}", app.grpc.as_ref().unwrap()))
        .await
        .expect("connect to the gRPC face");
    let target = app.base.trim_start_matches("http://").to_owned();
    let prometheus = LocalPrometheus::start("flashsale", &[target], &[Path::new(RULES)])
        .expect("prometheus (apt-get install prometheus)");

    // A short sale: holds made, confirmed and cancelled, a cart, refusals.
    let loaded = app
        .put_sku(
            "tv",
            json!({ "stock": 20, "per_user_limit": 1, "shards": 2 }),
        )
        .await;
    assert_eq!(loaded.status, StatusCode::CREATED, "{:?}", loaded.body);
    app.put_sku("case", json!({ "stock": 5 })).await;
    let sale = async {
        for n in 0..30 {
            let reply = app.reserve("tv", &format!("u{n}"), 1, "k").await;
            if let Some(id) = reply.body["reservation_id"].as_str() {
                match n % 3 {
                    0 => assert_eq!(app.confirm(id).await.status, StatusCode::OK),
                    1 => assert_eq!(app.cancel(id).await.status, StatusCode::OK),
                    _ => {}
                }
            }
            let lines =
                json!({ "user_id": format!("c{n}"), "lines": [{ "sku": "case", "quantity": 1 }] });
            let cart = app.open_cart(&format!("c{n}"), lines).await;
            assert!(
                cart.status.is_success() || cart.status == StatusCode::CONFLICT,
                "{:?}",
                cart.body
            );
            // Buyers on the gRPC face too, for its panels.
            let mut reserve = tonic::Request::new(ReserveRequest {
                sku: "tv".into(),
                user_id: format!("g{n}"),
                quantity: None,
            });
            reserve
                .metadata_mut()
                .insert("idempotency-key", "k".parse().unwrap());
            match grpc.reserve(reserve).await {
                Ok(_) => {}
                Err(status) => assert_eq!(status.code(), tonic::Code::FailedPrecondition),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    sale.await;

    let client = reqwest::Client::new();
    let base = prometheus.url();
    let text = std::fs::read_to_string(RULES).unwrap();
    let rules = rules(&text);
    assert!(
        rules.iter().filter(|r| r.kind == "alert").count() >= 10,
        "{rules:?}"
    );
    let records: Vec<&Rule> = rules.iter().filter(|r| r.kind == "record").collect();
    assert!(!records.is_empty());
    // Every recording rule has been evaluated on the sale's scrapes.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&str> = Vec::new();
    loop {
        missing.clear();
        for rule in &records {
            if query(&client, &base, &rule.name).await.is_empty() {
                missing.push(&rule.name);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recording rules with no data: {missing:?}"
        );
        // Keep the sale's counters moving while the rate windows fill.
        let _ = app.reserve("tv", "late", 1, "k").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut blank = Vec::new();
    for rule in &rules {
        if rule.kind == "record" {
            if query(&client, &base, &rule.expr).await.is_empty() {
                blank.push(format!("record {}: {}", rule.name, rule.expr));
            }
            continue;
        }
        for selector in selectors(&rule.expr) {
            if query(&client, &base, &selector).await.is_empty()
                && query(&client, &base, &structural(&selector))
                    .await
                    .is_empty()
            {
                blank.push(format!("alert {}: {selector}", rule.name));
            }
        }
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 12, "{queries:?}");
    for (title, expr) in &queries {
        let expr = expr
            .replace("${sku}", "tv")
            .replace("$sku", "tv")
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "5m");
        if query(&client, &base, &expr).await.is_empty() {
            blank.push(format!("panel {title:?}: {expr}"));
        }
    }
    assert!(blank.is_empty(), "no data for:\n  {}", blank.join("\n  "));
}

#[test]
fn the_rules_reader_reads_lines_and_blocks() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: sum(x)\n      - alert: A\n        expr: >-\n          rate(y[1m])\n          > 0\n        for: 1m\n";
    let read = rules(yaml);
    assert_eq!(read.len(), 2);
    assert_eq!(
        (read[0].kind, read[0].name.as_str(), read[0].expr.as_str()),
        ("record", "a:b", "sum(x)")
    );
    assert_eq!(
        (read[1].kind, read[1].expr.as_str()),
        ("alert", "rate(y[1m]) > 0")
    );
    assert_eq!(
        selectors(
            r#"max by (sku) (flashsale_sku_sold_out{job="flashsale"}) == 1 and on (sku) flashsale:x > 0 or up{job="flashsale"} == 0"#
        ),
        [
            r#"flashsale_sku_sold_out{job="flashsale"}"#,
            "flashsale:x",
            r#"up{job="flashsale"}"#
        ]
    );
    assert_eq!(
        structural(r#"m{job="f", outcome="ok",route="/r"}"#),
        r#"m{job="f",route="/r"}"#
    );
}
