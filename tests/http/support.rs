//! A real server on port 0 over a real `redis-server`, and a client that checks every
//! response it receives against the server's own `/openapi.json`.
//!
//! Shared by the `http` and `ledger` test crates; each uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use flashsale::config::ServeConfig;
use flashsale::ids::random_token;
use flashsale::server::Application;
use flashsale_testkit::LocalRedis;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub redis: LocalRedis,
    pub base: String,
    pub client: reqwest::Client,
    pub spec: Value,
    /// The key prefix the server writes under.
    pub prefix: String,
    /// `127.0.0.1:<port>` of the gRPC face, when the configuration turned it on.
    pub grpc: Option<String>,
    stop: Option<oneshot::Sender<()>>,
}

/// A response: status, headers and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The problem `code`, or "" for a success.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose configuration `tweak` adjusts.
    pub async fn spawn_with(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let redis = LocalRedis::start().expect("start redis-server");
        let mut config = ServeConfig::local(redis.url());
        config.redis.key_prefix = format!("t{}:", random_token());
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        tweak(&mut config);
        let app = Application::build(&config).await.expect("build app");
        let base = format!("http://{}", app.local_addr());
        let grpc = app.grpc_addr().map(|addr| addr.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let spec: Value = client
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            redis,
            base,
            client,
            spec,
            prefix: config.redis.key_prefix,
            grpc,
            stop: Some(stop),
        }
    }

    /// Sends a request, checks the response against the spec, and returns it.
    /// `route` is the spec's path template (for example `/v1/reservations/{id}`).
    pub async fn call(
        &self,
        method: Method,
        route: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reply = Reply {
            status,
            headers,
            body,
        };
        self.conforms(&method, route, &reply, &text);
        reply
    }

    /// Panics unless the spec documents `reply` for the operation and its body validates.
    pub fn conforms(&self, method: &Method, route: &str, reply: &Reply, text: &str) {
        let operation = &self.spec["paths"][route][method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {route} is not in /openapi.json"
        );
        let documented = &operation["responses"][reply.status.as_str()];
        assert!(
            documented.is_object(),
            "{method} {route} answered {} which the spec does not document: {text}",
            reply.status
        );
        let content_type = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .to_owned();
        let content = &documented["content"][&content_type];
        assert!(
            content.is_object(),
            "{method} {route} {}: content type {content_type:?} not documented",
            reply.status
        );
        let mut document = self.spec.clone();
        document["allOf"] = json!([content["schema"].clone()]);
        let validator = jsonschema::validator_for(&document).expect("valid schema");
        let instance = if content_type.contains("json") {
            reply.body.clone()
        } else {
            Value::String(text.to_owned())
        };
        if let Err(error) = validator.validate(&instance) {
            panic!(
                "{method} {route} {}: body does not match the spec: {error}: {text}",
                reply.status
            );
        }
    }

    pub fn admin(&self) -> String {
        format!("Bearer {ADMIN_TOKEN}")
    }

    pub async fn put_sku(&self, sku: &str, body: Value) -> Reply {
        let auth = self.admin();
        self.call(
            Method::PUT,
            "/v1/skus/{sku}",
            &format!("/v1/skus/{sku}"),
            &[("authorization", &auth)],
            Some(body),
        )
        .await
    }

    pub async fn restock(&self, sku: &str, quantity: u64) -> Reply {
        self.restock_body(sku, json!({ "quantity": quantity }))
            .await
    }

    /// A restock of `sku` with any body.
    pub async fn restock_body(&self, sku: &str, body: Value) -> Reply {
        let auth = self.admin();
        self.call(
            Method::POST,
            "/v1/skus/{sku}/restock",
            &format!("/v1/skus/{sku}/restock"),
            &[("authorization", &auth)],
            Some(body),
        )
        .await
    }

    pub async fn get_sku(&self, sku: &str) -> Reply {
        self.call(
            Method::GET,
            "/v1/skus/{sku}",
            &format!("/v1/skus/{sku}"),
            &[],
            None,
        )
        .await
    }

    pub async fn reserve(&self, sku: &str, user: &str, quantity: u32, key: &str) -> Reply {
        self.reserve_body(
            key,
            json!({ "sku": sku, "user_id": user, "quantity": quantity }),
        )
        .await
    }

    /// A reserve with `key` and any body.
    pub async fn reserve_body(&self, key: &str, body: Value) -> Reply {
        self.call(
            Method::POST,
            "/v1/reservations",
            "/v1/reservations",
            &[("idempotency-key", key)],
            Some(body),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Reply {
        self.call(
            Method::GET,
            "/v1/reservations/{id}",
            &format!("/v1/reservations/{id}"),
            &[],
            None,
        )
        .await
    }

    pub async fn confirm(&self, id: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/reservations/{id}/confirm",
            &format!("/v1/reservations/{id}/confirm"),
            &[],
            None,
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/reservations/{id}/cancel",
            &format!("/v1/reservations/{id}/cancel"),
            &[],
            None,
        )
        .await
    }

    pub async fn cancel_by_key(&self, sku: &str, user: &str, key: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/reservations/cancel-by-key",
            "/v1/reservations/cancel-by-key",
            &[],
            Some(json!({ "sku": sku, "user_id": user, "idempotency_key": key })),
        )
        .await
    }

    /// Opens a cart with `key` and any body.
    pub async fn open_cart(&self, key: &str, body: Value) -> Reply {
        self.call(
            Method::POST,
            "/v1/carts",
            "/v1/carts",
            &[("idempotency-key", key)],
            Some(body),
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

    /// Script calls Redis has run so far (`INFO commandstats`, EVALSHA and EVAL).
    pub fn script_calls(&self) -> u64 {
        let info = self.redis.command(&["INFO", "commandstats"]).unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| l.split(['=', ',']).nth(1)?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of the series `name{labels}` on a `/metrics` page (labels as Prometheus writes
/// them, in name order), if it is there.
pub fn series(page: &str, name: &str, labels: &str) -> Option<f64> {
    let head = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|line| line.strip_prefix(&head))
        .and_then(|value| value.trim().parse().ok())
}

impl TestApp {
    /// What the engine keeps in memory for SKUs, by kind (`flashsale_tracked_skus`).
    pub async fn tracked(&self) -> std::collections::BTreeMap<String, i64> {
        let page = self.metrics().await;
        [
            "gates",
            "rate_limiters",
            "configs",
            "queues",
            "refill_locks",
        ]
        .into_iter()
        .map(|kind| {
            let n = series(&page, "flashsale_tracked_skus", &format!("kind=\"{kind}\""))
                .unwrap_or_else(|| panic!("no flashsale_tracked_skus{{kind={kind}}}"));
            (kind.to_owned(), n as i64)
        })
        .collect()
    }
}
