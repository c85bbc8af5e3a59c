//! `/v1/skus`: load, restock, read and retire a SKU.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Admin, ApiJson, ApiPath};
use super::number::{self, RawQuantity};
use super::{parse_time, rfc3339, ApiError, AppState, Problem};
use crate::ids::{OpId, Sku};
use crate::ledger::LedgerRepo;
use crate::store::{
    Loaded, QuantityBound, Retirement, SkuConfig, SkuSpec, StoreError, Totals, MAX_HOLD, MAX_STOCK,
};

/// What a SKU is loaded with. Whole numbers may be written `2` or `2.0`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkuBody {
    /// Units on sale.
    #[serde(deserialize_with = "number::required")]
    #[schema(value_type = u64, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub stock: u64,
    /// Units one user may hold or buy (default 1).
    #[serde(default, deserialize_with = "number::optional")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1_000_000)]
    pub per_user_limit: Option<u64>,
    /// How long a hold lasts, in seconds (default 600; fractions allowed, at most a day).
    #[schema(minimum = 0.001, maximum = 86_400)]
    pub hold_seconds: Option<f64>,
    /// Shards the stock is split over (default: chosen from the stock).
    #[serde(default, deserialize_with = "number::optional")]
    #[schema(value_type = Option<u16>, minimum = 1, maximum = 1024)]
    pub shards: Option<u64>,
    /// When the sale opens (RFC 3339); open at once when absent.
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// When the sale closes (RFC 3339); never when absent. It must come after `starts_at`
    /// (`invalid_sku_spec` otherwise): a rule across two fields, which this schema cannot
    /// state.
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
}

/// Units to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    /// Units to add: a whole number from 1 to 10^12 (`2.0` counts as 2); any other value is
    /// refused with `invalid_quantity`.
    #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub quantity: RawQuantity,
    /// Makes the restock idempotent: the same id again adds nothing more.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub operation_id: Option<String>,
}

/// Where a SKU's sale stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkuStatus {
    /// Before the window.
    Scheduled,
    /// Reservable.
    Live,
    /// No unit available now (held units may still come back).
    SoldOut,
    /// After the window (or its retirement began, which closes the window at once).
    Ended,
    /// Ended, no hold open, no move in transit, and every event of its streams settled in
    /// the ledger: nothing of it changes any more, and it may be retired.
    Settled,
    /// Its retirement began: it takes nothing new, and its keys leave Redis once the
    /// ledger has settled its streams.
    Retiring,
    /// Retired: nothing of it is left in Redis; the answer comes from the ledger.
    Retired,
}

/// Where a retirement stands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetirementView {
    /// The SKU.
    pub sku: String,
    /// `retiring` (begun; the keys go once the ledger has settled the SKU's streams) or
    /// `retired` (nothing of it is left in Redis).
    pub status: SkuStatus,
}

/// A SKU and its units.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkuView {
    /// The SKU.
    pub sku: String,
    /// Units put on sale: loaded plus restocked.
    pub stock: u64,
    /// Units available now.
    pub available: u64,
    /// Units held.
    pub held: u64,
    /// Units sold.
    pub sold: u64,
    /// Units one user may hold or buy.
    pub per_user_limit: u32,
    /// Hold length in seconds.
    pub hold_seconds: f64,
    /// Shards the stock is split over.
    pub shards: u16,
    /// Sale start (RFC 3339), if any.
    pub starts_at: Option<String>,
    /// Sale end (RFC 3339), if any.
    pub ends_at: Option<String>,
    /// Where the sale stands.
    pub status: SkuStatus,
    /// What the SQL ledger has settled so far (absent without a ledger).
    pub settled: Option<SettledView>,
}

/// A SKU's figures in the ledger of record; they trail Redis by the reconciler's lag.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettledView {
    /// Units put on sale.
    pub stock: u64,
    /// Units available.
    pub available: u64,
    /// Units held.
    pub held: u64,
    /// Units sold.
    pub sold: u64,
    /// Reservations cancelled.
    pub cancelled: u64,
    /// Reservations expired.
    pub expired: u64,
    /// Reservations in all.
    pub reservations: u64,
}

