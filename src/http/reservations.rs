//! `/v1/reservations`: reserve (Try), confirm, cancel, cancel by key, read.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath, Caller};
use super::number::RawQuantity;
use super::{rfc3339, ApiError, AppState, Problem};
use crate::ids::{CallerName, IdempotencyKey, ReservationId, Sku, UserId};
use crate::store::{
    ExpiredBecause, HoldState, QuantityBound, Reservation, ReserveRequest, StoreError,
    MAX_PER_USER_LIMIT,
};

/// The header that makes a reserve idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
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

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Units held until `expires_at`.
    Held,
    /// Sold.
    Confirmed,
    /// Cancelled; the units went back.
    Cancelled,
    /// Not confirmed in time; the units went back.
    Expired,
}

impl From<HoldState> for ReservationStatus {
    fn from(state: HoldState) -> Self {
        match state {
            HoldState::Held => Self::Held,
            HoldState::Confirmed => Self::Confirmed,
            HoldState::Cancelled => Self::Cancelled,
            HoldState::Expired => Self::Expired,
        }
    }
}

/// A reservation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservationView {
    /// Its id; names the SKU and shard, unguessable.
    pub reservation_id: String,
    /// The SKU.
    pub sku: String,
    /// The buyer.
    pub user_id: String,
    /// Units.
    pub quantity: u32,
    /// Where it stands.
    pub status: ReservationStatus,
    /// When the hold expires or expired (RFC 3339, Redis's clock).
    pub expires_at: String,
    /// The cart the reservation is a line of, if it is one: it is confirmed and cancelled
    /// with its cart, not alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<String>,
    /// Present and true when its SKU is retired: the answer comes from the ledger of
    /// record, and the reservation can no longer change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        Self {
            reservation_id: r.id.to_string(),
            sku: r.sku().to_string(),
            user_id: r.user.to_string(),
            quantity: r.quantity,
            status: r.state.into(),
            expires_at: rfc3339(r.deadline_ms),
            cart_id: r.origin.cart().map(ToString::to_string),
            retired: false,
        }
    }
}

/// The answer to a cancel by key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelByKeyView {
    /// Always `cancelled`: the key is barred from now on, whether or not a hold existed.
    pub status: String,
    /// The reservation the key had made, if any, as it is now.
    pub reservation: Option<ReservationView>,
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let value = headers.get(IDEMPOTENCY_KEY).ok_or(ApiError::BadRequest {
        code: "missing_idempotency_key",
        detail: "the Idempotency-Key header is required".into(),
    })?;
    let text = value.to_str().map_err(|_| ApiError::Invalid {
        code: "invalid_idempotency_key",
        detail: "idempotency_key may contain only ASCII letters and digits, '.', '_' and '-'"
            .into(),
    })?;
    Ok(IdempotencyKey::new(text)?)
}

fn reservation_id(text: &str) -> Result<ReservationId, ApiError> {
    Ok(ReservationId::parse(text)?)
}

/// Times a store call into the Redis latency histogram.
pub(super) async fn timed<T>(
    state: &AppState,
    op: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    state
        .metrics
        .redis_seconds
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    if let Err(StoreError::Redis(error)) = &result {
        let kind = if error.is_timeout() {
            "timeout"
        } else {
            "error"
        };
        state
            .metrics
            .redis_errors
            .with_label_values(&[op, kind])
            .inc();
    }
    result
}

/// The refusal of a quantity that no reserve of `sku` takes, naming the SKU's limit.
async fn invalid_quantity(state: &AppState, sku: &Sku) -> ApiError {
    let permit = match state.call_permit() {
        Ok(permit) => permit,
        Err(error) => return error,
    };
    let config = state.store.config(sku).await;
    drop(permit);
    match config {
        Ok(config) => {
            StoreError::InvalidQuantity(QuantityBound::PerUser(config.per_user_limit)).into()
        }
        Err(error) => error.into(),
    }
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
    hold(state, caller, headers, body)
        .await
        .map_err(ApiError::on_reserve)
}

async fn hold(
    state: AppState,
    caller: Option<CallerName>,
    headers: HeaderMap,
    body: ReserveBody,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let sku = Sku::new(body.sku)?;
    let user = UserId::new(body.user_id)?;
    let quantity = body
        .quantity
        .within(1, u64::from(MAX_PER_USER_LIMIT))
        .and_then(|q| u32::try_from(q).ok());
    let Some(quantity) = quantity else {
        return Err(invalid_quantity(&state, &sku).await);
    };
    let request = ReserveRequest {
        sku,
        user,
        quantity,
        key,
        caller,
    };
    take(&state, &request)
        .await
        .inspect_err(|error| state.count_refusal(&request.sku, error))
}

