//! The API's errors as this face answers them: RFC 9457 `application/problem+json` with a
//! stable machine-readable `code`, each code at its HTTP status, mapped here and only here.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Bytes;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Refusal;
pub use crate::api::ApiError;
use crate::store::StoreError;

/// A problem, as sent to the client.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:flashsale:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
}

/// One refused line of a cart, in a cart's problem (`lines`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemLine {
    /// The line's SKU.
    pub sku: String,
    /// Why it was refused: the code a single reserve of it would have had.
    pub code: String,
    /// What that means.
    pub detail: String,
}

/// The outcome code of a response, for metrics; set on every problem response.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeCode(pub &'static str);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::Invalid {
                code: "invalid_body",
                detail: e.body_text(),
            },
            JsonRejection::JsonSyntaxError(e) => Self::BadRequest {
                code: "malformed_json",
                detail: e.body_text(),
            },
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType(
                "expected a body with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => Self::BadRequest {
                code: "unreadable_body",
                detail: other.body_text(),
            },
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest {
            code: "invalid_path",
            detail: rejection.body_text(),
        }
    }
}

struct Parts {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<Duration>,
    /// A refused cart's lines.
    lines: Option<Vec<ProblemLine>>,
}

impl ApiError {
    fn parts(&self) -> Parts {
        let status = status(self);
        let code = self.code();
        Parts {
            status,
            code,
            title: title(self, code),
            detail: self.detail(),
            retry_after: self.retry_after(),
            lines: self.refused_lines().map(|lines| {
                lines
                    .iter()
                    .map(|line| ProblemLine {
                        sku: line.sku.to_string(),
                        code: line.code.to_owned(),
                        detail: line.detail.clone(),
                    })
                    .collect()
            }),
        }
    }
}

/// The HTTP status of an error: the one place codes meet statuses on this face.
fn status(error: &ApiError) -> StatusCode {
    use StatusCode as S;
    match error {
        ApiError::ReserveUnanswered(inner) => status(inner),
        ApiError::Store(error) => match error {
            StoreError::CartRefused(lines) => match lines.first().map(|l| l.code) {
                Some("invalid_quantity") => S::UNPROCESSABLE_ENTITY,
                Some("sku_not_found") => S::NOT_FOUND,
                _ => S::CONFLICT,
            },
            StoreError::CartPending
            | StoreError::CartLine(_)
            | StoreError::CartConfirmed
            | StoreError::CartCancelled => S::CONFLICT,
            StoreError::CartNotFound => S::NOT_FOUND,
            StoreError::CartExpired => S::GONE,
            StoreError::SoldOut
            | StoreError::InsufficientStock
            | StoreError::LimitExceeded
            | StoreError::NotStarted
            | StoreError::Ended
            | StoreError::KeyCancelled
            | StoreError::Cancelled
            | StoreError::Confirmed
            | StoreError::TooManyKeys
            | StoreError::SkuLive
            | StoreError::HoldsOpen { .. } => S::CONFLICT,
            StoreError::NotOwner => S::FORBIDDEN,
            StoreError::UnknownSku | StoreError::NotFound => S::NOT_FOUND,
            StoreError::Retired => S::GONE,
            StoreError::InvalidQuantity(_) | StoreError::KeyReused | StoreError::InvalidSpec(_) => {
                S::UNPROCESSABLE_ENTITY
            }
            StoreError::Expired(_) => S::GONE,
            StoreError::Contended
            | StoreError::Recovering
            | StoreError::NotReplicated { .. }
            | StoreError::Redis(_) => S::SERVICE_UNAVAILABLE,
            StoreError::Protocol(_) => S::INTERNAL_SERVER_ERROR,
        },
        ApiError::Refused(refusal) => match refusal {
            Refusal::RateLimited { .. } => S::TOO_MANY_REQUESTS,
            Refusal::SoldOut | Refusal::NotStarted | Refusal::Ended => S::CONFLICT,
            Refusal::Overloaded
            | Refusal::Suspended
            | Refusal::Unregistered
            | Refusal::SettlementBehind => S::SERVICE_UNAVAILABLE,
        },
        ApiError::BadRequest { .. } => S::BAD_REQUEST,
        ApiError::Invalid { .. } => S::UNPROCESSABLE_ENTITY,
        ApiError::Unauthorized | ApiError::Unauthenticated | ApiError::InvalidToken => {
            S::UNAUTHORIZED
        }
        ApiError::AdminDisabled => S::FORBIDDEN,
        ApiError::NotFound { .. } => S::NOT_FOUND,
        ApiError::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
        ApiError::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
        ApiError::UnsupportedMediaType(_) => S::UNSUPPORTED_MEDIA_TYPE,
    }
}

