//! An engine in-process on a cluster, buyers over HTTP, and the checks every sale ends with.

use std::time::Duration;

use flashsale::config::ServeConfig;
use flashsale::ids::random_token;
use flashsale::ledger::Ledger;
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::recovery::audit;
use flashsale::server::Application;
use flashsale::store::{Store, StoreOptions, Totals};
use flashsale::topology::RedisTarget;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "cluster-admin-token";

/// One engine (`flashsale serve` in-process) on the cluster, with an SQLite ledger.
pub struct Engine {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Engine {
    pub async fn start(target: &RedisTarget, prefix: &str, database_url: &str) -> Self {
        Self::start_with(target, prefix, database_url, |_| {}).await
    }

    pub async fn start_with(
        target: &RedisTarget,
        prefix: &str,
        database_url: &str,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let mut config = ServeConfig::local(target.clone());
        config.redis.key_prefix = prefix.to_owned();
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        config.ledger.database_url = Some(database_url.to_owned());
        config.no_ledger = false;
        tweak(&mut config);
        let app = Application::build(&config).await.expect("build the engine");
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            base,
            client,
            stop: Some(stop),
        }
    }

    pub async fn load(&self, sku: &str, stock: u64, shards: u16, hold_seconds: u64) {
        let reply = self
            .client
            .put(format!("{}/v1/skus/{sku}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"stock": stock, "shards": shards, "per_user_limit": 2, "hold_seconds": hold_seconds}))
            .send()
            .await
            .expect("load the SKU");
        assert!(
            reply.status().is_success(),
            "load answered {}",
            reply.status()
        );
    }

    /// A reserve; `(status, body)`.
    pub async fn reserve(
        &self,
        sku: &str,
        user: &str,
        quantity: u32,
        key: &str,
    ) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(format!("{}/v1/reservations", self.base))
                .header("Idempotency-Key", key)
                .json(&json!({"sku": sku, "user_id": user, "quantity": quantity})),
        )
        .await
    }

    pub async fn confirm(&self, id: &str) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(format!("{}/v1/reservations/{id}/confirm", self.base)),
        )
        .await
    }

    pub async fn reservation(&self, id: &str) -> (StatusCode, Value) {
        self.send(
            self.client
                .get(format!("{}/v1/reservations/{id}", self.base)),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
            // A transport failure reads as 599: the caller decides whether that is allowed.
            Err(_) => (StatusCode::from_u16(599).unwrap(), Value::Null),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fresh key prefix and an SQLite ledger file in `dir`.
pub fn fresh(dir: &tempfile::TempDir) -> (String, String) {
    (
        format!("c{}:", random_token()),
        format!("sqlite://{}/ledger.db", dir.path().display()),
    )
}

/// A store and a ledger of the test's own, to check the end of a sale.
pub async fn inspect(target: &RedisTarget, prefix: &str, database_url: &str) -> (Store, Ledger) {
    let mut options = StoreOptions::new(target.clone());
    options.prefix = prefix.to_owned();
    options.timeout = Duration::from_secs(5);
    let store = Store::connect(&options).await.expect("connect a store");
    let ledger = Ledger::connect(database_url)
        .await
        .expect("open the ledger");
    (store, ledger)
}

/// Settles everything written so far and compares Redis with the ledger, without repair:
/// the drifts found (none, when the sale ended right).
pub async fn audit_clean(store: &Store, ledger: &Ledger) -> audit::AuditReport {
    let mut options = ReconcileOptions::new();
    options.claim_idle = Duration::from_millis(1);
    let reconciler = Reconciler::new(store.clone(), ledger.clone(), options, None);
    assert!(
        reconciler
            .drain(Duration::from_secs(60))
            .await
            .expect("drain"),
        "the ledger did not catch up"
    );
    audit::run(store, ledger, Some(&reconciler), false)
        .await
        .expect("audit")
}

/// Conservation and no oversell, in Redis.
pub fn check_totals(totals: &Totals, stock: u64) {
    assert!(totals.conserved(), "units created or lost: {totals:?}");
    assert!(
        totals.sold + totals.held <= stock,
        "oversold: {totals:?} of {stock}"
    );
}
