//! The load's gRPC client: the buyers' calls as `flashsale.v1.Reservations` RPCs, each
//! answer read into the HTTP client's [`Answer`] with the labels the HTTP face's answer
//! to the same call gets (`held`, `sold_out`, `cart_confirmed`, ...), so that the book of
//! what buyers were told, the checks, the report and the comparison read both protocols
//! alike.
//!
//! tonic multiplexes every call of a [`Channel`] on one HTTP/2 connection, so a
//! [`GrpcConnection`] is one channel, opened per worker as an HTTP/1.1 [`Connection`] is:
//! `connections` is the same number of TCP connections to the engine on both protocols,
//! each with `TCP_NODELAY` (small messages answered at once; Nagle's delay would only add
//! latency).
//!
//! [`Connection`]: crate::client::Connection

use std::net::SocketAddr;

use flashsale::grpc::proto::{self, reservations_client::ReservationsClient};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::client::{Answer, Call};

/// The metadata that makes Reserve and OpenCart idempotent, as the HTTP header does.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// One HTTP/2 connection to an engine's gRPC face.
pub struct GrpcConnection {
    reservations: ReservationsClient<Channel>,
}

impl GrpcConnection {
    /// Connects to the gRPC face at `addr` (the engine's `--grpc-listen`) now, so that a
    /// worker that cannot reach it knows before its first call, as over HTTP/1.1.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Self {
            reservations: ReservationsClient::new(channel),
        })
    }

    /// Sends `call` as its RPC and reads the answer: a success or the engine's refusal is
    /// an [`Answer`]; a failure of the connection or the transport is an error, as a broken
    /// HTTP/1.1 connection is. `GET` calls have no RPC here (the harness reads figures
    /// over HTTP whatever the buyers' protocol).
    pub async fn send(&mut self, call: &Call) -> anyhow::Result<Answer> {
        let client = &mut self.reservations;
        let answered = match call {
            Call::Reserve {
                sku,
                user,
                quantity,
                key,
            } => {
                let request = keyed(
                    proto::ReserveRequest {
                        sku: sku.clone(),
                        user_id: user.clone(),
                        quantity: Some(*quantity),
                    },
                    key,
                )?;
                client.reserve(request).await.map(|response| {
                    let response = response.into_inner();
                    reservation(CREATED, response.reservation, response.replayed)
                })
            }
            Call::Confirm { rid } => client
                .confirm(proto::ConfirmRequest {
                    reservation_id: rid.clone(),
                })
                .await
                .map(|response| reservation(OK, Some(response.into_inner()), false)),
            Call::Cancel { rid } => client
                .cancel(proto::CancelRequest {
                    reservation_id: rid.clone(),
                })
                .await
                .map(|response| reservation(OK, Some(response.into_inner()), false)),
            Call::Cart { user, lines, key } => {
                let request = keyed(
                    proto::OpenCartRequest {
                        user_id: user.clone(),
                        lines: lines
                            .iter()
                            .map(|(sku, quantity)| proto::CartLine {
                                sku: sku.clone(),
                                quantity: Some(*quantity),
                            })
                            .collect(),
                    },
                    key,
                )?;
                client.open_cart(request).await.map(|response| {
                    let response = response.into_inner();
                    cart(CREATED, response.cart, response.replayed)
                })
            }
            Call::ConfirmCart { cart: id } => client
                .confirm_cart(proto::ConfirmCartRequest {
                    cart_id: id.clone(),
                })
                .await
                .map(|response| cart(OK, Some(response.into_inner()), false)),
            Call::CancelCart { cart: id } => client
                .cancel_cart(proto::CancelCartRequest {
                    cart_id: id.clone(),
                })
                .await
                .map(|response| cart(OK, Some(response.into_inner()), false)),
            Call::Get { path } => anyhow::bail!("GET {path} has no gRPC call; read it over HTTP"),
        };
        answered.or_else(|status| refusal(&status))
    }
}

/// What the HTTP face answers a reserve or a cart with (made or replayed).
const CREATED: u16 = 201;

/// What it answers the other calls with.
const OK: u16 = 200;