/// A problem's `title`: a short summary of its kind.
fn title(error: &ApiError, code: &str) -> &'static str {
    match error {
        ApiError::ReserveUnanswered(inner) => title(inner, code),
        ApiError::Store(_) => title_of(code),
        ApiError::Refused(Refusal::RateLimited { .. }) => "Too many requests",
        ApiError::Refused(Refusal::SettlementBehind) => "Settlement behind",
        ApiError::Refused(_) => title_of(code),
        ApiError::BadRequest { .. } => "Bad request",
        ApiError::Invalid { .. } => "Invalid request",
        ApiError::Unauthorized => "Unauthorized",
        ApiError::Unauthenticated => "Client token required",
        ApiError::InvalidToken => "Invalid client token",
        ApiError::AdminDisabled => "Admin routes disabled",
        ApiError::NotFound { .. } => "Not found",
        ApiError::MethodNotAllowed => "Method not allowed",
        ApiError::PayloadTooLarge => "Body too large",
        ApiError::UnsupportedMediaType(_) => "Unsupported media type",
    }
}

fn title_of(code: &str) -> &'static str {
    match code {
        "sold_out" => "Sold out",
        "insufficient_stock" => "Not enough units left",
        "limit_exceeded" => "Per-user limit exceeded",
        "sale_not_started" => "Sale not started",
        "sale_ended" => "Sale ended",
        "sku_not_found" => "SKU not found",
        "invalid_quantity" => "Invalid quantity",
        "idempotency_key_reused" => "Idempotency key reused",
        "reservation_cancelled" => "Reservation cancelled",
        "reservation_not_found" => "Reservation not found",
        "reservation_confirmed" => "Reservation confirmed",
        "reservation_expired" => "Reservation expired",
        "sku_live" => "SKU is live",
        "sku_holds_open" => "SKU has holds open",
        "sku_retired" => "SKU retired",
        "invalid_sku_spec" => "Invalid SKU specification",
        "unavailable" => "Service unavailable",
        "recovering" => "SKU being repaired",
        "not_replicated" => "Confirm not yet on its replicas",
        "cart_not_found" => "Cart not found",
        "cart_pending" => "Cart between steps",
        "cart_line" => "Reservation is a cart's line",
        "cart_confirmed" => "Cart confirmed",
        "cart_cancelled" => "Cart cancelled",
        "cart_expired" => "Cart expired",
        "invalid_cart" => "Invalid cart",
        _ => "Internal error",
    }
}

/// The problem of a refused cart: the usual members, and each refused line. Every problem
/// is written as one; `lines` is left out where there are none.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartProblem {
    /// The problem, as every route has it; `code` is the first line's reason.
    #[serde(flatten)]
    pub problem: Problem,
    /// Each line refused and why, when lines were refused; lines not named were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<ProblemLine>>,
}

fn problem_body(parts: &Parts) -> Bytes {
    let problem = CartProblem {
        problem: Problem {
            kind: format!("urn:flashsale:problem:{}", parts.code),
            title: parts.title.to_owned(),
            status: parts.status.as_u16(),
            detail: parts.detail.clone(),
            code: parts.code.to_owned(),
        },
        lines: parts.lines.clone(),
    };
    Bytes::from(serde_json::to_vec(&problem).expect("a problem serializes"))
}

/// The refusals from memory, in the order of their cached bodies.
const REFUSALS: [Refusal; 8] = [
    Refusal::RateLimited {
        retry_after: Duration::ZERO,
    },
    Refusal::SoldOut,
    Refusal::NotStarted,
    Refusal::Ended,
    Refusal::Overloaded,
    Refusal::Suspended,
    Refusal::Unregistered,
    Refusal::SettlementBehind,
];

fn refusal_index(refusal: Refusal) -> usize {
    match refusal {
        Refusal::RateLimited { .. } => 0,
        Refusal::SoldOut => 1,
        Refusal::NotStarted => 2,
        Refusal::Ended => 3,
        Refusal::Overloaded => 4,
        Refusal::Suspended => 5,
        Refusal::Unregistered => 6,
        Refusal::SettlementBehind => 7,
    }
}

