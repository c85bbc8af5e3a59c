//! An engine on a runtime of its own (so that it can be crashed: its runtime is dropped,
//! heartbeats stop and its registry entry stays), and the calls the tests make to it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::config::ServeConfig;
use flashsale::ids::random_token;
use flashsale::registry::Registry;
use flashsale::server::Application;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "engines-admin-token";

/// A heartbeat short enough for tests to see joins, leaves and expiries in a few seconds.
pub const HEARTBEAT_MS: u64 = 200;

/// How an engine stops.
enum Stop {
    /// Graceful: answers what is in flight, leaves the registry.
    Leave,
    /// Its runtime is dropped: no more heartbeats, its entry left to expire.
    Crash,
}

/// A prefix for one test's engines.
pub fn prefix() -> String {
    format!("e{}:", random_token())
}

pub struct Engine {
    pub base: String,
    pub client: reqwest::Client,
    /// Its id in the registry.
    pub id: String,
    /// Its registry membership (shares readable while Redis does not answer).
    pub registry: Arc<Registry>,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A reply: status, problem code ("" for a success), body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub code: String,
    pub body: Value,
}

impl Engine {
    /// An engine on `redis_url` under `prefix`, heartbeat [`HEARTBEAT_MS`], as `tweak` says.
    pub async fn start(
        redis_url: &str,
        prefix: &str,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let mut config = ServeConfig::local(redis_url);
        config.redis.key_prefix = prefix.to_owned();
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        config.heartbeat_ms = HEARTBEAT_MS;
        tweak(&mut config);
        let (ready, built) = oneshot::channel::<(SocketAddr, Arc<Registry>)>();
        let (stop, stopped) = oneshot::channel::<Stop>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            // The shutdown signal outlives the runtime: dropping it would be a graceful
            // shutdown too, and a crash must not leave the registry.
            let (leave, left) = oneshot::channel::<()>();
            let mut leave = Some(leave);
            runtime.block_on(async {
                let app = Application::build(&config).await.expect("build engine");
                let _ = ready.send((app.local_addr(), app.state().registry.clone()));
                let served = tokio::spawn(app.run_until(async {
                    let _ = left.await;
                }));
                if let Ok(Stop::Crash) = stopped.await {
                    return;
                }
                if let Some(leave) = leave.take() {
                    let _ = leave.send(());
                }
                let _ = served.await;
            });
            // Whatever still runs (heartbeats, sweeps, polls) stops here, mid-step.
            runtime.shutdown_background();
            drop(leave);
        });
        let (addr, registry) = built.await.expect("the engine started");
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            id: registry.id().to_owned(),
            registry,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn halt(&mut self, how: Stop) -> Option<std::thread::JoinHandle<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        self.thread.take()
    }

    /// Shuts down gracefully (the registry entry is removed) and waits until it has.
    pub async fn leave(mut self) {
        if let Some(thread) = self.halt(Stop::Leave) {
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
    }

    /// Crashes: everything it runs stops at once, its registry entry stays until it expires.
    pub async fn crash(mut self) {
        if let Some(thread) = self.halt(Stop::Crash) {
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            code: body["code"].as_str().unwrap_or("").to_owned(),
            body,
        }
    }

    pub async fn put_sku(&self, sku: &str, body: Value) -> Reply {
        let reply = self
            .send(
                self.client
                    .put(format!("{}/v1/skus/{sku}", self.base))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&body),
            )
            .await;
        assert!(reply.status.is_success(), "{reply:?}");
        reply
    }

    pub async fn reserve(&self, sku: &str, user: &str) -> Reply {
        self.send(
            self.client
                .post(format!("{}/v1/reservations", self.base))
                .header("idempotency-key", "k")
                .json(&json!({ "sku": sku, "user_id": user, "quantity": 1 })),
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> Reply {
        self.send(
            self.client
                .post(format!("{}/v1/reservations/{id}/cancel", self.base)),
        )
        .await
    }

    /// The engine's `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series, `name` or `name{labels}` exactly as the page writes it.
    pub async fn metric(&self, series: &str) -> f64 {
        let page = self.metrics().await;
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in:\n{page}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// This engine's share of the global rate.
    pub async fn global_share(&self) -> f64 {
        self.metric("flashsale_rate_share_global").await
    }

    /// Live engines this engine saw at its last heartbeat.
    pub async fn live(&self) -> u64 {
        self.metric("flashsale_engines_live").await as u64
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A test that failed half-way: stop the engine without waiting for it.
        self.halt(Stop::Crash);
    }
}

/// Polls `check` every 10 ms until it is true or `within` has passed; returns how long it
/// took, or `None`.
pub async fn within<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether two shares are the same to the gauge's precision.
pub fn same(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.01
}
