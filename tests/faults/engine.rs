//! The engine as a real process (`flashsale serve`), so that a test can SIGKILL it, and a
//! client that retries with the same idempotency key until it gets an answer.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

pub const ADMIN: &str = "fault-admin";

/// A `flashsale serve` process on a fixed port, over a given Redis and ledger.
pub struct Engine {
    pub port: u16,
    pub redis_url: String,
    pub database_url: String,
    pub prefix: String,
    extra: Vec<String>,
    /// Environment for the process (a shifted clock, say).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Where the process's log goes; removed with the engine, shown if a test fails.
    logs: tempfile::TempDir,
}

impl Engine {
    pub async fn start(redis_url: &str, database_url: &str, prefix: &str, extra: &[&str]) -> Self {
        Self::start_with_env(redis_url, database_url, prefix, extra, &[]).await
    }

    pub async fn start_with_env(
        redis_url: &str,
        database_url: &str,
        prefix: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = flashsale_testkit::free_port().unwrap();
        let mut engine = Self {
            port,
            redis_url: redis_url.to_owned(),
            database_url: database_url.to_owned(),
            prefix: prefix.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            logs: tempfile::Builder::new()
                .prefix("flashsale-engine-")
                .tempdir()
                .unwrap(),
        };
        engine.spawn().await;
        engine
    }

    /// Starts the process (again) on the same port, and waits until it answers.
    pub async fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--redis-url", &self.redis_url, "--key-prefix", &self.prefix])
            .args(["--database-url", &self.database_url, "--admin-token", ADMIN])
            .args(["--audit-interval-s", "0"])
            .args(if self.extra.iter().any(|a| a == "--redis-timeout-ms") {
                &[][..]
            } else {
                &["--redis-timeout-ms", "2000"][..]
            })
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log_path())
                    .unwrap(),
            )
            .spawn()
            .expect("start flashsale serve");
        self.child = Some(child);
        let started = Instant::now();
        let client = reqwest::Client::new();
        while client
            .get(format!("{}/healthz", self.base()))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "engine did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.logs.path().join("engine.log")
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn put_sku(&self, sku: &str, body: Value) {
        let reply = reqwest::Client::new()
            .put(format!("{}/v1/skus/{sku}", self.base()))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "{:?}", reply.text().await);
    }

    pub async fn get_sku(&self, sku: &str) -> Value {
        reqwest::get(format!("{}/v1/skus/{sku}", self.base()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            eprintln!("--- log of the engine on port {}:\n{log}", self.port);
        }
    }
}

/// What a retrying client finally got, and how many times it had to try.
#[derive(Debug, Clone)]
pub struct Final {
    pub status: StatusCode,
    pub body: Value,
    pub attempts: u32,
}

/// Sends a request until it gets a definite answer (anything but a transport error or a
/// 503), always the same request, as a careful client does.
pub async fn until_answered(what: &str, send: impl Fn() -> reqwest::RequestBuilder) -> Final {
    let mut attempts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        attempts += 1;
        if let Ok(reply) = send().timeout(Duration::from_secs(3)).send().await {
            let status = reply.status();
            if status != StatusCode::SERVICE_UNAVAILABLE {
                let body = reply.json().await.unwrap_or(Value::Null);
                return Final {
                    status,
                    body,
                    attempts,
                };
            }
        }
        assert!(Instant::now() < deadline, "{what}: no answer in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a reserve until it gets a definite answer, always with the same idempotency key.
pub async fn reserve_until_answered(
    client: &reqwest::Client,
    base: &str,
    sku: &str,
    user: &str,
    key: &str,
) -> Final {
    until_answered(&format!("{user}/{key}"), || {
        client
            .post(format!("{base}/v1/reservations"))
            .header("idempotency-key", key)
            .json(&json!({ "sku": sku, "user_id": user }))
    })
    .await
}

/// Sends a confirm until it gets a definite answer.
pub async fn confirm_until_answered(client: &reqwest::Client, base: &str, rid: &str) -> Final {
    until_answered(rid, || {
        client.post(format!("{base}/v1/reservations/{rid}/confirm"))
    })
    .await
}