/// The bodies of refusals from memory, built once: they are constant (a wait goes in a
/// header), and once a SKU is sold out, or the engine overloaded, they are most of what the
/// service answers. The first row as any route answers them, the second as a reserve does.
static REFUSAL_BODIES: LazyLock<[[Bytes; 8]; 2]> = LazyLock::new(|| {
    [
        REFUSALS.map(|refusal| problem_body(&ApiError::Refused(refusal).parts())),
        REFUSALS.map(|refusal| problem_body(&ApiError::Refused(refusal).on_reserve().parts())),
    ]
});

impl ApiError {
    /// The cached body of a refusal from memory, if this is one.
    fn cached_body(&self) -> Option<Bytes> {
        let (row, refusal) = match self {
            Self::Refused(refusal) => (0, refusal),
            Self::ReserveUnanswered(inner) => match &**inner {
                Self::Refused(refusal) => (1, refusal),
                _ => return None,
            },
            _ => return None,
        };
        Some(REFUSAL_BODIES[row][refusal_index(*refusal)].clone())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let parts = self.parts();
        if parts.status.is_server_error() {
            tracing::warn!(error = %self, code = parts.code, "request failed");
        }
        let body = self.cached_body().unwrap_or_else(|| problem_body(&parts));
        let mut response = (parts.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(wait) = parts.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if parts.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a token that was sent and refused says so.
            let challenge = if matches!(self, Self::InvalidToken) {
                r#"Bearer error="invalid_token""#
            } else {
                "Bearer"
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response.extensions_mut().insert(OutcomeCode(parts.code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::RETRY_SAME_KEY;
    use crate::ids::IdError;

    #[test]
    fn every_store_error_maps_to_its_status_and_code() {
        let cases = [
            (ApiError::Store(StoreError::SoldOut), 409, "sold_out"),
            (
                ApiError::Store(StoreError::KeyReused),
                422,
                "idempotency_key_reused",
            ),
            (
                ApiError::Store(StoreError::UnknownSku),
                404,
                "sku_not_found",
            ),
            (
                ApiError::Store(StoreError::NotFound),
                404,
                "reservation_not_found",
            ),
            (
                ApiError::Store(StoreError::Confirmed),
                409,
                "reservation_confirmed",
            ),
            (
                ApiError::Store(StoreError::Expired(crate::store::ExpiredBecause::Stock)),
                410,
                "reservation_expired",
            ),
            (
                ApiError::Store(StoreError::Protocol("x".into())),
                500,
                "internal",
            ),
            (ApiError::Store(StoreError::Contended), 503, "unavailable"),
            (ApiError::Refused(Refusal::Overloaded), 503, "unavailable"),
            (ApiError::Refused(Refusal::SoldOut), 409, "sold_out"),
            (
                ApiError::from(IdError::MalformedReservationId),
                404,
                "reservation_not_found",
            ),
            (
                ApiError::from(IdError::Empty { what: "user_id" }),
                422,
                "invalid_user_id",
            ),
        ];
        for (error, status, code) in cases {
            let parts = error.parts();
            assert_eq!(
                (parts.status.as_u16(), parts.code),
                (status, code),
                "{error:?}"
            );
        }
        let parts = ApiError::Refused(Refusal::RateLimited {
            retry_after: Duration::from_millis(1_200),
        })
        .parts();
        assert_eq!(
            (parts.status.as_u16(), parts.retry_after),
            (429, Some(Duration::from_millis(1_200)))
        );
    }

    #[test]
    fn a_reserve_left_unanswered_says_to_retry_with_the_same_key() {
        for error in [
            ApiError::Store(StoreError::Contended),
            ApiError::Refused(Refusal::Overloaded),
            ApiError::Refused(Refusal::Suspended),
        ] {
            let plain = error.parts();
            assert!(!plain.detail.contains("Idempotency-Key"), "{error:?}");
            let parts = error.on_reserve().parts();
            assert_eq!((parts.status.as_u16(), parts.code), (503, "unavailable"));
            assert!(parts.retry_after.is_some());
            assert!(parts.detail.ends_with(RETRY_SAME_KEY), "{}", parts.detail);
        }
        // The cached body of a refusal from memory says it too.
        let body = ApiError::Refused(Refusal::Overloaded)
            .on_reserve()
            .cached_body()
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("same Idempotency-Key"));
        // Answers that are answers are left alone.
        assert!(matches!(
            ApiError::Store(StoreError::SoldOut).on_reserve(),
            ApiError::Store(StoreError::SoldOut)
        ));
    }
}
