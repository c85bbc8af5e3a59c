//! `flashsale.v1.Reservations`: reservations and carts, each call read into the
//! application layer's input and its answer written back.

use std::time::Instant;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::{answer, authorization, proto, IDEMPOTENT_REPLAYED};
use crate::api::carts::{self, CartLineInput, OpenCartInput};
use crate::api::reservations::{self, line_quantity, CancelByKeyInput, ReserveInput};
use crate::api::{AppState, IDEMPOTENCY_KEY};
use crate::ids::CallerName;

/// The service, over the engine's shared state.
pub struct ReservationsService {
    pub(super) state: AppState,
}

const ROUTE_RESERVE: &str = "/flashsale.v1.Reservations/Reserve";
const ROUTE_GET: &str = "/flashsale.v1.Reservations/GetReservation";
const ROUTE_CONFIRM: &str = "/flashsale.v1.Reservations/Confirm";
const ROUTE_CANCEL: &str = "/flashsale.v1.Reservations/Cancel";
const ROUTE_CANCEL_BY_KEY: &str = "/flashsale.v1.Reservations/CancelByKey";
const ROUTE_OPEN_CART: &str = "/flashsale.v1.Reservations/OpenCart";
const ROUTE_GET_CART: &str = "/flashsale.v1.Reservations/GetCart";
const ROUTE_CONFIRM_CART: &str = "/flashsale.v1.Reservations/ConfirmCart";
const ROUTE_CANCEL_CART: &str = "/flashsale.v1.Reservations/CancelCart";

/// A units field as a line takes it: 1 when absent.
fn quantity(given: Option<u32>) -> Option<u32> {
    line_quantity(u64::from(given.unwrap_or(1)))
}

/// `response` with `idempotent-replayed: true` if an earlier call with the same key made
/// what it holds.
fn replayed<T>(
    response: Result<Response<T>, Status>,
    replayed: bool,
) -> Result<Response<T>, Status> {
    response.map(|mut response| {
        if replayed {
            response
                .metadata_mut()
                .insert(IDEMPOTENT_REPLAYED, MetadataValue::from_static("true"));
        }
        response
    })
}

impl ReservationsService {
    /// The caller of a request, by its client token (see [`AppState::client`]).
    fn caller<T>(&self, request: &Request<T>) -> Result<Option<CallerName>, crate::api::ApiError> {
        self.state.client(authorization(request))
    }

    /// Answers a call on one reservation or cart: `op` with the caller and the id.
    async fn on_id<T, F>(
        &self,
        route: &'static str,
        kind: &str,
        id: String,
        caller: Result<Option<CallerName>, crate::api::ApiError>,
        op: impl FnOnce(AppState, Option<CallerName>, String) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: std::future::Future<Output = Result<T, crate::api::ApiError>>,
    {
        let started = Instant::now();
        let resource = format!("{kind}/{id}");
        let (label, result) = match caller {
            Ok(caller) => (caller.clone(), op(self.state.clone(), caller, id).await),
            Err(refused) => (None, Err(refused)),
        };
        answer(
            &self.state,
            route,
            label.as_ref(),
            started,
            &resource,
            result,
        )
    }
}

#[tonic::async_trait]
impl proto::reservations_server::Reservations for ReservationsService {
    async fn reserve(
        &self,
        request: Request<proto::ReserveRequest>,
    ) -> Result<Response<proto::ReserveResponse>, Status> {
        let started = Instant::now();
        let caller = self.caller(&request);
        let key = request
            .metadata()
            .get(IDEMPOTENCY_KEY)
            .map(|v| v.as_bytes().to_vec());
        let body = request.into_inner();
        let resource = format!("skus/{}", body.sku);
        let (label, result) = match caller {
            Ok(caller) => {
                let input = ReserveInput {
                    key: key.as_deref(),
                    sku: body.sku,
                    user_id: body.user_id,
                    quantity: quantity(body.quantity),
                };
                let label = caller.clone();
                (
                    label,
                    reservations::reserve(&self.state, caller, input).await,
                )
            }
            Err(refused) => (None, Err(refused)),
        };
        let was_replayed = result.as_ref().is_ok_and(|r| r.replayed);
        let result = result.map(|reserved| proto::ReserveResponse {
            reservation: Some(reserved.reservation.into()),
            replayed: reserved.replayed,
        });
        replayed(
            answer(
                &self.state,
                ROUTE_RESERVE,
                label.as_ref(),
                started,
                &resource,
                result,
            ),
            was_replayed,
        )
    }

    async fn get_reservation(
        &self,
        request: Request<proto::GetReservationRequest>,
    ) -> Result<Response<proto::Reservation>, Status> {
        let caller = self.caller(&request);
        let id = request.into_inner().reservation_id;
        self.on_id(
            ROUTE_GET,
            "reservations",
            id,
            caller,
            |state, caller, id| async move {
                reservations::get_reservation(&state, caller.as_ref(), &id)
                    .await
                    .map(Into::into)
            },
        )
        .await
    }

