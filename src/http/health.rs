//! Liveness, readiness, metrics and the OpenAPI document.

use super::{ApiError, AppState, Problem};
use crate::api::health;
pub use crate::api::health::Health;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;

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
    health::ready(&state).await.map(Json)
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
