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
    /// How far behind settlement into the ledger is (readiness, with a ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<SettlementHealth>,
}

/// How far behind settlement into the ledger is. Reserves refused for it do not make the
/// engine unready: confirms and cancels, which shrink the backlog's cause, go on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettlementHealth {
    /// Stream entries not yet settled, at the last measurement (every second).
    pub unsettled_events: u64,
    /// Age of the oldest of them, seconds.
    pub lag_seconds: f64,
    /// The limit (`--max-unsettled`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unsettled: Option<u64>,
    /// Whether new reserves and carts are refused (503 `settlement_behind`) for it now.
    pub refusing_reserves: bool,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        settlement: None,
    })
}

/// The service can serve: Redis answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready; with a ledger, how far behind settlement is", body = Health),
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
            settlement: state.ledger.get().is_some().then(|| SettlementHealth {
                unsettled_events: state.admission.unsettled(),
                lag_seconds: state.metrics.reconciler_lag.get(),
                max_unsettled: state.admission.max_unsettled(),
                refusing_reserves: state.admission.settlement_behind(),
            }),
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
    let admission = state.admission.tracked();
    let store = state.store.tracked();
    for (kind, n) in [
        ("gates", admission.gates),
        ("rate_limiters", admission.rate_limiters),
        ("configs", store.configs),
        ("queues", store.queues),
        ("refill_locks", store.refill_locks),
    ] {
        state
            .metrics
            .tracked_skus
            .with_label_values(&[kind])
            .set(n as i64);
    }
    let gates = state.admission.gates();
    let now = state.store.redis_now_ms();
    let mut fenced = 0;
    for (sku, gate) in &gates {
        // An ended SKU's flag is not kept up to date (nothing can be reserved of it).
        let flag_up = gate.is_sold_out() && !gate.has_ended(now);
        state
            .metrics
            .sku_sold_out
            .with_label_values(&[sku.as_str()])
            .set(i64::from(flag_up));
        // A SKU that cannot be read now keeps its last figures.
        if let Ok(totals) = state.store.totals(sku).await {
            fenced += i64::from(totals.fenced);
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
    state.metrics.fenced_skus.set(fenced);
    state
        .metrics
        .keep_skus(gates.iter().map(|(sku, _)| sku.to_string()).collect());
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