    async fn confirm(
        &self,
        request: Request<proto::ConfirmRequest>,
    ) -> Result<Response<proto::Reservation>, Status> {
        let caller = self.caller(&request);
        let id = request.into_inner().reservation_id;
        self.on_id(
            ROUTE_CONFIRM,
            "reservations",
            id,
            caller,
            |state, caller, id| async move {
                reservations::confirm(&state, caller.as_ref(), &id)
                    .await
                    .map(Into::into)
            },
        )
        .await
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::Reservation>, Status> {
        let caller = self.caller(&request);
        let id = request.into_inner().reservation_id;
        self.on_id(
            ROUTE_CANCEL,
            "reservations",
            id,
            caller,
            |state, caller, id| async move {
                reservations::cancel(&state, caller.as_ref(), &id)
                    .await
                    .map(Into::into)
            },
        )
        .await
    }

    async fn cancel_by_key(
        &self,
        request: Request<proto::CancelByKeyRequest>,
    ) -> Result<Response<proto::CancelByKeyResponse>, Status> {
        let started = Instant::now();
        let caller = self.caller(&request);
        let body = request.into_inner();
        let resource = format!("skus/{}", body.sku);
        let (label, result) = match caller {
            Ok(caller) => {
                let input = CancelByKeyInput {
                    sku: body.sku,
                    user_id: body.user_id,
                    idempotency_key: body.idempotency_key,
                };
                let found = reservations::cancel_by_key(&self.state, caller.as_ref(), input).await;
                (caller, found)
            }
            Err(refused) => (None, Err(refused)),
        };
        let result = result.map(|view| proto::CancelByKeyResponse {
            reservation: view.reservation.map(Into::into),
        });
        answer(
            &self.state,
            ROUTE_CANCEL_BY_KEY,
            label.as_ref(),
            started,
            &resource,
            result,
        )
    }

    async fn open_cart(
        &self,
        request: Request<proto::OpenCartRequest>,
    ) -> Result<Response<proto::OpenCartResponse>, Status> {
        let started = Instant::now();
        let caller = self.caller(&request);
        let key = request
            .metadata()
            .get(IDEMPOTENCY_KEY)
            .map(|v| v.as_bytes().to_vec());
        let body = request.into_inner();
        let (label, result) = match caller {
            Ok(caller) => {
                let input = OpenCartInput {
                    key: key.as_deref(),
                    user_id: body.user_id,
                    lines: body
                        .lines
                        .into_iter()
                        .map(|line| CartLineInput {
                            sku: line.sku,
                            quantity: quantity(line.quantity),
                        })
                        .collect(),
                };
                let label = caller.clone();
                (label, carts::open_cart(&self.state, caller, input).await)
            }
            Err(refused) => (None, Err(refused)),
        };
        let was_replayed = result.as_ref().is_ok_and(|opened| opened.replayed);
        let result = result.map(|opened| proto::OpenCartResponse {
            cart: Some(opened.cart.into()),
            replayed: opened.replayed,
        });
        replayed(
            answer(
                &self.state,
                ROUTE_OPEN_CART,
                label.as_ref(),
                started,
                "carts",
                result,
            ),
            was_replayed,
        )
    }

    async fn get_cart(
        &self,
        request: Request<proto::GetCartRequest>,
    ) -> Result<Response<proto::Cart>, Status> {
        let caller = self.caller(&request);
        let id = request.into_inner().cart_id;
        self.on_id(
            ROUTE_GET_CART,
            "carts",
            id,
            caller,
            |state, caller, id| async move {
                carts::get_cart(&state, caller.as_ref(), &id)
                    .await
                    .map(Into::into)
            },
        )
        .await
    }

    async fn confirm_cart(
        &self,
        request: Request<proto::ConfirmCartRequest>,
    ) -> Result<Response<proto::Cart>, Status> {
        let caller = self.caller(&request);
        let id = request.into_inner().cart_id;
        self.on_id(
            ROUTE_CONFIRM_CART,
            "carts",
            id,
            caller,
            |state, caller, id| async move {
                carts::confirm_cart(&state, caller.as_ref(), &id)
                    .await
                    .map(Into::into)
            },
        )
        .await
    }

    async fn cancel_cart(
        &self,
        request: Request<proto::CancelCartRequest>,
    ) -> Result<Response<proto::Cart>, Status> {
        let caller = self.caller(&request);
        let id = request.into_inner().cart_id;
        self.on_id(
            ROUTE_CANCEL_CART,
            "carts",
            id,
            caller,
            |state, caller, id| async move {
                carts::cancel_cart(&state, caller.as_ref(), &id)
                    .await
                    .map(Into::into)
            },
        )
        .await
    }
}