/// `message` with its `idempotency-key` metadata.
fn keyed<T>(message: T, key: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(IDEMPOTENCY_KEY, MetadataValue::try_from(key)?);
    Ok(request)
}

/// A reservation answered with the HTTP face's `status`.
fn reservation(status: u16, reservation: Option<proto::Reservation>, replayed: bool) -> Answer {
    Answer {
        status,
        code: None,
        reservation_id: reservation.map(|r| r.reservation_id),
        replayed,
        cart_id: None,
        lines: Vec::new(),
    }
}

/// A cart answered with the HTTP face's `status`: its id and its lines' SKUs and
/// reservations.
fn cart(status: u16, cart: Option<proto::Cart>, replayed: bool) -> Answer {
    let (cart_id, lines) = match cart {
        Some(cart) => (
            Some(cart.cart_id),
            cart.lines
                .into_iter()
                .filter(|line| !line.reservation_id.is_empty())
                .map(|line| (line.sku, line.reservation_id))
                .collect(),
        ),
        None => (None, Vec::new()),
    };
    Answer {
        status,
        code: None,
        reservation_id: None,
        replayed,
        cart_id,
        lines,
    }
}

/// An error status as the harness reads it.
///
/// - The engine's refusal carries an `ErrorInfo` of domain `flashsale` whose reason is the
///   HTTP problem's code in upper snake case: it is an answer with that code, lowercased,
///   so that a sold-out reserve is `sold_out` over both protocols.
/// - A status the client made of a failed transport (it has a source error), or an
///   `UNKNOWN` one (a channel that is no longer ready), is an error: the worker counts it
///   as `error` and opens a fresh connection, as after a broken HTTP/1.1 connection.
/// - Any other status without the engine's `ErrorInfo` (one the server's gRPC machinery
///   sent itself, `UNIMPLEMENTED` say) is an answer labelled `grpc_<code>`, as an HTTP
///   answer without a problem body is `http_<status>`.
///
/// [`Answer::status`] is the HTTP status `google.rpc.Code` documents for the code
/// ([`http_status`]); the harness asks of a refusal's status only that it is 400 or above.
pub fn refusal(status: &Status) -> anyhow::Result<Answer> {
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .filter(|info| info.domain == flashsale::grpc::status::DOMAIN)
        .map(|info| info.reason.to_ascii_lowercase());
    let code = match reason {
        Some(code) => code,
        None if std::error::Error::source(status).is_some() || status.code() == Code::Unknown => {
            anyhow::bail!("gRPC {}: {}", code_name(status.code()), status.message())
        }
        None => format!("grpc_{}", code_name(status.code())),
    };
    Ok(Answer {
        status: http_status(status.code()),
        code: Some(code),
        reservation_id: None,
        replayed: false,
        cart_id: None,
        lines: Vec::new(),
    })
}

