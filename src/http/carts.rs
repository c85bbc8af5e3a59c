//! `/v1/carts`: several SKUs reserved all together or not at all; confirm, cancel, read.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::CartProblem;
use super::extract::{ApiJson, ApiPath, Caller};
use super::number::RawQuantity;
use super::reservations::created;
use super::{ApiError, AppState, Problem};
pub use crate::api::carts::CartView;
use crate::api::carts::{self, CartLineInput, OpenCartInput};
use crate::api::reservations::line_quantity;
use crate::api::IDEMPOTENCY_KEY;

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
    let input = OpenCartInput {
        key: headers.get(IDEMPOTENCY_KEY).map(HeaderValue::as_bytes),
        user_id: body.user_id,
        lines: body
            .lines
            .into_iter()
            .map(|line| CartLineInput {
                sku: line.sku,
                quantity: line.quantity.within(1, u64::MAX).and_then(line_quantity),
            })
            .collect(),
    };
    let opened = carts::open_cart(&state, caller, input).await?;
    Ok(created(opened.cart, opened.replayed))
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
    carts::get_cart(&state, caller.as_ref(), &id)
        .await
        .map(Json)
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
    carts::confirm_cart(&state, caller.as_ref(), &id)
        .await
        .map(Json)
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
    carts::cancel_cart(&state, caller.as_ref(), &id)
        .await
        .map(Json)
}
