//! Baselines the engine is compared with, labelled as such: the usual ways of serving a
//! flash-sale reserve.
//!
//! Each baseline is a small axum server with the engine's request shape, so the same load
//! generator drives all three:
//!
//! - `POST /v1/reservations` with `{"sku", "user_id", "quantity"?}` and an
//!   `Idempotency-Key` header (required, not honoured): 201 with the reservation, 409
//!   `sold_out`, 404 `sku_not_found`, 422 `invalid_request`, 400
//!   `missing_idempotency_key`, 503 `unavailable`.
//! - `PUT /v1/skus/{sku}` with `{"stock": N}`, no auth: sets the stock before a run.
//! - `GET /healthz`.
//!
//! Every response carries an `x-baseline` header naming the baseline, and the JSON bodies
//! a `baseline` field, so a result can never be mistaken for the engine's.
//!
//! They are deliberately simple but correct: neither oversells. [`serve_naive`] checks out a
//! pooled Redis connection per request and runs one unsharded check-and-decrement script;
//! [`serve_pg_hotrow`] decrements one PostgreSQL row per request and inserts an order.

mod naive;
mod pg_hotrow;

pub use naive::serve_naive;
pub use pg_hotrow::{serve_pg_hotrow, PG_HOTROW_DEFAULT_POOL_SIZE};

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flashsale::ids::{Sku, UserId};
use serde::Deserialize;
use serde_json::json;

/// The header every baseline response carries.
const BASELINE_HEADER: HeaderName = HeaderName::from_static("x-baseline");

/// A reserve as sent, before validation.
#[derive(Debug, Deserialize)]
struct ReserveBody {
    /// The SKU.
    sku: String,
    /// The buyer.
    user_id: String,
    /// Units; 1 when absent, as in the engine.
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// A stock load as sent to `PUT /v1/skus/{sku}`.
#[derive(Debug, Deserialize)]
struct StockBody {
    /// Units on sale; signed because both backends store a signed 64-bit count.
    stock: i64,
}

/// A validated reserve: the only form from which a key or a query parameter is built.
#[derive(Debug)]
struct Reserve {
    /// The SKU.
    sku: Sku,
    /// The buyer.
    user: UserId,
    /// Units, at least 1.
    quantity: u32,
}

impl Reserve {
    /// Checks the header and body the way the engine does, short of idempotency.
    fn validate(headers: &HeaderMap, body: ReserveBody) -> Result<Self, Refusal> {
        if !headers.contains_key("idempotency-key") {
            return Err(Refusal::MissingIdempotencyKey);
        }
        let sku = Sku::new(body.sku).map_err(|_| Refusal::Invalid)?;
        let user = UserId::new(body.user_id).map_err(|_| Refusal::Invalid)?;
        if body.quantity == 0 {
            return Err(Refusal::Invalid);
        }
        Ok(Self {
            sku,
            user,
            quantity: body.quantity,
        })
    }

    /// The 201 answer for this reserve, held under `reservation_id`.
    fn held(&self, baseline: &str, reservation_id: String) -> Response {
        let body = json!({
            "reservation_id": reservation_id,
            "sku": self.sku.as_str(),
            "user_id": self.user.as_str(),
            "quantity": self.quantity,
            "status": "held",
            "baseline": baseline,
        });
        (StatusCode::CREATED, axum::Json(body)).into_response()
    }
}

/// Why a baseline did not hold units: the engine's codes for the same conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 400: no `Idempotency-Key` header.
    MissingIdempotencyKey,
    /// 422: an id outside `[A-Za-z0-9._-]{1,64}`, a zero quantity or a negative stock.
    Invalid,
    /// 404: no stock was ever loaded for the SKU.
    SkuNotFound,
    /// 409: fewer units left than asked for.
    SoldOut,
    /// 503: the backend failed or did not answer.
    Unavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            Self::MissingIdempotencyKey => (StatusCode::BAD_REQUEST, "missing_idempotency_key"),
            Self::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::SkuNotFound => (StatusCode::NOT_FOUND, "sku_not_found"),
            Self::SoldOut => (StatusCode::CONFLICT, "sold_out"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        let body = json!({ "code": code, "status": status.as_u16() }).to_string();
        (
            status,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response()
    }
}

/// The 201 answer to a stock load.
fn stock_set(baseline: &str, sku: &Sku, stock: i64) -> Response {
    let body = json!({ "sku": sku.as_str(), "stock": stock, "baseline": baseline });
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// Validates a stock load's path and body.
fn validate_stock(sku: String, body: StockBody) -> Result<(Sku, i64), Refusal> {
    let sku = Sku::new(sku).map_err(|_| Refusal::Invalid)?;
    if body.stock < 0 {
        return Err(Refusal::Invalid);
    }
    Ok((sku, body.stock))
}

/// The `GET /healthz` answer. It does not touch the backend: a baseline that lost its
/// backend shows it in 503s on reserve, which is what a run measures.
fn healthy(baseline: &str) -> Response {
    axum::Json(json!({ "status": "ok", "baseline": baseline })).into_response()
}

/// Adds the `x-baseline: <name>` header to every response of `router`.
fn labelled(router: Router, baseline: &'static str) -> Router {
    router.layer(axum::middleware::map_response(
        move |mut response: Response| async move {
            response
                .headers_mut()
                .insert(BASELINE_HEADER, HeaderValue::from_static(baseline));
            response
        },
    ))
}