/// A reserve read and checked: admission, then the store.
async fn take(state: &AppState, request: &ReserveRequest) -> Result<Response, ApiError> {
    state.trusted()?;
    let permit = state
        .admission
        .admit_reserve(
            &request.sku,
            &request.user,
            &request.key,
            state.store.redis_now_ms(),
        )
        .map_err(|refusal| state.refused(refusal))?;
    let result = timed(state, "reserve", state.store.reserve(request)).await;
    drop(permit);
    state.learn(&request.sku).await;
    let reserved = match result {
        Ok(reserved) => reserved,
        Err(StoreError::SoldOut) => {
            state.sold_out(&request.sku);
            return Err(StoreError::SoldOut.into());
        }
        Err(StoreError::UnknownSku) if super::retired::is_retired(state, &request.sku).await => {
            return Err(StoreError::Retired.into());
        }
        Err(error) => return Err(error.into()),
    };
    state.count_hold(&request.sku);
    let mut response = (
        StatusCode::CREATED,
        Json(ReservationView::from(&reserved.reservation)),
    )
        .into_response();
    if reserved.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
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
    let id = reservation_id(&id)?;
    let _permit = state.call_permit()?;
    let reservation = match timed(&state, "read", state.store.reservation(&id)).await {
        Err(StoreError::NotFound | StoreError::UnknownSku) => {
            // Retired: nothing is left in Redis, the ledger answers.
            if let Some((view, owner)) = super::retired::reservation_view(&state, &id).await {
                owned_by(caller.as_ref(), owner.as_deref())?;
                return Ok(Json(view));
            }
            return Err(StoreError::NotFound.into());
        }
        other => other?,
    };
    owned_by(
        caller.as_ref(),
        reservation.caller.as_ref().map(CallerName::as_str),
    )?;
    Ok(Json(ReservationView::from(&reservation)))
}

/// What a caller asks of a hold.
#[derive(Clone, Copy)]
enum Settle {
    Confirm,
    Cancel,
}

/// A confirm or cancel of a reservation Redis does not have: if its SKU is retired, the
/// answer the store would give for a hold in the state the ledger has (a repeated confirm
/// of a confirmed reservation is still a 200), written nowhere; otherwise not found.
async fn retired_answer(
    state: &AppState,
    id: &ReservationId,
    caller: Option<&CallerName>,
    settle: Settle,
) -> Result<ReservationView, ApiError> {
    let Some((view, owner)) = super::retired::reservation_view(state, id).await else {
        return Err(StoreError::NotFound.into());
    };
    owned_by(caller, owner.as_deref())?;
    use ReservationStatus as R;
    match (settle, view.status) {
        (Settle::Confirm, R::Confirmed) | (Settle::Cancel, R::Cancelled | R::Expired) => Ok(view),
        (Settle::Cancel, R::Confirmed) => Err(StoreError::Confirmed.into()),
        (Settle::Confirm, R::Cancelled) => Err(StoreError::Cancelled.into()),
        (Settle::Confirm, R::Expired) => Err(StoreError::Expired(ExpiredBecause::Stock).into()),
        // A SKU is retired only once no hold is open: the ledger has none of it held.
        (_, R::Held) => Err(StoreError::NotFound.into()),
    }
}

/// Refuses a caller that is not the one that made the hold (a hold made with no caller,
/// before client tokens were configured, is anyone's; so is every hold without them).
pub(super) fn owned_by(caller: Option<&CallerName>, owner: Option<&str>) -> Result<(), ApiError> {
    match (caller, owner) {
        (Some(caller), Some(owner)) if caller.as_str() != owner => Err(StoreError::NotOwner.into()),
        _ => Ok(()),
    }
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
    let id = reservation_id(&id)?;
    let _permit = state.settle_permit(Some(id.sku()))?;
    let confirmed = state.store.confirm(&id, caller.as_ref());
    let reservation = match timed(&state, "confirm", confirmed).await {
        Err(StoreError::NotFound | StoreError::UnknownSku) => {
            return retired_answer(&state, &id, caller.as_ref(), Settle::Confirm)
                .await
                .map(Json);
        }
        other => other?,
    };
    Ok(Json(ReservationView::from(&reservation)))
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
    let id = reservation_id(&id)?;
    let _permit = state.settle_permit(Some(id.sku()))?;
    let cancelled = state.store.cancel(&id, caller.as_ref());
    let reservation = match timed(&state, "cancel", cancelled).await {
        Err(StoreError::NotFound | StoreError::UnknownSku) => {
            return retired_answer(&state, &id, caller.as_ref(), Settle::Cancel)
                .await
                .map(Json);
        }
        other => other?,
    };
    // Units may have come back: let the next reserve ask Redis.
    state.admission.clear_sold_out(id.sku());
    Ok(Json(ReservationView::from(&reservation)))
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
    let sku = Sku::new(body.sku)?;
    let user = UserId::new(body.user_id)?;
    let key = IdempotencyKey::new(body.idempotency_key)?;
    let _permit = state.settle_permit(Some(&sku))?;
    let found = timed(
        &state,
        "cancel_by_key",
        state
            .store
            .cancel_by_key(&sku, &user, &key, caller.as_ref()),
    )
    .await?;
    state.admission.clear_sold_out(&sku);
    Ok(Json(CancelByKeyView {
        status: "cancelled".to_owned(),
        reservation: found.as_ref().map(ReservationView::from),
    }))
}
