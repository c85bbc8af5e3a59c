//! The API's one error type, whatever face serves it: a stable machine-readable `code`, a
//! `detail` for people, and how long to wait before a retry where one helps. Store errors
//! and admission refusals become it here; each face maps it once, to an RFC 9457 problem
//! (`http::error`) or to a `google.rpc.Status` (`grpc::status`).

use std::time::Duration;

use crate::admission::Refusal;
use crate::ids::IdError;
use crate::store::{LineRefusal, StoreError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the store answered (refusals and failures; see [`StoreError`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Refused from memory by admission: rate limited, a closed or sold-out sale, or an
    /// engine that cannot serve now.
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// The request cannot be read.
    #[error("{detail}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The request was read but a value is not acceptable.
    #[error("{detail}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No admin token, or the wrong one.
    #[error("unauthorized")]
    Unauthorized,
    /// A reservation or cart operation called without a client token, while client tokens
    /// are configured.
    #[error("unauthenticated")]
    Unauthenticated,
    /// A client token that is not one of those configured.
    #[error("invalid token")]
    InvalidToken,
    /// Admin operations are off because no admin token is configured.
    #[error("admin routes are disabled")]
    AdminDisabled,
    /// No such route or resource.
    #[error("{detail}")]
    NotFound {
        /// Stable code.
        code: &'static str,
        /// What was not found.
        detail: String,
    },
    /// HTTP only: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// HTTP only: the body is over the limit.
    #[error("body too large")]
    PayloadTooLarge,
    /// HTTP only: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A reserve that got no answer (Redis failed or stalled, or the engine was overloaded
    /// or checking a restarted Redis). The hold may have been made all the same, so the
    /// error tells the client to retry with the same idempotency key, which returns that
    /// hold rather than making another.
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

/// What an unanswered reserve adds to its detail.
pub const RETRY_SAME_KEY: &str = "; retry with the same Idempotency-Key: if the hold was \
                                  made, the retry returns it instead of making another";

/// How long a client should wait after a failure of Redis or an overload.
pub const RETRY_SOON: Duration = Duration::from_secs(1);

/// How long a client should wait while the ledger catches up: a backlog large enough to
/// refuse reserves takes the reconciler seconds to settle, not milliseconds.
pub const RETRY_SETTLEMENT: Duration = Duration::from_secs(5);

impl ApiError {
    /// The error as a reserve answers it: one that leaves the client not knowing whether
    /// the hold was made becomes [`ApiError::ReserveUnanswered`].
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

    /// The code of a refusal by admission or the store (cheap: nothing is built).
    pub fn refusal_code(&self) -> Option<&'static str> {
        match self {
            Self::Refused(refusal) => Some(refusal.code()),
            Self::Store(error) => Some(error.code()),
            Self::ReserveUnanswered(inner) => inner.refusal_code(),
            _ => None,
        }
    }

    /// The stable code, as the HTTP problem's `code` has it (and, in upper snake case, the
    /// gRPC `ErrorInfo.reason`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(StoreError::Protocol(_)) => "internal",
            Self::Store(error) => error.code(),
            Self::Refused(refusal) => refusal.code(),
            Self::BadRequest { code, .. }
            | Self::Invalid { code, .. }
            | Self::NotFound { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::AdminDisabled => "admin_disabled",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "body_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::ReserveUnanswered(inner) => inner.code(),
        }
    }

    /// How long to wait before the same request may succeed, where waiting helps: an
    /// overload, a Redis failing or stalled, a SKU being repaired, a cart between steps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Store(
                StoreError::Contended
                | StoreError::Recovering
                | StoreError::NotReplicated { .. }
                | StoreError::Redis(_)
                | StoreError::CartPending,
            ) => Some(RETRY_SOON),
            Self::Refused(Refusal::RateLimited { retry_after }) => Some(*retry_after),
            Self::Refused(Refusal::Overloaded | Refusal::Suspended | Refusal::Unregistered) => {
                Some(RETRY_SOON)
            }
            Self::Refused(Refusal::SettlementBehind) => Some(RETRY_SETTLEMENT),
            Self::ReserveUnanswered(inner) => inner.retry_after(),
            _ => None,
        }
    }

    /// A refused cart's lines, each with its own code.
    pub fn refused_lines(&self) -> Option<&[LineRefusal]> {
        match self {
            Self::Store(StoreError::CartRefused(lines)) => Some(lines),
            _ => None,
        }
    }

    /// What happened, for people.
    pub fn detail(&self) -> String {
        match self {
            Self::ReserveUnanswered(inner) => {
                let mut detail = inner.detail();
                detail.push_str(RETRY_SAME_KEY);
                detail
            }
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

/// Every code the API answers with, HTTP-only ones included: the faces' mappings and the
/// README's table are checked against it.
pub const CODES: &[&str] = &[
    "malformed_json",
    "unreadable_body",
    "invalid_path",
    "invalid_query",
    "missing_idempotency_key",
    "invalid_body",
    "invalid_sku",
    "invalid_user_id",
    "invalid_idempotency_key",
    "invalid_field",
    "invalid_quantity",
    "invalid_time",
    "invalid_sku_spec",
    "invalid_cart",
    "unauthorized",
    "unauthenticated",
    "invalid_token",
    "admin_disabled",
    "not_your_reservation",
    "not_found",
    "sku_not_found",
    "reservation_not_found",
    "cart_not_found",
    "idempotency_key_reused",
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "sale_not_started",
    "sale_ended",
    "reservation_cancelled",
    "reservation_confirmed",
    "reservation_expired",
    "too_many_keys",
    "sku_live",
    "sku_holds_open",
    "sku_retired",
    "cart_line",
    "cart_confirmed",
    "cart_cancelled",
    "cart_expired",
    "cart_pending",
    "rate_limited",
    "unavailable",
    "settlement_behind",
    "recovering",
    "not_replicated",
    "internal",
    "method_not_allowed",
    "body_too_large",
    "unsupported_media_type",
];
