//! Extractors whose rejections are problems: a JSON body, a path, a query, the admin token;
//! and the client-token layer of the reservation and cart routes, with the caller it finds.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::ids::CallerName;

/// A JSON body; a bad one is a 400/413/415/422 problem, never axum's plain-text rejection.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // The body every client sends: read it with serde_json alone. axum's own extractor
        // parses the media type and tracks the path of every field as it goes, which cost
        // a sold-out refusal a tenth of its CPU; only a body that fails is read again by it,
        // so that every rejection (and its message) stays axum's.
        let plain_json = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"));
        if !plain_json {
            let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
            return Ok(Self(value));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(JsonRejection::from)?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Self(value)),
            Err(_) => {
                let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
                Ok(Self(value))
            }
        }
    }
}

/// Path parameters, as text; handlers validate them into ids.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A query string; one that cannot be read is a 400 `invalid_query` problem naming why.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::BadRequest {
                    code: "invalid_query",
                    detail: rejection.body_text(),
                })?;
        Ok(Self(value))
    }
}

/// Proof that the request carries the admin token. Compared in constant time; with no
/// token configured every request is refused.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.admin(bearer(&parts.headers)).map(|()| Admin)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, as RFC
/// 7235 has it).
fn bearer(parts: &axum::http::HeaderMap) -> Option<&[u8]> {
    crate::callers::bearer(parts.get(AUTHORIZATION)?.as_bytes())
}

/// The caller of a reservation or cart route, as [`authenticate`] found it: `None` when
/// the engine has no client tokens (anyone may call).
pub struct Caller(pub Option<CallerName>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<CallerName>().cloned()))
    }
}

/// The caller a response was made for, for the metrics layer.
#[derive(Clone)]
pub struct CallerLabel(pub CallerName);

/// The client-token layer of the reservation and cart routes (installed only when client
/// tokens are configured): refuses a request without a token (401 `unauthenticated`) or
/// with one no client has (401 `invalid_token`), before its body is read; otherwise hands
/// the caller to the handler and its name to the metrics.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match state.client(bearer(request.headers())) {
        Ok(Some(caller)) => caller,
        Ok(None) => return next.run(request).await,
        Err(refused) => return refused.into_response(),
    };
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(CallerLabel(caller));
    response
}
