//! Carts: several SKUs reserved all together or not at all; read, confirm, cancel.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::reservations::owned_by;
use super::{rfc3339, timed, ApiError, AppState};
use crate::admission::Refusal;
use crate::ids::{CallerName, CartId, Sku, UserId};
use crate::store::{
    Cart, CartLineRequest, CartRequest, CartState, LineRefusal, StoreError, MAX_CART_LINES,
    MAX_PER_USER_LIMIT,
};

/// Where a cart stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    /// Every line is held until `expires_at`.
    Held,
    /// Every line is sold.
    Confirmed,
    /// Every line was cancelled; the units went back.
    Cancelled,
    /// Not confirmed in time; every line's units went back.
    Expired,
    /// Between steps (its lines being confirmed, cancelled or returned): ask again
    /// shortly. Never a partial cart: no line of it is shown as settled alone.
    Pending,
}

impl From<CartState> for CartStatus {
    fn from(state: CartState) -> Self {
        match state {
            CartState::Held => Self::Held,
            CartState::Confirmed => Self::Confirmed,
            CartState::Cancelled => Self::Cancelled,
            CartState::Expired => Self::Expired,
            CartState::Opening
            | CartState::Confirming
            | CartState::Cancelling
            | CartState::Expiring
            | CartState::RollingBack
            | CartState::RolledBack => Self::Pending,
        }
    }
}

/// One line of a cart.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartLineView {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
    /// The line's hold: readable at `/v1/reservations/{id}`, confirmed and cancelled only
    /// with its cart.
    pub reservation_id: String,
}

/// A cart.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartView {
    /// Its id, unguessable.
    pub cart_id: String,
    /// The buyer.
    pub user_id: String,
    /// Where it stands.
    pub status: CartStatus,
    /// When every line expires, together (RFC 3339, Redis's clock).
    pub expires_at: String,
    /// Its lines, in SKU order.
    pub lines: Vec<CartLineView>,
}

impl From<&Cart> for CartView {
    fn from(cart: &Cart) -> Self {
        Self {
            cart_id: cart.id.to_string(),
            user_id: cart.user.to_string(),
            status: cart.state.into(),
            expires_at: rfc3339(cart.deadline_ms),
            lines: cart
                .lines
                .iter()
                .map(|line| CartLineView {
                    sku: line.sku.to_string(),
                    quantity: line.quantity,
                    reservation_id: line.reservation.to_string(),
                })
                .collect(),
        }
    }
}

/// A cart as a face read it; the operation validates it.
pub struct OpenCartInput<'a> {
    /// The `idempotency-key` the request carries, if any.
    pub key: Option<&'a [u8]>,
    /// The buyer.
    pub user_id: String,
    /// What to reserve, all together.
    pub lines: Vec<CartLineInput>,
}

/// One line of a cart as a face read it.
pub struct CartLineInput {
    /// The SKU.
    pub sku: String,
    /// Units, if the face read a quantity a line may take (see
    /// [`super::reservations::line_quantity`]); `None` for any other value.
    pub quantity: Option<u32>,
}

/// An open cart's answer.
pub struct Opened {
    /// The cart, as it is now.
    pub cart: CartView,
    /// An earlier request with the same key made it.
    pub replayed: bool,
}

/// Holds every line of a cart, or none.
///
/// The lines are taken in SKU order, each on its SKU's shard, under a cart record written
/// first; on the first refusal the lines taken are returned and nothing is held. Per-user
/// limits, sale windows and rate limits apply per line, from memory where memory can say
/// no. The key is scoped to the `user_id`: a repeat with the same lines returns the cart as
/// it is now (`replayed`); with other lines it is refused (`idempotency_key_reused`). A
/// refused cart leaves no trace: its key may be sent again.
pub async fn open_cart(
    state: &AppState,
    caller: Option<CallerName>,
    input: OpenCartInput<'_>,
) -> Result<Opened, ApiError> {
    open(state, caller, input)
        .await
        .map_err(ApiError::on_reserve)
}

async fn open(
    state: &AppState,
    caller: Option<CallerName>,
    input: OpenCartInput<'_>,
) -> Result<Opened, ApiError> {
    let key = super::idempotency_key(input.key)?;
    let user = UserId::new(input.user_id)?;
    let request = CartRequest {
        lines: cart_lines(input.lines)?,
        user,
        key,
        caller,
    };
    take(state, &request)
        .await
        .inspect_err(|error| match error {
            // Each refused line under its own reason; a cart refused whole, under every line.
            ApiError::Store(StoreError::CartRefused(lines)) => {
                for line in lines {
                    state.count_code(&line.sku, line.code);
                }
            }
            error => {
                for line in &request.lines {
                    state.count_refusal(&line.sku, error);
                }
            }
        })
}

