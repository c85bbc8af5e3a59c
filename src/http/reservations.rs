//! `/v1/reservations`: reserve (Try), confirm, cancel, cancel by key, read.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath, Caller};
use super::number::RawQuantity;
use super::{ApiError, AppState, Problem};
use crate::api::reservations::{self, line_quantity, CancelByKeyInput, ReserveInput};
pub use crate::api::reservations::{CancelByKeyView, ReservationStatus, ReservationView};
pub use crate::api::IDEMPOTENCY_KEY;

/// Set on a reserve answered from an earlier one with the same key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A reserve. Its `Idempotency-Key` is scoped to the pair (`sku`, `user_id`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// The SKU.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// The buyer.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub user_id: String,
    /// Units (default 1): a whole number from 1 to the SKU's per-user limit (`2.0` counts
    /// as 2); any other value is refused with `invalid_quantity`, which names the limit.
    /// The schema's maximum is the highest limit a SKU may have: the SKU's own limit is
    /// stored data, which a schema cannot state.
    #[serde(default)]
    #[schema(value_type = u32, minimum = 1, maximum = 1_000_000)]
    pub quantity: RawQuantity,
}

/// A cancel by idempotency key, for a client that never learnt the reservation id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelByKeyBody {
    /// The SKU.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// The buyer.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub user_id: String,
    /// The key the reserve was (or would have been) sent with.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub idempotency_key: String,
}

