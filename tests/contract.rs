//! The API against its own OpenAPI document, by schemathesis (`scripts/schemathesis.sh`)
//! with every check on: a real server on port 0 over a private `redis-server`, fuzzed from
//! `/openapi.json`, then driven statefully along the document's links with the ids it
//! returned. No answer may be a 5xx, every answer must be documented and match its schema,
//! requests the schema allows must be accepted and the others refused. The three rules a
//! JSON Schema cannot state (see `tests/schemathesis_hooks.py`) are excluded by exactly
//! their own refusals.

use std::process::Command;
use std::time::Duration;

use flashsale::config::ServeConfig;
use flashsale::server::Application;
use flashsale_testkit::LocalRedis;
use serde_json::json;
use tokio::sync::oneshot;

const ADMIN_TOKEN: &str = "contract-admin-token";

/// The SKU loaded before the run. Schemathesis names whatever SKU ids the pattern allows,
/// and the simplest one it settles on is "0": loading that one is what lets its reserves,
/// reads and restocks reach a live SKU rather than a 404. It is loaded with the most stock
/// and the highest per-user limit the schema allows, so that every schema-valid quantity
/// makes a hold and the stateful phase has real reservations to confirm and cancel.
const SKU: &str = "0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_response() {
    let redis = LocalRedis::start().expect("start redis-server");
    let mut config = ServeConfig::local(redis.url());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    let app = Application::build(&config).await.expect("build app");
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let loaded = client
        .put(format!("{base}/v1/skus/{SKU}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "stock": 1_000_000_000_000_u64, "per_user_limit": 1_000_000 }))
        .send()
        .await
        .expect("load a SKU");
    assert!(
        loaded.status().is_success(),
        "loading SKU {SKU:?} answered {}",
        loaded.status()
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis.sh");
    let run_base = base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .args([run_base.as_str(), ADMIN_TOKEN])
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));

    let _ = stop.send(());
    server.await.unwrap().expect("server stopped cleanly");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis against {base} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The stateful phase ran and followed the document's own links.
    let covered = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("API Links:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        covered.is_some_and(|n| n >= 4),
        "the stateful phase followed too few links ({covered:?}):\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let after = |label: &str| {
        lines
            .iter()
            .position(|l| *l == label)
            .and_then(|i| lines.get(i + 1))
            .copied()
            .unwrap_or("?")
    };
    let filtered = lines
        .iter()
        .find_map(|l| l.strip_prefix("Filtered: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("0");
    println!(
        "schemathesis, every check: {}; {} links followed; refusals of the three rules a \
         schema cannot state, dropped: {filtered}",
        after("Test cases:"),
        covered.unwrap_or(0)
    );
}