impl From<&crate::ledger::LedgerFigures> for SettledView {
    fn from(f: &crate::ledger::LedgerFigures) -> Self {
        Self {
            stock: f.stock,
            available: f.available(),
            held: f.held,
            sold: f.sold,
            cancelled: f.cancelled,
            expired: f.expired,
            reservations: f.reservations,
        }
    }
}

fn view(config: &SkuConfig, totals: &Totals, now_ms: u64) -> SkuView {
    let status = if config.starts_at_ms.is_some_and(|s| now_ms < s) {
        SkuStatus::Scheduled
    } else if config.ends_at_ms.is_some_and(|e| now_ms >= e) {
        SkuStatus::Ended
    } else if totals.available == 0 && totals.in_transit == 0 {
        SkuStatus::SoldOut
    } else {
        SkuStatus::Live
    };
    SkuView {
        sku: config.sku.to_string(),
        stock: totals.loaded + totals.restocked,
        available: totals.available,
        held: totals.held,
        sold: totals.sold,
        per_user_limit: config.per_user_limit,
        hold_seconds: config.hold.as_secs_f64(),
        shards: config.shards,
        starts_at: config.starts_at_ms.map(rfc3339),
        ends_at: config.ends_at_ms.map(rfc3339),
        status,
        settled: None,
    }
}

fn hold(seconds: Option<f64>) -> Result<Duration, ApiError> {
    let seconds = seconds.unwrap_or(600.0);
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| d.as_millis() >= 1 && *d <= MAX_HOLD)
        .ok_or_else(|| ApiError::Invalid {
            code: "invalid_sku_spec",
            detail: "hold_seconds must be between 0.001 and 86400".into(),
        })
}

pub(super) async fn current_view(state: &AppState, sku: &Sku) -> Result<SkuView, ApiError> {
    let config = match state.store.config(sku).await {
        Err(StoreError::UnknownSku) => {
            return super::retired::sku_view(state, sku)
                .await
                .ok_or(StoreError::UnknownSku.into());
        }
        other => other?,
    };
    let totals = state.store.totals(sku).await?;
    let mut view = view(&config, &totals, state.store.redis_now_ms());
    if state.store.retiring_since(sku).await?.is_some() {
        view.status = SkuStatus::Retiring;
    } else if view.status == SkuStatus::Ended
        && totals.held == 0
        && totals.in_transit == 0
        && state.store.streams_settled(sku, config.ever_shards).await?
    {
        view.status = SkuStatus::Settled;
    }
    if let Some(ledger) = state.ledger.get() {
        // The ledger being down must not take the SKU view down with it.
        match ledger.figures(sku.as_str()).await {
            Ok(f) => view.settled = Some(SettledView::from(&f)),
            Err(error) => tracing::warn!(%error, "ledger figures unavailable"),
        }
    }
    Ok(view)
}

