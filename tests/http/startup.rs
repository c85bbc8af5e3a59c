//! `flashsale serve` as a new user starts it: a Redis it cannot reach is named with what to
//! do, and `--spawn-redis` try-outs start clean, with a ledger of their own.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_names_the_redis_it_cannot_reach_and_what_to_do() {
    // Nothing listens on a port just freed.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let output = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_flashsale"))
                .args([
                    "serve",
                    "--redis-url",
                    &url,
                    "--listen",
                    &listen,
                    "--no-ledger",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served without a Redis: {stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Redis at {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("--spawn-redis"), "{stderr}");
}

/// `flashsale serve --spawn-redis` in `dir`, as the README's `scripts/serve.sh` runs it.
struct TryOut {
    child: Child,
    base: String,
}

impl TryOut {
    async fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["serve", "--spawn-redis", "--admin-token", "t"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while !reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            assert!(started.elapsed() < Duration::from_secs(30), "not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, base }
    }

    async fn put_phone(&self) -> (StatusCode, Value) {
        let reply = reqwest::Client::new()
            .put(format!("{}/v1/skus/phone-x", self.base))
            .bearer_auth("t")
            .json(&json!({ "stock": 2 }))
            .send()
            .await
            .unwrap();
        (reply.status(), reply.json().await.unwrap())
    }

    /// SIGTERM, and wait for the process to be gone.
    async fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_redis_try_outs_start_clean_with_a_ledger_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let first = TryOut::start(dir.path()).await;
    assert_eq!(first.put_phone().await.0, StatusCode::CREATED);
    let held = reqwest::Client::new()
        .post(format!("{}/v1/reservations", first.base))
        .header("idempotency-key", "order-1001")
        .json(&json!({ "sku": "phone-x", "user_id": "ann" }))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::CREATED);
    // The try-out has a ledger: the hold reaches it.
    let started = Instant::now();
    loop {
        let view: Value = reqwest::get(format!("{}/v1/skus/phone-x", first.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["settled"]["held"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never settled: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;

    // A second try-out knows nothing of the first: the README's first PUT creates the SKU.
    let second = TryOut::start(dir.path()).await;
    let (status, view) = second.put_phone().await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["held"], 0);
    second.stop().await;
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the try-outs wrote into their directory: {left:?}"
    );
}
