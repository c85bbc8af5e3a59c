//! Reservations: reserve (Try), read, confirm, cancel, cancel by key.

use super::{rfc3339, timed, ApiError, AppState};
use crate::ids::{CallerName, IdempotencyKey, ReservationId, Sku, UserId};
use crate::store::{
    ExpiredBecause, HoldState, QuantityBound, Reservation, ReserveRequest, StoreError,
    MAX_PER_USER_LIMIT,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

/// A reserve as a face read it; the operation validates it.
pub struct ReserveInput<'a> {
    /// The `idempotency-key` the request carries, if any.
    pub key: Option<&'a [u8]>,
    /// The SKU.
    pub sku: String,
    /// The buyer.
    pub user_id: String,
    /// Units, if the face read a whole number from 1 to [`MAX_PER_USER_LIMIT`]; `None`
    /// for any other value, which is refused naming the SKU's own limit.
    pub quantity: Option<u32>,
}

/// A reserve's answer.
pub struct Reserved {
    /// The reservation, as it is now.
    pub reservation: ReservationView,
    /// An earlier reserve with the same key made it.
    pub replayed: bool,
}

/// A whole number a face read as a reserve or cart line's quantity, if it is one a line
/// may take: from 1 to [`MAX_PER_USER_LIMIT`].
pub fn line_quantity(quantity: u64) -> Option<u32> {
    u32::try_from(quantity)
        .ok()
        .filter(|q| (1..=MAX_PER_USER_LIMIT).contains(q))
}

/// Holds units for a buyer until the SKU's hold time has passed.
///
/// Idempotency: the key is scoped to the pair (`sku`, `user_id`), so that the check runs
/// inside the one atomic script on the user's home shard. Within that scope a repeat with
/// the same quantity returns the original reservation as it is now (`replayed`), and a
/// repeat with another quantity is refused (`idempotency_key_reused`). Keys live as long as
/// the SKU is live or ended: until it is retired.
pub async fn reserve(
    state: &AppState,
    caller: Option<CallerName>,
    input: ReserveInput<'_>,
) -> Result<Reserved, ApiError> {
    hold(state, caller, input)
        .await
        .map_err(ApiError::on_reserve)
}

async fn hold(
    state: &AppState,
    caller: Option<CallerName>,
    input: ReserveInput<'_>,
) -> Result<Reserved, ApiError> {
    let key = super::idempotency_key(input.key)?;
    let sku = Sku::new(input.sku)?;
    let user = UserId::new(input.user_id)?;
    let Some(quantity) = input.quantity else {
        return Err(invalid_quantity(state, &sku).await);
    };
    let request = ReserveRequest {
        sku,
        user,
        quantity,
        key,
        caller,
    };
    take(state, &request)
        .await
        .inspect_err(|error| state.count_refusal(&request.sku, error))
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

/// A reserve read and checked: admission, then the store.
async fn take(state: &AppState, request: &ReserveRequest) -> Result<Reserved, ApiError> {
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
    Ok(Reserved {
        reservation: ReservationView::from(&reserved.reservation),
        replayed: reserved.replayed,
    })
}

fn reservation_id(text: &str) -> Result<ReservationId, ApiError> {
    Ok(ReservationId::parse(text)?)
}

/// Reads a reservation; of a retired SKU, the ledger's record.
pub async fn get_reservation(
    state: &AppState,
    caller: Option<&CallerName>,
    id: &str,
) -> Result<ReservationView, ApiError> {
    let id = reservation_id(id)?;
    let _permit = state.call_permit()?;
    let reservation = match timed(state, "read", state.store.reservation(&id)).await {
        Err(StoreError::NotFound | StoreError::UnknownSku) => {
            // Retired: nothing is left in Redis, the ledger answers.
            if let Some((view, owner)) = super::retired::reservation_view(state, &id).await {
                owned_by(caller, owner.as_deref())?;
                return Ok(view);
            }
            return Err(StoreError::NotFound.into());
        }
        other => other?,
    };
    owned_by(caller, reservation.caller.as_ref().map(CallerName::as_str))?;
    Ok(ReservationView::from(&reservation))
}

/// What a caller asks of a hold.
#[derive(Clone, Copy)]
enum Settle {
    Confirm,
    Cancel,
}

/// A confirm or cancel of a reservation Redis does not have: if its SKU is retired, the
/// answer the store would give for a hold in the state the ledger has (a repeated confirm
/// of a confirmed reservation is still an answer), written nowhere; otherwise not found.
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
pub(crate) fn owned_by(caller: Option<&CallerName>, owner: Option<&str>) -> Result<(), ApiError> {
    match (caller, owner) {
        (Some(caller), Some(owner)) if caller.as_str() != owner => Err(StoreError::NotOwner.into()),
        _ => Ok(()),
    }
}

/// Confirms a hold (payment succeeded). Idempotent; a hold past its deadline is confirmed
/// only if its units can be taken again.
pub async fn confirm(
    state: &AppState,
    caller: Option<&CallerName>,
    id: &str,
) -> Result<ReservationView, ApiError> {
    let id = reservation_id(id)?;
    let _permit = state.settle_permit(Some(id.sku()))?;
    let confirmed = state.store.confirm(&id, caller);
    match timed(state, "confirm", confirmed).await {
        Err(StoreError::NotFound | StoreError::UnknownSku) => {
            retired_answer(state, &id, caller, Settle::Confirm).await
        }
        other => Ok(ReservationView::from(&other?)),
    }
}

/// Cancels a hold; its units go back. Idempotent; an expired hold comes back as expired.
pub async fn cancel(
    state: &AppState,
    caller: Option<&CallerName>,
    id: &str,
) -> Result<ReservationView, ApiError> {
    let id = reservation_id(id)?;
    let _permit = state.settle_permit(Some(id.sku()))?;
    let cancelled = state.store.cancel(&id, caller);
    let reservation = match timed(state, "cancel", cancelled).await {
        Err(StoreError::NotFound | StoreError::UnknownSku) => {
            return retired_answer(state, &id, caller, Settle::Cancel).await;
        }
        other => other?,
    };
    // Units may have come back: let the next reserve ask Redis.
    state.admission.clear_sold_out(id.sku());
    Ok(ReservationView::from(&reservation))
}

/// A cancel by key as a face read it.
pub struct CancelByKeyInput {
    /// The SKU.
    pub sku: String,
    /// The buyer.
    pub user_id: String,
    /// The key the reserve was (or would have been) sent with.
    pub idempotency_key: String,
}

/// Cancels by idempotency key: the reservation the key made, if any; either way the key
/// is barred, so a reserve arriving later with it is refused (TCC empty rollback and
/// anti-hanging).
pub async fn cancel_by_key(
    state: &AppState,
    caller: Option<&CallerName>,
    input: CancelByKeyInput,
) -> Result<CancelByKeyView, ApiError> {
    let sku = Sku::new(input.sku)?;
    let user = UserId::new(input.user_id)?;
    let key = IdempotencyKey::new(input.idempotency_key)?;
    let _permit = state.settle_permit(Some(&sku))?;
    let found = timed(
        state,
        "cancel_by_key",
        state.store.cancel_by_key(&sku, &user, &key, caller),
    )
    .await?;
    state.admission.clear_sold_out(&sku);
    Ok(CancelByKeyView {
        status: "cancelled".to_owned(),
        reservation: found.as_ref().map(ReservationView::from),
    })
}
