//! Readiness: whether the engine can serve, as `/readyz` and `grpc.health.v1` say it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, AppState};
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

/// The engine can serve: Redis answers (in time). With a ledger, the answer says how far
/// behind settlement is.
pub async fn ready(state: &AppState) -> Result<Health, ApiError> {
    let mut conn = state.store.connection();
    let command = redis::cmd("PING");
    let ping = command.query_async::<String>(&mut conn);
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(Health {
            status: "ready".to_owned(),
            settlement: state.ledger.get().is_some().then(|| SettlementHealth {
                unsettled_events: state.admission.unsettled(),
                lag_seconds: state.metrics.reconciler_lag.get(),
                max_unsettled: state.admission.max_unsettled(),
                refusing_reserves: state.admission.settlement_behind(),
            }),
        }),
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
