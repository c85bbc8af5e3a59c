//! The gRPC face (tonic): `flashsale.v1.Reservations` and `flashsale.v1.Skus` over the
//! application layer ([`crate::api`]), the very operations the HTTP face serves;
//! `grpc.health.v1`, serving exactly when `/readyz` would answer ready; and server
//! reflection (v1 and v1alpha), so that generic clients can list and call the services.
//! Errors are `google.rpc.Status` with details ([`status`]).

mod convert;
mod reservations;
mod skus;
pub mod status;

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::{health, ApiError, AppState};
use crate::ids::CallerName;

/// The messages, servers and clients generated from `proto/flashsale/v1/flashsale.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flashsale.v1");

    /// The encoded descriptors of `flashsale.v1` and what it imports, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/flashsale_descriptor.bin"));
}

/// Set on a Reserve or OpenCart answered from an earlier call with the same key (the body
/// says it too, in `replayed`).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The services as `grpc.health.v1` names them; the empty name is the whole server.
const SERVICES: [&str; 3] = ["", "flashsale.v1.Reservations", "flashsale.v1.Skus"];

/// How often health follows readiness.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Largest request message accepted, as the HTTP face's body limit.
const MAX_MESSAGE: usize = crate::http::MAX_BODY;

/// The bearer token of a call's `authorization` metadata, if any.
fn authorization<T>(request: &Request<T>) -> Option<&[u8]> {
    let value = request.metadata().get("authorization")?;
    crate::callers::bearer(value.as_bytes())
}

/// Counts and times a call by caller, method and outcome (`ok` or the problem code, as the
/// HTTP face counts its requests), and writes its answer: the message, or `error` as a
/// status about `resource`.
fn answer<T>(
    state: &AppState,
    route: &'static str,
    caller: Option<&CallerName>,
    started: Instant,
    resource: &str,
    result: Result<T, ApiError>,
) -> Result<Response<T>, Status> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    let caller = caller.map_or(crate::metrics::ANONYMOUS, CallerName::as_str);
    let labels = [caller, route, outcome];
    state.metrics.grpc_requests.with_label_values(&labels).inc();
    state
        .metrics
        .grpc_request_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
        .map(Response::new)
        .map_err(|error| status::status(&error, resource))
}

/// The gRPC face, bound: serves once [`GrpcFace::serve`] is awaited.
pub struct GrpcFace {
    incoming: TcpIncoming,
    local_addr: std::net::SocketAddr,
    state: AppState,
}

impl GrpcFace {
    /// Binds `addr` for `state`'s engine.
    pub async fn bind(addr: std::net::SocketAddr, state: AppState) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        // Small messages answered at once: Nagle's delay would only add latency.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Ok(Self {
            incoming,
            local_addr,
            state,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then finishes the calls in flight. Health says
    /// NOT_SERVING from the moment shutdown begins.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        // Known from the first call, and not serving until readiness has said so: a client
        // checking at once must not take "service not registered" for an answer.
        for service in SERVICES {
            reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let reflection_v1 = reflection().build_v1().expect("the descriptors are valid");
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("the descriptors are valid");
        let follow = tokio::spawn(follow_readiness(self.state.clone(), reporter.clone()));
        let reservations = proto::reservations_server::ReservationsServer::new(
            reservations::ReservationsService {
                state: self.state.clone(),
            },
        )
        .max_decoding_message_size(MAX_MESSAGE);
        let skus = proto::skus_server::SkusServer::new(skus::SkusService {
            state: self.state.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE);
        let shutdown = async move {
            shutdown.await;
            follow.abort();
            for service in SERVICES {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        };
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(reservations)
            .add_service(skus)
            .serve_with_incoming_shutdown(self.incoming, shutdown)
            .await
    }
}

/// The reflection service's builder, with every service's descriptors.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Keeps every service's health at what readiness says, checked every [`HEALTH_EVERY`].
async fn follow_readiness(state: AppState, reporter: HealthReporter) {
    let mut every = tokio::time::interval(HEALTH_EVERY);
    let mut last = None;
    loop {
        every.tick().await;
        let now = match health::ready(&state).await {
            Ok(_) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(now) {
            for service in SERVICES {
                reporter.set_service_status(service, now).await;
            }
            last = Some(now);
        }
    }
}