/// The HTTP status `google.rpc.Code` maps `code` to. (The engine's HTTP face is more
/// specific for some problems, 409 for `sold_out` where this says 400; the outcome label
/// comes from the problem code, not from this.)
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// `code` in lower snake case, as in `grpc_<code>` labels (`not_found`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    /// A status as the engine sends it for problem `code` (its reason upper snake case).
    fn engine_status(grpc: Code, problem: &str) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            flashsale::grpc::status::reason(problem),
            flashsale::grpc::status::DOMAIN,
            HashMap::new(),
        );
        Status::with_error_details(grpc, "refused", details)
    }

    fn reserve() -> Call {
        Call::Reserve {
            sku: "phone".into(),
            user: "u1".into(),
            quantity: 1,
            key: "k".into(),
        }
    }

    fn cart_call() -> Call {
        Call::Cart {
            user: "u1".into(),
            lines: vec![("phone".into(), 1), ("case".into(), 1)],
            key: "k".into(),
        }
    }

    /// The HTTP face's answer with problem `code` at `status`.
    fn http_refusal(status: u16, code: &str) -> Answer {
        Answer {
            status,
            code: Some(code.into()),
            reservation_id: None,
            replayed: false,
            cart_id: None,
            lines: Vec::new(),
        }
    }

    #[test]
    fn a_refusal_is_labelled_as_the_http_face_labels_the_same_problem() {
        // The engine's own mapping of each problem the sale meets, both ways.
        for (problem, http) in [
            ("sold_out", 409),
            ("insufficient_stock", 409),
            ("limit_exceeded", 409),
            ("rate_limited", 429),
            ("unavailable", 503),
            ("settlement_behind", 503),
            ("reservation_expired", 410),
            ("reservation_cancelled", 409),
            ("reservation_not_found", 404),
            ("cart_expired", 410),
            ("cart_pending", 409),
            ("idempotency_key_reused", 422),
            ("invalid_quantity", 422),
        ] {
            let grpc = flashsale::grpc::status::mapping(problem)
                .unwrap_or_else(|| panic!("{problem} has no gRPC mapping"))
                .code;
            let answer = refusal(&engine_status(grpc, problem)).unwrap();
            assert!(answer.status >= 400, "{problem}: {}", answer.status);
            for call in [reserve(), cart_call()] {
                assert_eq!(
                    answer.outcome(&call),
                    http_refusal(http, problem).outcome(&call),
                    "{problem}"
                );
            }
        }
        let sold_out = refusal(&engine_status(Code::FailedPrecondition, "sold_out")).unwrap();
        assert_eq!(sold_out.outcome(&reserve()), "sold_out");
        assert_eq!(sold_out.outcome(&cart_call()), "cart_sold_out");
    }

    #[test]
    fn a_status_without_the_engines_error_info_is_the_transports_or_the_frameworks() {
        // A client-side failure (no server answered): an error, the connection reopened.
        let failed = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(refusal(&failed).is_err());
        assert!(refusal(&Status::unknown("Service was not ready")).is_err());
        // The server's gRPC machinery: an answer, labelled by its code.
        let unimplemented = refusal(&Status::unimplemented("no such method")).unwrap();
        assert_eq!(unimplemented.outcome(&reserve()), "grpc_unimplemented");
        assert_eq!(unimplemented.status, 501);
        // Another domain's ErrorInfo is not the engine's problem code.
        let mut details = ErrorDetails::new();
        details.set_error_info("SOLD_OUT", "elsewhere", HashMap::new());
        let foreign = Status::with_error_details(Code::FailedPrecondition, "no", details);
        assert_eq!(
            refusal(&foreign).unwrap().outcome(&reserve()),
            "grpc_failed_precondition"
        );
    }

    #[test]
    fn successes_are_labelled_as_over_http() {
        let held = reservation(
            CREATED,
            Some(proto::Reservation {
                reservation_id: "r1".into(),
                ..Default::default()
            }),
            false,
        );
        assert_eq!(held.outcome(&reserve()), "held");
        assert_eq!(held.reservation_id.as_deref(), Some("r1"));
        let replayed = reservation(CREATED, Some(proto::Reservation::default()), true);
        assert_eq!(replayed.outcome(&reserve()), "replayed");
        let confirm = Call::Confirm { rid: "r1".into() };
        assert_eq!(
            reservation(OK, Some(proto::Reservation::default()), false).outcome(&confirm),
            "confirmed"
        );
        let opened = cart(
            CREATED,
            Some(proto::Cart {
                cart_id: "c1".into(),
                lines: vec![
                    proto::CartLineView {
                        sku: "phone".into(),
                        quantity: 1,
                        reservation_id: "r1".into(),
                    },
                    proto::CartLineView {
                        sku: "case".into(),
                        quantity: 1,
                        reservation_id: "r2".into(),
                    },
                ],
                ..Default::default()
            }),
            false,
        );
        assert_eq!(opened.outcome(&cart_call()), "cart_held");
        assert_eq!(opened.cart_id.as_deref(), Some("c1"));
        assert_eq!(
            opened.lines,
            [
                ("phone".to_owned(), "r1".to_owned()),
                ("case".to_owned(), "r2".to_owned())
            ]
        );
        let cancel = Call::CancelCart { cart: "c1".into() };
        assert_eq!(
            cart(OK, Some(proto::Cart::default()), false).outcome(&cancel),
            "cart_cancelled"
        );
    }
}
