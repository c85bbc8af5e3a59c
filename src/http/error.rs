//! The HTTP layer's one error type, rendered as RFC 9457 `application/problem+json` with a
//! stable machine-readable `code`. Store errors and admission refusals are mapped here, and
//! only here.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Bytes;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Refusal;
use crate::ids::IdError;
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

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the store answered (refusals and failures; see [`StoreError`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Refused from memory by admission: 429 with `Retry-After`, 409, or 503.
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// 400: the request cannot be read.
    #[error("{detail}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// 422: the request was read but a value is not acceptable.
    #[error("{detail}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// 401: no admin token, or the wrong one.
    #[error("unauthorized")]
    Unauthorized,
    /// 401: a reservation route called without a client token, while client tokens are
    /// configured.
    #[error("unauthenticated")]
    Unauthenticated,
    /// 401: a client token that is not one of those configured.
    #[error("invalid token")]
    InvalidToken,
    /// 403: admin routes are off because no admin token is configured.
    #[error("admin routes are disabled")]
    AdminDisabled,
    /// 404: no such route or resource.
    #[error("{detail}")]
    NotFound {
        /// Stable code.
        code: &'static str,
        /// What was not found.
        detail: String,
    },
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is over the limit.
    #[error("body too large")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A reserve that got no answer (a 503: Redis failed or stalled, or the engine was
    /// overloaded or checking a restarted Redis). The hold may have been made all the same,
    /// so the problem tells the client to retry with the same `Idempotency-Key`, which
    /// returns that hold rather than making another.
    #[error("{0}")]
    ReserveUnanswered(Box<ApiError>),
}

impl From<IdError> for ApiError {
    fn from(error: IdError) -> Self {
        let what = match &error {
            IdError::Empty { what }
            | IdError::TooLong { what, .. }
            | IdError::BadCharacter { what } => *what,
            // An id that cannot be well-formed names no reservation.
            IdError::MalformedReservationId => {
                return Self::NotFound {
                    code: "reservation_not_found",
                    detail: "no such reservation".into(),
                }
            }
            IdError::MalformedCartId => {
                return Self::NotFound {
                    code: "cart_not_found",
                    detail: "no such cart".into(),
                }
            }
        };
        let code = match what {
            "sku" => "invalid_sku",
            "user_id" => "invalid_user_id",
            "idempotency_key" => "invalid_idempotency_key",
            _ => "invalid_field",
        };
        Self::Invalid {
            code,
            detail: error.to_string(),
        }
    }
}

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

/// What a 503 on a reserve adds to its detail.
const RETRY_SAME_KEY: &str = "; retry with the same Idempotency-Key: if the hold was made, \
                              the retry returns it instead of making another";

struct Parts {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<Duration>,
    /// A refused cart's lines.
    lines: Option<Vec<ProblemLine>>,
}

/// Seconds a client should wait after a failure of Redis or an overload.
const RETRY_SOON: Duration = Duration::from_secs(1);

/// Seconds a client should wait while the ledger catches up: a backlog large enough to
/// refuse reserves takes the reconciler seconds to settle, not milliseconds.
const RETRY_SETTLEMENT: Duration = Duration::from_secs(5);

impl ApiError {
    /// The error as a reserve answers it: a 503 becomes [`ApiError::ReserveUnanswered`].
    pub fn on_reserve(self) -> Self {
        let unanswered = matches!(
            self,
            Self::Store(StoreError::Redis(_) | StoreError::Contended)
                | Self::Refused(Refusal::Overloaded | Refusal::Suspended | Refusal::Unregistered)
        );
        if unanswered {
            Self::ReserveUnanswered(Box::new(self))
        } else {
            self
        }
    }

    /// The code of a refusal by admission or the store (cheap: no problem is built).
    pub fn refusal_code(&self) -> Option<&'static str> {
        match self {
            Self::Refused(refusal) => Some(refusal.code()),
            Self::Store(error) => Some(error.code()),
            Self::ReserveUnanswered(inner) => inner.refusal_code(),
            _ => None,
        }
    }

    fn parts(&self) -> Parts {
        use StatusCode as S;
        if let Self::ReserveUnanswered(inner) = self {
            let mut parts = inner.parts();
            parts.detail.push_str(RETRY_SAME_KEY);
            return parts;
        }
        let (status, code, title, retry_after) = match self {
            Self::Store(error) => {
                let status = match error {
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
                    StoreError::InvalidQuantity(_)
                    | StoreError::KeyReused
                    | StoreError::InvalidSpec(_) => S::UNPROCESSABLE_ENTITY,
                    StoreError::Expired(_) => S::GONE,
                    StoreError::Contended
                    | StoreError::Recovering
                    | StoreError::NotReplicated { .. }
                    | StoreError::Redis(_) => S::SERVICE_UNAVAILABLE,
                    StoreError::Protocol(_) => S::INTERNAL_SERVER_ERROR,
                };
                let retry = (status == S::SERVICE_UNAVAILABLE).then_some(RETRY_SOON);
                let code = if status == S::INTERNAL_SERVER_ERROR {
                    "internal"
                } else {
                    error.code()
                };
                (status, code, title_of(code), retry)
            }
            Self::Refused(refusal) => match refusal {
                Refusal::RateLimited { retry_after } => (
                    S::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests",
                    Some(*retry_after),
                ),
                Refusal::SoldOut => (S::CONFLICT, "sold_out", "Sold out", None),
                Refusal::NotStarted => (S::CONFLICT, "sale_not_started", "Sale not started", None),
                Refusal::Ended => (S::CONFLICT, "sale_ended", "Sale ended", None),
                Refusal::Overloaded | Refusal::Suspended | Refusal::Unregistered => (
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    Some(RETRY_SOON),
                ),
                Refusal::SettlementBehind => (
                    S::SERVICE_UNAVAILABLE,
                    "settlement_behind",
                    "Settlement behind",
                    Some(RETRY_SETTLEMENT),
                ),
            },
            Self::BadRequest { code, .. } => (S::BAD_REQUEST, *code, "Bad request", None),
            Self::Invalid { code, .. } => (S::UNPROCESSABLE_ENTITY, *code, "Invalid request", None),
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized", "Unauthorized", None),
            Self::Unauthenticated => (
                S::UNAUTHORIZED,
                "unauthenticated",
                "Client token required",
                None,
            ),
            Self::InvalidToken => (
                S::UNAUTHORIZED,
                "invalid_token",
                "Invalid client token",
                None,
            ),
            Self::AdminDisabled => (
                S::FORBIDDEN,
                "admin_disabled",
                "Admin routes disabled",
                None,
            ),
            Self::NotFound { code, .. } => (S::NOT_FOUND, *code, "Not found", None),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                None,
            ),
            Self::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Body too large",
                None,
            ),
            Self::UnsupportedMediaType(_) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                None,
            ),
            Self::ReserveUnanswered(_) => unreachable!("answered above"),
        };
        let detail = match self {
            // Internal causes are logged, not shown.
            Self::Store(StoreError::Redis(_) | StoreError::Protocol(_)) => {
                "the service cannot reach its data store right now".to_owned()
            }
            Self::Refused(Refusal::RateLimited { .. }) => {
                "slow down and retry after the given time".into()
            }
            Self::Refused(Refusal::Overloaded) => {
                "too many requests in flight; retry shortly".into()
            }
            Self::Refused(Refusal::Suspended) => {
                "redis restarted; the engine is checking it against the ledger; retry shortly"
                    .into()
            }
            Self::Refused(Refusal::Unregistered) => {
                "the engine cannot renew its share of the rate with Redis; retry shortly".into()
            }
            Self::Refused(Refusal::SettlementBehind) => {
                "more events wait to be settled into the ledger than --max-unsettled allows; \
                 no hold was made; retry after the given time (confirms and cancels go on)"
                    .into()
            }
            Self::Refused(Refusal::SoldOut) => StoreError::SoldOut.to_string(),
            Self::Refused(Refusal::NotStarted) => StoreError::NotStarted.to_string(),
            Self::Refused(Refusal::Ended) => StoreError::Ended.to_string(),
            Self::AdminDisabled => {
                "no admin token is configured, so admin routes refuse everyone".into()
            }
            Self::Unauthorized => {
                "a valid 'Authorization: Bearer <admin token>' header is required".into()
            }
            Self::Unauthenticated => "this engine serves only callers it knows: send \
                 'Authorization: Bearer <client token>' with the token your caller was given"
                .into(),
            Self::InvalidToken => "the bearer token is not a client token of this engine: \
                 check the token your caller was given (the admin token is not one)"
                .into(),
            other => other.to_string(),
        };
        let lines = match self {
            Self::Store(StoreError::CartRefused(lines)) => Some(
                lines
                    .iter()
                    .map(|line| ProblemLine {
                        sku: line.sku.to_string(),
                        code: line.code.to_owned(),
                        detail: line.detail.clone(),
                    })
                    .collect(),
            ),
            _ => None,
        };
        Parts {
            status,
            code,
            title,
            detail,
            retry_after,
            lines,
        }
    }
}

impl Refusal {
    /// The problem code of the refusal.
    pub fn code(self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::SoldOut => "sold_out",
            Self::NotStarted => "sale_not_started",
            Self::Ended => "sale_ended",
            Self::Overloaded | Self::Suspended | Self::Unregistered => "unavailable",
            Self::SettlementBehind => "settlement_behind",
        }
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