/// Loads a SKU, or replaces one that has no holds, sales or barriers yet.
#[utoipa::path(
    put,
    path = "/v1/skus/{sku}",
    tag = "skus",
    params(("sku" = String, Path, description = "SKU id: 1-64 of [A-Za-z0-9._-]", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = SkuBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Loaded", body = SkuView,
            links(("GetSku" = (operation_id = "get_sku", parameters(("sku" = "$request.path.sku")), description = "Read the SKU just loaded")))
        ),
        (status = 200, description = "Replaced a SKU that was not live", body = SkuView,
            links(("GetSku" = (operation_id = "get_sku", parameters(("sku" = "$request.path.sku")), description = "Read the SKU just replaced")))
        ),
        (status = 400, description = "Unreadable body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin token configured", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "sku_live: the SKU has holds, sales or barriers", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "sku_retired: the SKU is retiring or retired; its id is not loaded again", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid SKU id or specification", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_sku(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(sku): ApiPath<String>,
    ApiJson(body): ApiJson<SkuBody>,
) -> Result<(StatusCode, Json<SkuView>), ApiError> {
    let sku = Sku::new(sku)?;
    // A retired SKU's id is not reused: the ledger keeps its record under it.
    if super::retired::is_retired(&state, &sku).await {
        return Err(StoreError::Retired.into());
    }
    // Out-of-range values saturate here and are refused, with their range named, by the
    // spec's own validation.
    let spec = SkuSpec {
        stock: body.stock,
        shards: body.shards.map(|n| u16::try_from(n).unwrap_or(u16::MAX)),
        per_user_limit: body
            .per_user_limit
            .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        hold: hold(body.hold_seconds)?,
        // A start at the epoch (or before) is no start: the sale is open. An end at the epoch
        // is 1 ms after it, since 0 would mean no end.
        starts_at_ms: body
            .starts_at
            .as_deref()
            .map(|t| parse_time("starts_at", t, 0))
            .transpose()?
            .filter(|ms| *ms > 0),
        ends_at_ms: body
            .ends_at
            .as_deref()
            .map(|t| parse_time("ends_at", t, 1))
            .transpose()?,
    };
    let loaded = state.store.load(&sku, &spec).await?;
    let config = state.store.config(&sku).await?;
    state.admission.forget(&sku);
    state.admission.know(&config);
    let status = match loaded {
        Loaded::Created => StatusCode::CREATED,
        Loaded::Replaced => StatusCode::OK,
    };
    Ok((status, Json(current_view(&state, &sku).await?)))
}

/// Reads a SKU: its rules, units and status.
#[utoipa::path(
    get,
    path = "/v1/skus/{sku}",
    tag = "skus",
    params(("sku" = String, Path, description = "SKU id", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "The SKU; a retired one from the ledger, with status `retired`", body = SkuView),
        (status = 404, description = "sku_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid SKU id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_sku(
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = Sku::new(sku)?;
    Ok(Json(current_view(&state, &sku).await?))
}

/// Adds units to a loaded SKU, spread over its shards.
#[utoipa::path(
    post,
    path = "/v1/skus/{sku}/restock",
    tag = "skus",
    params(("sku" = String, Path, description = "SKU id", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = RestockBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Restocked", body = SkuView),
        (status = 400, description = "Unreadable body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin token configured", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "sku_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "sku_retired: the SKU is retiring; it takes no restock", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid quantity or ids", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn restock(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(sku): ApiPath<String>,
    ApiJson(body): ApiJson<RestockBody>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = Sku::new(sku)?;
    // The field is required, so no default applies (0 would be refused anyway).
    let quantity = body
        .quantity
        .within(0, MAX_STOCK)
        .ok_or(StoreError::InvalidQuantity(QuantityBound::Restock))?;
    let op = body.operation_id.map(OpId::new).transpose()?;
    state.store.restock(&sku, quantity, op.as_ref()).await?;
    state.admission.clear_sold_out(&sku);
    Ok(Json(current_view(&state, &sku).await?))
}

/// Retires a SKU: it takes nothing new from now on (its window closes at once), and every
/// key and field of it leaves Redis once the ledger has settled its streams; the ledger
/// keeps its whole record, and reads of the SKU and its reservations answer from it.
/// Idempotent: repeating it reports where the retirement stands. Idempotency records and
/// cancel barriers live as long as the SKU is live or ended: from the retirement on, a
/// repeated reserve is refused (`410 sku_retired`) rather than replayed.
#[utoipa::path(
    delete,
    path = "/v1/skus/{sku}",
    tag = "skus",
    params(("sku" = String, Path, description = "SKU id", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Retiring: the keys go once the ledger has settled the SKU's streams (the maintenance pass finishes it)", body = RetirementView),
        (status = 200, description = "Retired: nothing of the SKU is left in Redis", body = RetirementView),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin token configured", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "sku_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "sku_holds_open: units are held; confirm or cancel those reservations (or wait for them to expire), then retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid SKU id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retire_sku(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(sku): ApiPath<String>,
) -> Result<(StatusCode, Json<RetirementView>), ApiError> {
    let sku = Sku::new(sku)?;
    let retired = |status, state: SkuStatus| {
        (
            status,
            Json(RetirementView {
                sku: sku.to_string(),
                status: state,
            }),
        )
    };
    match state.store.retire(&sku).await {
        Ok(Retirement::Retiring) => {
            // This engine refuses from memory at once; the others at their next reload.
            state.admission.forget(&sku);
            Ok(retired(StatusCode::ACCEPTED, SkuStatus::Retiring))
        }
        Ok(Retirement::Retired) => {
            state.admission.forget(&sku);
            Ok(retired(StatusCode::OK, SkuStatus::Retired))
        }
        Err(StoreError::UnknownSku) if super::retired::is_retired(&state, &sku).await => {
            Ok(retired(StatusCode::OK, SkuStatus::Retired))
        }
        Err(error) => Err(error.into()),
    }
}
