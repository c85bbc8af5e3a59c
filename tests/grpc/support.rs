//! A real engine serving both faces on port 0 over a real `redis-server`, and tonic
//! clients of its gRPC face.
#![allow(dead_code)]

use std::time::Duration;

use flashsale::config::ServeConfig;
use flashsale::grpc::proto::reservations_client::ReservationsClient;
use flashsale::grpc::proto::skus_client::SkusClient;
use flashsale::grpc::proto::{self, PutSkuRequest};
use flashsale::ids::random_token;
use flashsale::server::Application;
use flashsale_testkit::LocalRedis;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub const ADMIN_TOKEN: &str = "grpc-admin-token";

/// An engine with both faces, its Redis, and a channel to its gRPC face.
pub struct GrpcApp {
    pub redis: LocalRedis,
    /// `http://127.0.0.1:<port>` of the HTTP face.
    pub http: String,
    /// `127.0.0.1:<port>` of the gRPC face.
    pub grpc_addr: String,
    pub channel: Channel,
    pub client: reqwest::Client,
    /// The key prefix the engine writes under.
    pub prefix: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl GrpcApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// An engine whose configuration `tweak` adjusts (on `redis`, if given).
    pub async fn spawn_with(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::spawn_on(LocalRedis::start().expect("start redis-server"), tweak).await
    }

    pub async fn spawn_on(redis: LocalRedis, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::local(redis.url());
        config.redis.key_prefix = format!("g{}:", random_token());
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        config.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let app = Application::build(&config).await.expect("build app");
        let http = format!("http://{}", app.local_addr());
        let grpc_addr = app.grpc_addr().expect("the gRPC face is on").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect to the gRPC face");
        Self {
            redis,
            http,
            grpc_addr,
            channel,
            client: reqwest::Client::new(),
            prefix: config.redis.key_prefix,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn reservations(&self) -> ReservationsClient<Channel> {
        ReservationsClient::new(self.channel.clone())
    }

    pub fn skus(&self) -> SkusClient<Channel> {
        SkusClient::new(self.channel.clone())
    }

    /// Loads `sku` with `stock` units over gRPC, `tweak` setting the rest.
    pub async fn put_sku(&self, sku: &str, stock: u64, tweak: impl FnOnce(&mut PutSkuRequest)) {
        let mut body = PutSkuRequest {
            sku: sku.to_owned(),
            stock,
            ..Default::default()
        };
        tweak(&mut body);
        self.skus()
            .put(admin(body))
            .await
            .unwrap_or_else(|status| panic!("loading {sku}: {status:?}"));
    }

    /// The SKU as the HTTP face reads it.
    pub async fn http_sku(&self, sku: &str) -> serde_json::Value {
        self.client
            .get(format!("{}/v1/skus/{sku}", self.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stops both faces, gracefully, and says how the server ended.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("the server task ran"),
            None => Ok(()),
        }
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `message` with metadata `pairs`.
pub fn with<T>(message: T, pairs: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in pairs {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(*value).unwrap());
    }
    request
}

/// `message` with the admin token.
pub fn admin<T>(message: T) -> Request<T> {
    with(
        message,
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
}

/// `message` with an idempotency key.
pub fn keyed<T>(message: T, key: &str) -> Request<T> {
    with(message, &[("idempotency-key", key)])
}

/// A reserve of one unit of `sku` for `user`.
pub fn reserve(sku: &str, user: &str) -> proto::ReserveRequest {
    proto::ReserveRequest {
        sku: sku.to_owned(),
        user_id: user.to_owned(),
        quantity: None,
    }
}

/// What a refused call's status says, details decoded.
#[derive(Debug)]
pub struct Refused {
    pub code: Code,
    /// `ErrorInfo.reason`.
    pub reason: String,
    /// `ErrorInfo.domain`.
    pub domain: String,
    /// `RetryInfo.retry_delay`, if any.
    pub retry: Option<Duration>,
    /// `BadRequest` fields.
    pub fields: Vec<String>,
    /// `PreconditionFailure` violations as (type, subject).
    pub preconditions: Vec<(String, String)>,
    pub message: String,
}

pub fn refused(status: &Status) -> Refused {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    Refused {
        code: status.code(),
        reason: info.reason.clone(),
        domain: info.domain.clone(),
        retry: details.retry_info().and_then(|r| r.retry_delay),
        fields: details
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default(),
        preconditions: details
            .precondition_failure()
            .map(|p| {
                p.violations
                    .iter()
                    .map(|v| (v.r#type.clone(), v.subject.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        message: status.message().to_owned(),
    }
}

/// Unwraps a call expected to fail.
pub fn refusal<T: std::fmt::Debug>(result: Result<tonic::Response<T>, Status>) -> Refused {
    match result {
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
        Err(status) => refused(&status),
    }
}
