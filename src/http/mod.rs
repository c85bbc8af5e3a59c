//! The HTTP API (axum): one module per resource, one error type, the OpenAPI document
//! generated from the handlers (utoipa), metrics per route and outcome.
//!
//! Handlers never touch Redis directly: they validate, ask [`Admission`], and call the
//! [`Store`].

mod carts;
mod error;
mod extract;
mod health;
mod number;
mod reservations;
mod retired;
mod sku_list;
mod skus;
mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, OnceCell, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, OutcomeCode, Problem};
pub use reservations::{
    CancelByKeyView, ReservationStatus, ReservationView, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED,
};
pub use skus::{SkuStatus, SkuView};

use crate::admission::{Admission, Refusal};
use crate::callers::ClientTokens;
use crate::config::ServeConfig;
use crate::ledger::Ledger;
use crate::live::LiveSale;
use crate::metrics::Metrics;
use crate::recovery::identity;
use crate::registry::Registry;
use crate::settlement::{self, SettlementOptions};
use crate::store::Store;
use crate::{gates, maintenance};

/// How long start-up waits for the ledger when Redis has to be checked against it.
const STARTUP_LEDGER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// What every handler shares. axum clones the state into every request it routes (and
/// drops it after), so it is one reference-counted pointer: cloning and dropping a struct
/// of eight shared fields took about a tenth of the engine's CPU on a refusal.
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
    fn refused(&self, refusal: Refusal) -> ApiError {
        self.metrics.refused(refusal.reason());
        ApiError::Refused(refusal)
    }

    /// A permit for one request's Redis calls, within the in-flight bound.
    fn call_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.trusted()?;
        self.admission.admit_call().map_err(|r| self.refused(r))
    }

    /// A permit for a confirm or a cancel of a hold of `sku` (of a cart: `None`), which
    /// spends a token of the reserves' buckets (see [`Admission::admit_settle`]).
    fn settle_permit(
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
    fn count_refusal(&self, sku: &crate::ids::Sku, error: &ApiError) {
        if let Some(code) = error.refusal_code() {
            self.count_code(sku, code);
        }
    }

    /// Counts a hold made of `sku`. A hold proves the SKU loaded: no gate is looked up.
    fn count_hold(&self, sku: &crate::ids::Sku) {
        self.metrics
            .sku_reserves
            .with_label_values(&[sku.as_str()])
            .inc();
    }

    /// Counts a refusal of `sku` under `code`, if the engine knows the SKU.
    fn count_code(&self, sku: &crate::ids::Sku, code: &str) {
        if self.admission.gate(sku).is_some() {
            self.metrics.sku_refused(sku.as_str(), code);
        }
    }

    /// Gives admission a gate for `sku` if it has none yet, from the configuration the
    /// store call just read: the next refusal of it can then come from memory.
    async fn learn(&self, sku: &crate::ids::Sku) {
        if self.admission.gate(sku).is_none() {
            if let Ok(config) = self.store.config(sku).await {
                self.admission.know(&config);
            }
        }
    }

    /// Raises `sku`'s sold-out flag on the store's answer that it is: later reserves (and
    /// cart lines) of it are refused from memory.
    fn sold_out(&self, sku: &crate::ids::Sku) {
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
    fn trusted(&self) -> Result<(), ApiError> {
        if self.store.redis_suspect() {
            return Err(self.refused(Refusal::Suspended));
        }
        Ok(())
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "Flash-sale inventory reservations: reserve (Try), confirm, cancel. \
                       Errors are RFC 9457 problems with a stable `code`."
    ),
    components(schemas(Problem)),
    modifiers(&AdminTokenScheme)
)]
struct ApiDoc;

struct AdminTokenScheme;

impl utoipa::Modify for AdminTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        // Required by the reservation and cart routes only when the engine is started
        // with client tokens (--client-token NAME=TOKEN); they are open otherwise.
        components.add_security_scheme(
            "client_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The routes a client calls: reservations and carts (behind the client tokens, when
/// there are any).
fn client_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(reservations::reserve))
        .routes(routes!(reservations::cancel_by_key))
        .routes(routes!(reservations::get_reservation))
        .routes(routes!(reservations::confirm))
        .routes(routes!(reservations::cancel))
        .routes(routes!(carts::open_cart))
        .routes(routes!(carts::get_cart))
        .routes(routes!(carts::confirm_cart))
        .routes(routes!(carts::cancel_cart))
}

/// Every other route: the SKUs (admin writes, public reads) and operations.
fn other_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sku_list::list_skus))
        .routes(routes!(skus::put_sku, skus::get_sku, skus::retire_sku))
        .routes(routes!(skus::restock))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
}

/// The routes and their OpenAPI document; `clients` wraps the client routes.
fn api_with(
    clients: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(other_routes())
        .merge(clients(client_routes()))
        .split_for_parts()
}

/// The OpenAPI document of the API, as JSON.
pub fn openapi_json() -> serde_json::Value {
    document(api_with(|routes| routes).1)
}

fn document(openapi: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(openapi).expect("the OpenAPI document serializes");
    camel_case_links(&mut json);
    json
}

/// utoipa 5.5 writes a Link Object's fields in snake case (`operation_id`); OpenAPI names
/// them `operationId`, `operationRef`, `requestBody`, and tools that follow links (a
/// stateful fuzzer, a client generator) read only those.
fn camel_case_links(document: &mut serde_json::Value) {
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|operations| operations.values_mut())
        .filter_map(|operation| operation["responses"].as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}

