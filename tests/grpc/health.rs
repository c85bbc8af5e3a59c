//! `grpc.health.v1` follows readiness (SERVING exactly while `/readyz` says ready), and the
//! gRPC face stops with the HTTP face, gracefully.

use std::time::Duration;

use reqwest::StatusCode;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::{keyed, reserve, GrpcApp};

const SERVICES: [&str; 3] = ["", "flashsale.v1.Reservations", "flashsale.v1.Skus"];

async fn health(app: &GrpcApp, service: &str) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
        .into_inner()
        .status()
}

async fn readyz(app: &GrpcApp) -> StatusCode {
    app.client
        .get(format!("{}/readyz", app.http))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .status()
}

/// Waits until every service's health is `want`, and says how `/readyz` answers then.
async fn until_health(app: &GrpcApp, want: ServingStatus) -> StatusCode {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for service in SERVICES {
            all &= health(app, service).await == want;
        }
        if all {
            return readyz(app).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_exactly_while_the_engine_is_ready() {
    let mut app = GrpcApp::spawn().await;
    // Every service is known from the first call (not serving until readiness said so).
    for service in SERVICES {
        let status = health(&app, service).await;
        assert!(
            matches!(status, ServingStatus::Serving | ServingStatus::NotServing),
            "{service:?}: {status:?}"
        );
    }
    assert_eq!(
        until_health(&app, ServingStatus::Serving).await,
        StatusCode::OK
    );

    // Redis gone: not ready, not serving.
    app.redis.kill();
    assert_eq!(
        until_health(&app, ServingStatus::NotServing).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Back: ready and serving again.
    app.redis.restart().unwrap();
    assert_eq!(
        until_health(&app, ServingStatus::Serving).await,
        StatusCode::OK
    );

    // A service it does not serve is not one health knows.
    let unknown = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "flashsale.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_face_stops_with_the_http_face() {
    let mut app = GrpcApp::spawn().await;
    app.put_sku("tv", 5, |_| {}).await;
    app.reservations()
        .reserve(keyed(reserve("tv", "ann"), "k"))
        .await
        .unwrap();
    app.stop().await.expect("both faces stopped cleanly");
    // Neither face takes a new connection any more.
    let grpc = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(grpc.is_err(), "the gRPC face still listens");
    let http = app
        .client
        .get(format!("{}/healthz", app.http))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(http.is_err(), "the HTTP face still listens");
}
