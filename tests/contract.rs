//! The API against its own OpenAPI document, by schemathesis (`scripts/schemathesis.sh`):
//! a real server on port 0 over a private `redis-server`, fuzzed from `/openapi.json`. No
//! answer may be a 5xx, and every answer must be documented and match its schema.

use std::process::Command;
use std::time::Duration;

use flashsale::config::ServeConfig;
use flashsale::http::Application;
use flashsale::local_redis::LocalRedis;
use serde_json::json;
use tokio::sync::oneshot;

const ADMIN_TOKEN: &str = "contract-admin-token";

/// The SKU loaded before the run. The spec puts no pattern on SKU ids, so schemathesis
/// names whatever strings it likes, and the simplest one it settles on is "0": loading that
/// one is what lets its reads and restocks reach a live SKU rather than a 404.
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
        .json(&json!({ "stock": 1000 }))
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
    assert!(
        output.status.success(),
        "schemathesis against {base} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
