//! The application layer: every operation of the engine's API implemented once, for every
//! face that serves it (HTTP in [`crate::http`], gRPC in [`crate::grpc`]). A face reads its
//! request into the operation's typed input, calls it, and writes its answer or its
//! [`ApiError`] in its own terms; validation, admission, the store calls, the ledger's
//! answers for retired SKUs and the metrics of refusals all live here.
//!
//! Operations never touch Redis directly: they validate, ask [`Admission`], and call the
//! [`Store`].

pub mod carts;
pub mod error;
pub mod health;
pub mod reservations;
mod retired;
pub mod skus;

use std::sync::Arc;
use std::time::Instant;

use subtle::ConstantTimeEq;
use tokio::sync::{OnceCell, OwnedSemaphorePermit};

pub use error::ApiError;

use crate::admission::{Admission, Refusal};
use crate::callers::ClientTokens;
use crate::ids::{CallerName, IdempotencyKey};
use crate::ledger::Ledger;
use crate::live::LiveSale;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// The request header (HTTP) or metadata key (gRPC) that makes a reserve or a cart
/// idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What every operation shares, on either face. axum clones the state into every request
/// it routes (and drops it after), so it is one reference-counted pointer: cloning and
/// dropping a struct of eight shared fields took about a tenth of the engine's CPU on a
/// refusal.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of an engine made of `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The reservation store.
    pub store: Store,
    /// In-memory load shedding.
    pub admission: Arc<Admission>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The admin bearer token; `None` refuses every admin request.
    pub admin_token: Option<Arc<str>>,
    /// The callers the reservation and cart routes serve; `None`: anyone.
    pub client_tokens: Option<Arc<ClientTokens>>,
    /// The OpenAPI document served at `/openapi.json`.
    pub openapi: Arc<serde_json::Value>,
    /// The ledger, once its database has answered (never, without a database URL).
    pub ledger: Arc<OnceCell<Ledger>>,
    /// This engine's entry in the engine registry, and its shares of the rates.
    pub registry: Arc<Registry>,
    /// The sampled last minutes of the sale, for the sale page.
    pub live: Arc<LiveSale>,
}

impl AppState {
    /// Counts a refusal and turns it into its problem.
    pub(crate) fn refused(&self, refusal: Refusal) -> ApiError {
        self.metrics.refused(refusal.reason());
        ApiError::Refused(refusal)
    }

    /// A permit for one request's Redis calls, within the in-flight bound.
    pub(crate) fn call_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.trusted()?;
        self.admission.admit_call().map_err(|r| self.refused(r))
    }

    /// A permit for a confirm or a cancel of a hold of `sku` (of a cart: `None`), which
    /// spends a token of the reserves' buckets (see [`Admission::admit_settle`]).
    pub(crate) fn settle_permit(
        &self,
        sku: Option<&crate::ids::Sku>,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        self.trusted()?;
        self.admission
            .admit_settle(sku)
            .map_err(|r| self.refused(r))
    }

    /// Counts `error`, the answer to a reserve or cart line of `sku`, as a refusal of the
    /// SKU, if the engine knows the SKU (a name made up gets no series of its own).
    pub(crate) fn count_refusal(&self, sku: &crate::ids::Sku, error: &ApiError) {
        if let Some(code) = error.refusal_code() {
            self.count_code(sku, code);
        }
    }

    /// Counts a hold made of `sku`. A hold proves the SKU loaded: no gate is looked up.
    pub(crate) fn count_hold(&self, sku: &crate::ids::Sku) {
        self.metrics
            .sku_reserves
            .with_label_values(&[sku.as_str()])
            .inc();
    }

    /// Counts a refusal of `sku` under `code`, if the engine knows the SKU.
    pub(crate) fn count_code(&self, sku: &crate::ids::Sku, code: &str) {
        if self.admission.gate(sku).is_some() {
            self.metrics.sku_refused(sku.as_str(), code);
        }
    }

    /// Gives admission a gate for `sku` if it has none yet, from the configuration the
    /// store call just read: the next refusal of it can then come from memory.
    pub(crate) async fn learn(&self, sku: &crate::ids::Sku) {
        if self.admission.gate(sku).is_none() {
            if let Ok(config) = self.store.config(sku).await {
                self.admission.know(&config);
            }
        }
    }

    /// Raises `sku`'s sold-out flag on the store's answer that it is: later reserves (and
    /// cart lines) of it are refused from memory.
    pub(crate) fn sold_out(&self, sku: &crate::ids::Sku) {
        if self.admission.mark_sold_out(sku) {
            // Until the keys Redis recorded are known, sold-out reserves still go to Redis
            // (one of them may be a retry of a reserve that succeeded): load them now
            // rather than at the next poll.
            let (store, admission, sku) = (self.store.clone(), self.admission.clone(), sku.clone());
            tokio::spawn(async move {
                let reopenings = admission.reopenings(&sku);
                if let Ok(keys) = store.recorded_keys(&sku).await {
                    admission.set_recorded_keys(&sku, reopenings, keys);
                }
            });
        }
    }

    /// Refuses while the store's Redis is suspect (a connection dropped and the gate task
    /// has not yet checked the Redis that answers now).
    pub(crate) fn trusted(&self) -> Result<(), ApiError> {
        if self.store.redis_suspect() {
            return Err(self.refused(Refusal::Suspended));
        }
        Ok(())
    }
}