/// The whole application: routes, fallbacks, body limit, metrics and tracing layers.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api_with(|routes| match state.client_tokens {
        // Without client tokens the layer would only pass requests on: it is left out.
        None => routes,
        Some(_) => routes.route_layer(middleware::from_fn_with_state(
            state.clone(),
            extract::authenticate,
        )),
    });
    routes
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        detail: "no such route".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Counts and times every request by caller, route, method and outcome.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let outcome = response
        .extensions()
        .get::<OutcomeCode>()
        .map_or("ok", |code| code.0);
    let caller = response
        .extensions()
        .get::<extract::CallerLabel>()
        .map_or(crate::metrics::ANONYMOUS, |label| label.0.as_str());
    let labels = [caller, route.as_str(), method.as_str(), outcome];
    state.metrics.requests.with_label_values(&labels).inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
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
fn parse_time(field: &str, text: &str, earliest: u64) -> Result<u64, ApiError> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::Invalid {
            code: "invalid_time",
            detail: format!("{field} must be an RFC 3339 time, such as 2026-11-27T10:00:00Z"),
        })?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    Ok(u64::try_from(ms).unwrap_or(0).max(earliest))
}

/// What a command says when the Redis at `url` does not answer.
pub fn unreachable_redis(url: &dyn std::fmt::Display) -> String {
    format!(
        "cannot reach Redis at {url}: start one there, point --redis-url (or \
         FLASHSALE_REDIS_URL) at one, or try `flashsale-loadtest serve` for a private \
         Redis that lives as long as the engine"
    )
}

/// A built service: listener bound, store connected, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    background: Vec<JoinHandle<()>>,
    /// Tells the ledger side to finish its batch and stop.
    stop: watch::Sender<bool>,
    settlement: Option<JoinHandle<()>>,
    state: AppState,
}

impl Application {
    /// Connects to Redis, learns the loaded SKUs, binds the listener and starts the
    /// background tasks (sweeper, move recovery, sold-out refresh).
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let target = config.redis.target()?;
        let database_url = config.database_url();
        let store = Store::connect(&config.redis.store_options(target.clone()))
            .await
            .with_context(|| unreachable_redis(&target))?;
        store
            .sync_clock()
            .await
            .with_context(|| unreachable_redis(&target))?;
        let admission = Arc::new(Admission::new(&config.admission()));
        for sku in store.skus().await? {
            admission.know(&*store.config(&sku).await?);
        }
        let client_tokens = config
            .client_tokens()
            .context("bad --client-token, --client-tokens-file or FLASHSALE_CLIENT_TOKENS")?
            .map(Arc::new);
        let metrics = Arc::new(Metrics::new());
        metrics
            .max_in_flight
            .set(config.max_in_flight.max(1) as i64);
        metrics.know_callers(client_tokens.iter().flat_map(|tokens| tokens.names()));
        // Joined before serving, so that the first request is admitted at this engine's share.
        let registry = Registry::join(
            store.clone(),
            admission.clone(),
            metrics.clone(),
            config.registry(),
        )
        .await
        .with_context(|| unreachable_redis(&target))?;
        let state = AppState::new(Shared {
            store: store.clone(),
            admission: admission.clone(),
            metrics,
            admin_token: config.admin_token.as_deref().map(Arc::from),
            client_tokens,
            openapi: Arc::new(openapi_json()),
            ledger: Arc::default(),
            registry,
            live: Arc::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let settlement = database_url.clone().map(|database_url| {
            let options = SettlementOptions {
                database_url,
                reconcile: !config.no_reconcile,
                audit_every: (config.audit_interval_s > 0)
                    .then(|| std::time::Duration::from_secs(config.audit_interval_s)),
            };
            settlement::spawn(
                options,
                store.clone(),
                state.ledger.clone(),
                state.metrics.clone(),
                admission.clone(),
                stopped,
            )
        });
        // A Redis never checked against the ledger is not served from until it is.
        let trust = identity::Trust {
            ledger: state.ledger.clone(),
            ledger_expected: database_url.is_some(),
            repair: !config.no_audit_repair,
        };
        if !identity::check_identity(&state.store, &admission, &trust).await? {
            // A Redis not yet checked: give the ledger a moment to connect and check it
            // before serving (if it does not come, the service starts suspended).
            trust.ledger_ready(STARTUP_LEDGER_WAIT).await;
            identity::check_identity(&state.store, &admission, &trust).await?;
        }
        let listener = TcpListener::bind(config.listen).await?;
        let background = vec![
            state.registry.spawn(),
            maintenance::spawn_shared(
                store.clone(),
                config.sweep_interval(),
                state.registry.clone(),
                state.metrics.clone(),
                config.retire_after(),
            ),
            state.live.spawn(state.metrics.clone(), admission.clone()),
            gates::spawn(store, admission, config.sold_out_poll(), trust),
        ];
        Ok(Self {
            router: router(state.clone()),
            listener,
            background,
            stop,
            settlement,
            state,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared state (store, admission, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight and stops
    /// the background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The sale page's streams never end by themselves: they end when shutdown begins,
        // so that the graceful shutdown can finish.
        let live = self.state.live.clone();
        let shutdown = async move {
            shutdown.await;
            live.close();
        };
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        for task in self.background {
            task.abort();
        }
        // Every request is answered: the others may take this engine's share now.
        if let Err(error) = self.state.registry.leave().await {
            tracing::warn!(%error, "could not leave the engine registry");
        }
        // The reconciler finishes the batch it is settling; a stuck one is not waited for.
        let _ = self.stop.send(true);
        if let Some(settlement) = self.settlement {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), settlement).await;
        }
        served
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
