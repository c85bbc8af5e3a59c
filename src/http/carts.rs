//! `/v1/carts`: several SKUs reserved all together or not at all; confirm, cancel, read.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::CartProblem;
use super::extract::{ApiJson, ApiPath, Caller};
use super::number::RawQuantity;
use super::reservations::{idempotency_key, owned_by, timed, IDEMPOTENT_REPLAYED};
use super::{rfc3339, ApiError, AppState, Problem};
use crate::admission::Refusal;
use crate::ids::{CallerName, CartId, Sku, UserId};
use crate::store::{
    Cart, CartLineRequest, CartRequest, CartState, LineRefusal, StoreError, MAX_CART_LINES,
    MAX_PER_USER_LIMIT,
};

/// A cart: 1 to 16 lines, each SKU at most once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartBody {
    /// The buyer.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub user_id: String,
    /// What to reserve, all together.
    #[schema(min_items = 1, max_items = 16)]
    pub lines: Vec<CartLineBody>,
}

/// One line of a cart.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartLineBody {
    /// The SKU.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// Units (default 1): a whole number from 1 to the SKU's per-user limit.
    #[serde(default)]
    #[schema(value_type = u32, minimum = 1, maximum = 1_000_000)]
    pub quantity: RawQuantity,
}

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

/// Holds every line of a cart, or none.
///
/// The lines are taken in SKU order, each on its SKU's shard, under a cart record written
/// first; on the first refusal the lines taken are returned and nothing is held. Per-user
/// limits, sale windows and rate limits apply per line, from memory where memory can say
/// no. The `Idempotency-Key` is scoped to the `user_id`: a repeat with the same lines
/// returns the cart (201, `Idempotent-Replayed: true`) as it is now; with other lines it is
/// refused (`idempotency_key_reused`). A refused cart leaves no trace: its key may be sent
/// again. The lines expire together, at `expires_at` (the shortest hold of their SKUs).
#[utoipa::path(
    post,
    path = "/v1/carts",
    tag = "carts",
    params(("Idempotency-Key" = String, Header, description = "1-128 of [A-Za-z0-9._-], scoped to user_id: a repeat with the same lines returns the cart, with other lines it is refused (idempotency_key_reused)", pattern = "^[A-Za-z0-9._-]{1,128}$")),
    request_body = CartBody,
    responses(
        (status = 201, description = "Every line held; or an idempotent repeat (header Idempotent-Replayed: true), as the cart is now", body = CartView,
            links(
                ("GetCart" = (operation_id = "get_cart", parameters(("id" = "$response.body#/cart_id")), description = "Read the cart")),
                ("ConfirmCart" = (operation_id = "confirm_cart", parameters(("id" = "$response.body#/cart_id")), description = "Confirm every line (payment succeeded)")),
                ("CancelCart" = (operation_id = "cancel_cart", parameters(("id" = "$response.body#/cart_id")), description = "Cancel every line; the units go back")),
            )
        ),
        (status = 400, description = "missing_idempotency_key, malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "sku_not_found (the lines member names it); nothing held", body = CartProblem, content_type = "application/problem+json"),
        (status = 409, description = "sold_out, insufficient_stock, limit_exceeded, sale_not_started, sale_ended: the first refused line's reason; the lines member names each refused line; nothing held. cart_pending: the key's cart is being opened or rolled back, retry shortly", body = CartProblem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_cart (no lines, more than 16, a SKU twice); invalid_quantity (the lines member names the line and the detail its limit); idempotency_key_reused; invalid_sku, invalid_user_id, invalid_idempotency_key; invalid_body", body = CartProblem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After; nothing held", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable, with Retry-After: retry with the same Idempotency-Key, which returns the cart if it was made. settlement_behind: the ledger is behind (--max-unsettled); nothing held; retry after the given time", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made the cart", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn open_cart(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CartBody>,
) -> Result<Response, ApiError> {
    open(state, caller, headers, body)
        .await
        .map_err(ApiError::on_reserve)
}

async fn open(
    state: AppState,
    caller: Option<CallerName>,
    headers: HeaderMap,
    body: CartBody,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let user = UserId::new(body.user_id)?;
    let request = CartRequest {
        lines: cart_lines(body.lines)?,
        user,
        key,
        caller,
    };
    take(&state, &request)
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
async fn take(state: &AppState, request: &CartRequest) -> Result<Response, ApiError> {
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
            Some(opened) => Ok(cart_created(&opened.cart, opened.replayed)),
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
    Ok(cart_created(&opened.cart, opened.replayed))
}

fn cart_created(cart: &Cart, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, Json(CartView::from(cart))).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// Validates the lines: 1 to 16, each SKU once, each quantity a whole number in range.
fn cart_lines(lines: Vec<CartLineBody>) -> Result<Vec<CartLineRequest>, ApiError> {
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
        let quantity = line
            .quantity
            .within(1, u64::from(MAX_PER_USER_LIMIT))
            .and_then(|q| u32::try_from(q).ok());
        match quantity {
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
#[utoipa::path(
    get,
    path = "/v1/carts/{id}",
    tag = "carts",
    params(("id" = String, Path, description = "Cart id", pattern = "^cart~(0|1[0-5]?|[2-9])~[a-z2-7]{20}$")),
    responses(
        (status = 200, description = "The cart", body = CartView),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made the cart", body = Problem, content_type = "application/problem+json"),

        (status = 404, description = "cart_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn get_cart(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CartView>, ApiError> {
    let id = cart_id(&id)?;
    let _permit = state.call_permit()?;
    let cart = timed(&state, "read", state.store.cart(&id)).await?;
    owned_by(
        caller.as_ref(),
        cart.caller.as_ref().map(CallerName::as_str),
    )?;
    Ok(Json(CartView::from(&cart)))
}

/// Confirms every line of a cart (payment succeeded). Idempotent. A cart past its
/// deadline is expired instead, every line together.
#[utoipa::path(
    post,
    path = "/v1/carts/{id}/confirm",
    tag = "carts",
    params(("id" = String, Path, description = "Cart id", pattern = "^cart~(0|1[0-5]?|[2-9])~[a-z2-7]{20}$")),
    responses(
        (status = 200, description = "Every line confirmed (now or before)", body = CartView),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made the cart", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After: confirms and cancels spend a token of the global bucket", body = Problem, content_type = "application/problem+json"),

        (status = 404, description = "cart_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "cart_cancelled; cart_pending (being opened or rolled back)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "cart_expired: its deadline passed; every line's units went back", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable: retry; the confirm is finished by the retry or by the maintenance pass", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn confirm_cart(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CartView>, ApiError> {
    let id = cart_id(&id)?;
    let _permit = state.settle_permit(None)?;
    let confirmed = state.store.confirm_cart(&id, caller.as_ref());
    let cart = timed(&state, "cart", confirmed).await?;
    Ok(Json(CartView::from(&cart)))
}

/// Cancels every line of a cart; the units go back. Idempotent; an expired cart comes back
/// as expired.
#[utoipa::path(
    post,
    path = "/v1/carts/{id}/cancel",
    tag = "carts",
    params(("id" = String, Path, description = "Cart id", pattern = "^cart~(0|1[0-5]?|[2-9])~[a-z2-7]{20}$")),
    responses(
        (status = 200, description = "Every line cancelled (now or before), or found expired", body = CartView),
        (status = 401, description = "unauthenticated (no client token, when the engine has client tokens), invalid_token; with WWW-Authenticate: Bearer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not_your_reservation: another caller made the cart", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, with Retry-After: confirms and cancels spend a token of the global bucket", body = Problem, content_type = "application/problem+json"),

        (status = 404, description = "cart_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "cart_confirmed; cart_pending (being opened or rolled back)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable: retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("client_token" = []), ())
)]
pub async fn cancel_cart(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CartView>, ApiError> {
    let id = cart_id(&id)?;
    let _permit = state.settle_permit(None)?;
    let cancelled = state.store.cancel_cart(&id, caller.as_ref());
    let cart = timed(&state, "cart", cancelled).await?;
    for line in &cart.lines {
        state.admission.clear_sold_out(&line.sku);
    }
    Ok(Json(CartView::from(&cart)))
}