/// A cart read and checked: every line through admission, then the store.
async fn take(state: &AppState, request: &CartRequest) -> Result<Opened, ApiError> {
    state.trusted()?;
    // Every line passes admission, from memory, before anything reaches Redis.
    let now = state.store.redis_now_ms();
    let mut permits = Vec::with_capacity(request.lines.len());
    let mut closed = Vec::new();
    for line in &request.lines {
        match state
            .admission
            .admit_reserve(&line.sku, &request.user, &request.key, now)
        {
            Ok(permit) => permits.push(permit),
            Err(refusal @ (Refusal::SoldOut | Refusal::NotStarted | Refusal::Ended)) => {
                state.metrics.refused(refusal.reason());
                let error = match refusal {
                    Refusal::SoldOut => StoreError::SoldOut,
                    Refusal::NotStarted => StoreError::NotStarted,
                    _ => StoreError::Ended,
                };
                closed.push(LineRefusal {
                    sku: line.sku.clone(),
                    code: error.code(),
                    detail: error.to_string(),
                });
            }
            Err(refusal) => return Err(state.refused(refusal)),
        }
    }
    if !closed.is_empty() {
        // The key may have made a cart before these lines closed: a retry gets it back.
        let _permit = state.call_permit()?;
        let replay = timed(state, "read", state.store.replay_cart(request)).await?;
        return match replay {
            Some(opened) => Ok(Opened {
                cart: CartView::from(&opened.cart),
                replayed: opened.replayed,
            }),
            None => Err(StoreError::CartRefused(closed).into()),
        };
    }
    let opened = timed(state, "cart", state.store.open_cart(request)).await;
    drop(permits);
    for line in &request.lines {
        state.learn(&line.sku).await;
    }
    if let Err(StoreError::CartRefused(lines)) = &opened {
        for line in lines.iter().filter(|line| line.code == "sold_out") {
            state.sold_out(&line.sku);
        }
    }
    let opened = opened?;
    for line in &request.lines {
        state.count_hold(&line.sku);
    }
    Ok(Opened {
        cart: CartView::from(&opened.cart),
        replayed: opened.replayed,
    })
}

/// Validates the lines: 1 to 16, each SKU once, each quantity a whole number in range.
fn cart_lines(lines: Vec<CartLineInput>) -> Result<Vec<CartLineRequest>, ApiError> {
    let invalid = |detail: String| ApiError::Invalid {
        code: "invalid_cart",
        detail,
    };
    if lines.is_empty() || lines.len() > MAX_CART_LINES {
        return Err(invalid(format!(
            "a cart has 1 to {MAX_CART_LINES} lines (got {})",
            lines.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(lines.len());
    let mut bad_quantities = Vec::new();
    for line in lines {
        let sku = Sku::new(line.sku)?;
        if !seen.insert(sku.clone()) {
            return Err(invalid(format!(
                "sku {sku} appears twice: a cart names each SKU once, with its quantity"
            )));
        }
        match line.quantity {
            Some(quantity) => out.push(CartLineRequest { sku, quantity }),
            None => bad_quantities.push(LineRefusal {
                sku,
                code: "invalid_quantity",
                detail: format!(
                    "quantity must be a whole number from 1 to the SKU's per-user limit (at most {MAX_PER_USER_LIMIT})"
                ),
            }),
        }
    }
    if !bad_quantities.is_empty() {
        return Err(StoreError::CartRefused(bad_quantities).into());
    }
    Ok(out)
}

fn cart_id(text: &str) -> Result<CartId, ApiError> {
    Ok(CartId::parse(text)?)
}

/// Reads a cart.
pub async fn get_cart(
    state: &AppState,
    caller: Option<&CallerName>,
    id: &str,
) -> Result<CartView, ApiError> {
    let id = cart_id(id)?;
    let _permit = state.call_permit()?;
    let cart = timed(state, "read", state.store.cart(&id)).await?;
    owned_by(caller, cart.caller.as_ref().map(CallerName::as_str))?;
    Ok(CartView::from(&cart))
}

/// Confirms every line of a cart (payment succeeded). Idempotent. A cart past its
/// deadline is expired instead, every line together.
pub async fn confirm_cart(
    state: &AppState,
    caller: Option<&CallerName>,
    id: &str,
) -> Result<CartView, ApiError> {
    let id = cart_id(id)?;
    let _permit = state.settle_permit(None)?;
    let confirmed = state.store.confirm_cart(&id, caller);
    let cart = timed(state, "cart", confirmed).await?;
    Ok(CartView::from(&cart))
}

/// Cancels every line of a cart; the units go back. Idempotent; an expired cart comes
/// back as expired.
pub async fn cancel_cart(
    state: &AppState,
    caller: Option<&CallerName>,
    id: &str,
) -> Result<CartView, ApiError> {
    let id = cart_id(id)?;
    let _permit = state.settle_permit(None)?;
    let cancelled = state.store.cancel_cart(&id, caller);
    let cart = timed(state, "cart", cancelled).await?;
    for line in &cart.lines {
        state.admission.clear_sold_out(&line.sku);
    }
    Ok(CartView::from(&cart))
}
