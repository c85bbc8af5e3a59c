//! Liveness, readiness, metrics and the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, AppState, Problem};
use crate::store::StoreError;

/// How long readiness waits for Redis to answer.
const READY_TIMEOUT: Duration = Duration::from_millis(500);

/// A health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (can serve).
    pub status: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// The service can serve: Redis answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Redis does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let mut conn = state.store.connection();
    let command = redis::cmd("PING");
    let ping = command.query_async::<String>(&mut conn);
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(Json(Health {
            status: "ready".to_owned(),
        })),
        Ok(Err(error)) => Err(StoreError::Redis(error).into()),
        Err(_) => Err(
            StoreError::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis did not answer PING in time",
            )))
            .into(),
        ),
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .in_flight
        .set(state.admission.in_flight() as i64);
    for (sku, _) in state.admission.gates() {
        // A SKU that cannot be read now keeps its last figures.
        if let Ok(totals) = state.store.totals(&sku).await {
            for (name, value) in [
                ("available", totals.available),
                ("held", totals.held),
                ("sold", totals.sold),
            ] {
                state
                    .metrics
                    .sku_units
                    .with_label_values(&[sku.as_str(), name])
                    .set(value as i64);
            }
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This API's OpenAPI 3.1 document, generated from the handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.openapi).clone())
}
