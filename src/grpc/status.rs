//! The API's errors as this face answers them: a `google.rpc.Status` whose code is the
//! most specific gRPC code for the problem (Google's API design guide), and whose details
//! say the rest: an `ErrorInfo` always (the problem code in upper snake case, domain
//! `flashsale`), `RetryInfo` where a retry of the same call may succeed, `BadRequest`
//! field violations on invalid input, `PreconditionFailure` where the state of a SKU,
//! reservation or cart forbids the call. Mapped here and only here; the README's table is
//! checked against [`mapping`].

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::ApiError;

/// `ErrorInfo.domain` of every error.
pub const DOMAIN: &str = "flashsale";

/// How one problem code travels over gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The status code.
    pub code: Code,
    /// What the details add besides `ErrorInfo` (and `RetryInfo`, on retryable codes).
    pub detail: Detail,
}

/// The detail that says what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// `ErrorInfo` alone.
    Info,
    /// A `BadRequest` field violation of the named field (`None`: the detail's first word
    /// names it, as the spec's and the times' messages do).
    Field(Option<&'static str>),
    /// A `PreconditionFailure` violation of the named type, on the call's resource.
    Precondition(&'static str),
}

impl Mapping {
    /// Whether a client may send the same call again (after the `RetryInfo` delay): only
    /// `RESOURCE_EXHAUSTED`, `UNAVAILABLE` and `ABORTED` say so; `FAILED_PRECONDITION` and
    /// the rest are final until something else changes.
    pub fn retryable(self) -> bool {
        matches!(
            self.code,
            Code::ResourceExhausted | Code::Unavailable | Code::Aborted
        )
    }
}

/// How `code` travels over gRPC; `None` for a string that is no problem code.
pub fn mapping(code: &str) -> Option<Mapping> {
    use Detail::{Field, Info, Precondition};
    let (code, detail) = match code {
        "missing_idempotency_key" | "invalid_idempotency_key" => {
            (Code::InvalidArgument, Field(Some("idempotency-key")))
        }
        "invalid_sku" => (Code::InvalidArgument, Field(Some("sku"))),
        "invalid_user_id" => (Code::InvalidArgument, Field(Some("user_id"))),
        "invalid_quantity" => (Code::InvalidArgument, Field(Some("quantity"))),
        "invalid_cart" => (Code::InvalidArgument, Field(Some("lines"))),
        "invalid_field" | "invalid_time" | "invalid_sku_spec" => {
            (Code::InvalidArgument, Field(None))
        }
        // HTTP only: a body or path that cannot be read.
        "malformed_json"
        | "unreadable_body"
        | "invalid_path"
        | "invalid_query"
        | "invalid_body"
        | "unsupported_media_type"
        | "body_too_large" => (Code::InvalidArgument, Info),
        "method_not_allowed" => (Code::Unimplemented, Info),
        "unauthorized" | "unauthenticated" | "invalid_token" => (Code::Unauthenticated, Info),
        "admin_disabled" | "not_your_reservation" => (Code::PermissionDenied, Info),
        "not_found" | "sku_not_found" | "reservation_not_found" | "cart_not_found" => {
            (Code::NotFound, Info)
        }
        "idempotency_key_reused" => (Code::AlreadyExists, Info),
        "sold_out" | "insufficient_stock" => (Code::FailedPrecondition, Precondition("STOCK")),
        "limit_exceeded" => (Code::FailedPrecondition, Precondition("PER_USER_LIMIT")),
        "too_many_keys" => (Code::FailedPrecondition, Precondition("KEYS_PER_USER")),
        "sale_not_started" | "sale_ended" => {
            (Code::FailedPrecondition, Precondition("SALE_WINDOW"))
        }
        "reservation_cancelled" | "reservation_confirmed" | "reservation_expired" => {
            (Code::FailedPrecondition, Precondition("RESERVATION_STATE"))
        }
        "cart_line" => (Code::FailedPrecondition, Precondition("CART_LINE")),
        "sku_live" | "sku_holds_open" | "sku_retired" => {
            (Code::FailedPrecondition, Precondition("SKU_STATE"))
        }
        "cart_confirmed" | "cart_cancelled" | "cart_expired" => {
            (Code::FailedPrecondition, Precondition("CART_STATE"))
        }
        "cart_pending" => (Code::Aborted, Info),
        "rate_limited" => (Code::ResourceExhausted, Info),
        "unavailable" | "settlement_behind" | "recovering" | "not_replicated" => {
            (Code::Unavailable, Info)
        }
        "internal" => (Code::Internal, Info),
        _ => return None,
    };
    Some(Mapping { code, detail })
}

/// `ErrorInfo.reason` of a problem code: the code in upper snake case.
pub fn reason(code: &str) -> String {
    code.to_ascii_uppercase()
}

/// The status of `error`, raised by a call on `resource` (`skus/phone`,
/// `reservations/<id>`, `carts/<id>`), which a `PreconditionFailure` names as its subject.
pub fn status(error: &ApiError, resource: &str) -> Status {
    let code = error.code();
    let mapped = mapping(code).unwrap_or(Mapping {
        code: Code::Internal,
        detail: Detail::Info,
    });
    let message = error.detail();
    if mapped.code == Code::Internal || mapped.code == Code::Unavailable {
        tracing::warn!(%error, code, "grpc call failed");
    }
    let mut details = ErrorDetails::new();
    details.set_error_info(reason(code), DOMAIN, HashMap::new());
    if let Some(wait) = error.retry_after().filter(|_| mapped.retryable()) {
        details.set_retry_info(Some(wait));
    }
    match (mapped.detail, error.refused_lines()) {
        // A refused cart: every refused line, under its own SKU and reason.
        (_, Some(lines)) => {
            for line in lines {
                let subject = format!("skus/{}", line.sku);
                match mapping(line.code).map(|m| m.detail) {
                    Some(Detail::Precondition(kind)) => {
                        details.add_precondition_failure_violation(kind, subject, &line.detail);
                    }
                    _ => {
                        details.add_bad_request_violation(
                            format!("lines[sku={}].quantity", line.sku),
                            &line.detail,
                        );
                    }
                }
            }
        }
        (Detail::Field(field), None) => {
            let named = message
                .split_whitespace()
                .next()
                .filter(|word| word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let field = field.or(named).unwrap_or("request");
            details.add_bad_request_violation(field, &message);
        }
        (Detail::Precondition(kind), None) => {
            details.add_precondition_failure_violation(kind, resource, &message);
        }
        (Detail::Info, None) => {}
    }
    Status::with_error_details(mapped.code, message, details)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admission::Refusal;
    use crate::api::error::CODES;
    use crate::store::{LineRefusal, StoreError};

    #[test]
    fn every_code_has_a_mapping_and_only_overload_stalls_and_pending_are_retryable() {
        for code in CODES {
            let mapping = mapping(code).unwrap_or_else(|| panic!("{code} has no gRPC mapping"));
            let expect_retry = matches!(
                *code,
                "rate_limited"
                    | "unavailable"
                    | "settlement_behind"
                    | "recovering"
                    | "not_replicated"
                    | "cart_pending"
            );
            assert_eq!(mapping.retryable(), expect_retry, "{code}");
        }
        assert_eq!(mapping("no_such_code"), None);
        assert_eq!(mapping("sold_out").unwrap().code, Code::FailedPrecondition);
    }

    #[test]
    fn a_status_carries_its_reason_retry_and_violations() {
        let rate = status(
            &ApiError::Refused(Refusal::RateLimited {
                retry_after: Duration::from_millis(1_500),
            }),
            "skus/phone",
        );
        assert_eq!(rate.code(), Code::ResourceExhausted);
        let details = rate.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("RATE_LIMITED", DOMAIN)
        );
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1_500))
        );

        let sold_out = status(&ApiError::Store(StoreError::SoldOut), "skus/phone");
        assert_eq!(sold_out.code(), Code::FailedPrecondition);
        let details = sold_out.get_error_details();
        assert!(
            details.retry_info().is_none(),
            "a final answer has no retry"
        );
        let violation = &details.precondition_failure().unwrap().violations[0];
        assert_eq!(
            (violation.r#type.as_str(), violation.subject.as_str()),
            ("STOCK", "skus/phone")
        );

        let invalid = status(
            &ApiError::from(crate::ids::IdError::Empty { what: "user_id" }),
            "skus/phone",
        );
        assert_eq!(invalid.code(), Code::InvalidArgument);
        let details = invalid.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "user_id"
        );

        // A stalled reserve: UNAVAILABLE, retry soon, with the same key.
        let stalled = status(
            &ApiError::Store(StoreError::Contended).on_reserve(),
            "skus/phone",
        );
        assert_eq!(stalled.code(), Code::Unavailable);
        assert!(stalled.message().contains("same Idempotency-Key"));
        assert!(stalled.get_error_details().retry_info().is_some());

        // A refused cart names each line.
        let cart = status(
            &ApiError::Store(StoreError::CartRefused(vec![LineRefusal {
                sku: crate::ids::Sku::new("case").unwrap(),
                code: "sold_out",
                detail: "sold out".into(),
            }])),
            "carts",
        );
        let details = cart.get_error_details();
        let violation = &details.precondition_failure().unwrap().violations[0];
        assert_eq!(violation.subject, "skus/case");
    }

    /// `FailedPrecondition` as the gRPC specification spells it: `FAILED_PRECONDITION`.
    fn spelled(code: Code) -> String {
        let mut out = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn the_readme_table_says_what_the_mapping_does() {
        let readme = include_str!("../../README.md");
        let rows: Vec<Vec<&str>> = readme
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| line.split('|').map(str::trim).collect())
            .collect();
        for code in CODES {
            let quoted = format!("`{code}`");
            let row = rows
                .iter()
                .find(|row| row[1].split(", ").any(|name| name == quoted))
                .unwrap_or_else(|| panic!("the README's gRPC table has no row for {code}"));
            if row[3] == "HTTP only" {
                continue;
            }
            let mapped = mapping(code).unwrap();
            assert_eq!(row[3], format!("`{}`", spelled(mapped.code)), "{code}");
            let retry = if mapped.retryable() { "yes" } else { "no" };
            assert_eq!(row[4], retry, "{code}");
        }
    }
}
