//! The HTTP face (axum): one module per resource, the API's errors as RFC 9457 problems,
//! the OpenAPI document generated from the handlers (utoipa), metrics per route and
//! outcome. Handlers read the request and write the answer; the operation itself is the
//! application layer's ([`crate::api`]).

mod carts;
mod error;
mod extract;
mod health;
mod number;
mod reservations;
mod sku_list;
mod skus;
mod ui;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
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

pub use crate::api::{rfc3339, AppState, Shared};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

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
