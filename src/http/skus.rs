//! `/v1/skus`: load, restock, read and retire a SKU.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{Admin, ApiJson, ApiPath};
use super::number::{self, RawQuantity};
use super::{ApiError, AppState, Problem};
use crate::api::parse_time;
use crate::api::skus::{self, SkuInput};
pub use crate::api::skus::{RetirementView, SkuStatus, SkuView};
use crate::store::Loaded;

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
    let time = |field, text: Option<String>| text.map(|t| parse_time(field, &t, 0)).transpose();
    let input = SkuInput {
        stock: body.stock,
        per_user_limit: body.per_user_limit,
        hold_seconds: body.hold_seconds,
        shards: body.shards,
        starts_at_ms: time("starts_at", body.starts_at)?,
        ends_at_ms: time("ends_at", body.ends_at)?,
    };
    let (loaded, view) = skus::put_sku(&state, sku, input).await?;
    let status = match loaded {
        Loaded::Created => StatusCode::CREATED,
        Loaded::Replaced => StatusCode::OK,
    };
    Ok((status, Json(view)))
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
    skus::get_sku(&state, sku).await.map(Json)
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
    // The field is required, so no default applies (0 would be refused anyway).
    let quantity = body.quantity.within(0, u64::MAX);
    skus::restock(&state, sku, quantity, body.operation_id)
        .await
        .map(Json)
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
    let view = skus::retire_sku(&state, sku).await?;
    let status = match view.status {
        SkuStatus::Retiring => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(view)))
}