/// `ms` since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parses an RFC 3339 time given in field `field` into ms since the epoch, no earlier than
/// `earliest`: a sale window edge before 1970 is as good as at the epoch.
pub(crate) fn parse_time(field: &str, text: &str, earliest: u64) -> Result<u64, ApiError> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::Invalid {
            code: "invalid_time",
            detail: format!("{field} must be an RFC 3339 time, such as 2026-11-27T10:00:00Z"),
        })?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    Ok(u64::try_from(ms).unwrap_or(0).max(earliest))
}

impl AppState {
    /// Checks the admin token a request carries (`None`: it carries none), in constant
    /// time; with no admin token configured every request is refused.
    pub fn admin(&self, given: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(expected) = self.admin_token.as_deref() else {
            return Err(ApiError::AdminDisabled);
        };
        let given = given.ok_or(ApiError::Unauthorized)?;
        if bool::from(given.ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The caller a reservation or cart request comes from, by the client token it carries
    /// (`None`: it carries none): `Ok(None)` when the engine has no client tokens (anyone
    /// may call); refused when it has and the token is missing or no client's.
    pub fn client(&self, token: Option<&[u8]>) -> Result<Option<CallerName>, ApiError> {
        let Some(tokens) = self.client_tokens.as_deref() else {
            return Ok(None);
        };
        let token = token.ok_or(ApiError::Unauthenticated)?;
        tokens
            .caller(token)
            .cloned()
            .map(Some)
            .ok_or(ApiError::InvalidToken)
    }
}

/// The idempotency key a request carries (`None`: it carries none), with the same rules
/// on every face: required, and 1-128 of `[A-Za-z0-9._-]`.
pub fn idempotency_key(value: Option<&[u8]>) -> Result<IdempotencyKey, ApiError> {
    let value = value.ok_or(ApiError::BadRequest {
        code: "missing_idempotency_key",
        detail: "the Idempotency-Key header (gRPC: idempotency-key metadata) is required".into(),
    })?;
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or(ApiError::Invalid {
            code: "invalid_idempotency_key",
            detail: "idempotency_key may contain only ASCII letters and digits, '.', '_' and '-'"
                .into(),
        })?;
    Ok(IdempotencyKey::new(text)?)
}

/// Times a store call into the Redis latency histogram, and counts its Redis failures.
pub(crate) async fn timed<T>(
    state: &AppState,
    op: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    state
        .metrics
        .redis_seconds
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    if let Err(StoreError::Redis(error)) = &result {
        let kind = if error.is_timeout() {
            "timeout"
        } else {
            "error"
        };
        state
            .metrics
            .redis_errors
            .with_label_values(&[op, kind])
            .inc();
    }
    result
}