/// Holds units for a buyer until the SKU's hold time has passed.
///
/// Idempotency: the `Idempotency-Key` is scoped to the pair (`sku`, `user_id`), so that the
/// check runs inside the one atomic script on the user's home shard. Within that scope a
/// repeat with the same quantity returns the original reservation as it is now (201 with
/// `Idempotent-Replayed: true`), and a repeat with another quantity is refused with 422
/// `idempotency_key_reused`. The same key sent with another `sku` or another `user_id` is
/// another key: it makes a reservation of its own. Keys live as long as the SKU is live
/// or ended: until it is retired (then every read answers from the ledger).
#[utoipa::path(
    post,
    path = "/v1/reservations",
    tag = "reservations",
    params(("Idempotency-Key" = String, Header, description = "1-128 of [A-Za-z0-9._-], scoped to (sku, user_id): within that scope a repeat with the same quantity returns the original reservation, one with another quantity is refused (idempotency_key_reused: an earlier request decides, which a schema cannot state); with another sku or user_id it is another key", pattern = "^[A-Za-z0-9._-]{1,128}$")),
    request_body = ReserveBody,
    responses(
        (status = 201, description = "Held; or an idempotent repeat (header Idempotent-Replayed: true), as the reservation is now", body = ReservationView,
            links(
                ("GetReservation" = (operation_id = "get_reservation", parameters(("id" = "$response.body#/reservation_id")), description = "Read the reservation")),
                ("ConfirmReservation" = (operation_id = "confirm", parameters(("id" = "$response.body#/reservation_id")), description = "Confirm the hold (payment succeeded)")),
                ("CancelReservation" = (operation_id = "cancel", parameters(("id" = "$response.body#/reservation_id")), description = "Cancel the hold; its units go back")),
            )
        ),
        (status = 400, description = "missing_idempotency_key, malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "sku_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: the key made a reservation of another caller", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "sku_retired: the SKU is retired (its record is in the ledger); it takes no new reservation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "sold_out, insufficient_stock, limit_exceeded, sale_not_started, sale_ended, reservation_cancelled (key barred by a cancel), too_many_keys (the user has used as many keys on this SKU as a user may)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency_key_reused (the key was used for this sku and user_id with another quantity); invalid_quantity (not a whole number from 1 to the SKU's per-user limit, which the detail names); invalid_sku, invalid_user_id, invalid_idempotency_key; invalid_body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable: Redis down or stalled, or too many requests in flight, with Retry-After. The hold may have been made: retry with the same Idempotency-Key, which returns it rather than making another. settlement_behind: the ledger is behind (--max-unsettled); no hold was made; retry after the given time", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn reserve(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let input = ReserveInput {
        key: headers.get(IDEMPOTENCY_KEY).map(HeaderValue::as_bytes),
        sku: body.sku,
        user_id: body.user_id,
        quantity: body.quantity.within(1, u64::MAX).and_then(line_quantity),
    };
    let reserved = reservations::reserve(&state, caller, input).await?;
    Ok(created(reserved.reservation, reserved.replayed))
}

/// A 201 with what a reserve or cart made; `Idempotent-Replayed: true` if an earlier
/// request with the same key made it.
pub(super) fn created(view: impl Serialize, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// Reads a reservation.
#[utoipa::path(
    get,
    path = "/v1/reservations/{id}",
    tag = "reservations",
    params(("id" = String, Path, description = "Reservation id", pattern = "^[A-Za-z0-9._-]{1,64}~(0|[1-9][0-9]{0,3})~[a-z2-7]{20}$")),
    responses(
        (status = 200, description = "The reservation; of a retired SKU, the ledger's record, marked `retired`", body = ReservationView),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "reservation_not_found (also for a retired SKU's reservation when the engine runs without a ledger)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn get_reservation(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    reservations::get_reservation(&state, caller.as_ref(), &id)
        .await
        .map(Json)
}

/// Confirms a hold (payment succeeded). Idempotent; a hold past its deadline is confirmed
/// only if its units can be taken again.
#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/confirm",
    tag = "reservations",
    params(("id" = String, Path, description = "Reservation id", pattern = "^[A-Za-z0-9._-]{1,64}~(0|[1-9][0-9]{0,3})~[a-z2-7]{20}$")),
    responses(
        (status = 200, description = "Confirmed (now or before); of a retired SKU, the ledger's record, marked `retired`", body = ReservationView),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "reservation_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "reservation_cancelled; cart_line (the reservation is a cart's line: confirm the cart)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "reservation_expired: confirmed late and the units are gone", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After: confirms and cancels spend the reserves' tokens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn confirm(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    reservations::confirm(&state, caller.as_ref(), &id)
        .await
        .map(Json)
}

/// Cancels a hold; its units go back. Idempotent; an expired hold comes back as expired.
#[utoipa::path(
    post,
    path = "/v1/reservations/{id}/cancel",
    tag = "reservations",
    params(("id" = String, Path, description = "Reservation id", pattern = "^[A-Za-z0-9._-]{1,64}~(0|[1-9][0-9]{0,3})~[a-z2-7]{20}$")),
    responses(
        (status = 200, description = "Cancelled (now or before), or found expired; of a retired SKU, the ledger's record, marked `retired`", body = ReservationView),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "reservation_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "reservation_confirmed; cart_line (the reservation is a cart's line: cancel the cart)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After: confirms and cancels spend the reserves' tokens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    reservations::cancel(&state, caller.as_ref(), &id)
        .await
        .map(Json)
}

/// Cancels by idempotency key: the reservation the key made, if any; either way the key
/// is barred, so a reserve arriving later with it is refused (TCC empty rollback and
/// anti-hanging).
#[utoipa::path(
    post,
    path = "/v1/reservations/cancel-by-key",
    tag = "reservations",
    request_body = CancelByKeyBody,
    responses(
        (status = 200, description = "Cancelled, or barred for good", body = CancelByKeyView),
        (status = 400, description = "Unreadable body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: the key made a reservation of another caller", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "sku_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "reservation_confirmed; too_many_keys (the user has used as many keys on this SKU as a user may: the barrier is not made)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid ids", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After: confirms and cancels spend the reserves' tokens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn cancel_by_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<CancelByKeyBody>,
) -> Result<Json<CancelByKeyView>, ApiError> {
    let input = CancelByKeyInput {
        sku: body.sku,
        user_id: body.user_id,
        idempotency_key: body.idempotency_key,
    };
    reservations::cancel_by_key(&state, caller.as_ref(), input)
        .await
        .map(Json)
}
