//! The sale page: `GET /` (every SKU) and `GET /ui/skus/{sku}` (one SKU) serve one
//! self-contained page (`ui.html`: no script or style from elsewhere, no build step), which
//! follows `GET /ui/events` (server-sent events, twice a second). Read-only: it shows what
//! `GET /v1/skus` and the metrics show, takes no action, and carries no token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::extract::ApiQuery;
use super::skus::SkuView;
use super::{ApiError, AppState};
use crate::admission::Refusal;
use crate::api::skus::current_view;
use crate::ids::Sku;
use crate::live::{now_ms, AuditSeen, Latency, RatePoint};
use crate::store::ShardUnits;

/// How often a stream sends the figures.
pub const EVENT_EVERY: Duration = Duration::from_millis(500);

/// The page, whole.
const PAGE: &str = include_str!("ui.html");

/// The page's routes (not in the OpenAPI document: they are not the API).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/ui/skus/{sku}", get(page))
        .route("/ui/events", get(events))
}

/// The page. It reads its SKU from its own path.
async fn page() -> impl IntoResponse {
    (
        [
            (CACHE_CONTROL, "no-cache"),
            // Nothing from elsewhere: the page's own inline script and style, and its own
            // origin's event stream.
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(PAGE),
    )
}

/// The stream's query.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// One SKU's figures; without it, every SKU's.
    sku: Option<String>,
}

/// The settlement figures the page shows.
#[derive(Debug, Serialize)]
struct Settlement {
    lag_seconds: f64,
    pending_events: i64,
}

/// One SKU's figures, as an event carries them.
#[derive(Debug, Serialize)]
struct SkuFigures {
    at_ms: u64,
    sku: SkuView,
    shards: Vec<ShardUnits>,
    /// Rates since the last event (the whole minutes kept, in the first).
    rates: Vec<RatePoint>,
    /// Refusals since the engine started, by reason.
    refusals: BTreeMap<&'static str, u64>,
    latency: Option<Latency>,
    settlement: Settlement,
    audit: Option<AuditSeen>,
    /// A repair holds the SKU's lease now.
    repairing: bool,
}

/// Every SKU's figures.
#[derive(Debug, Serialize)]
struct IndexFigures {
    at_ms: u64,
    skus: Vec<SkuView>,
    settlement: Settlement,
    audit: Option<AuditSeen>,
}

fn settlement(state: &AppState) -> Settlement {
    Settlement {
        lag_seconds: state.metrics.reconciler_lag.get(),
        pending_events: state.metrics.reconciler_pending.get(),
    }
}

/// One SKU's event: its figures, or `unavailable` (with why) when they cannot be read.
async fn sku_event(state: &AppState, sku: &Sku, after_ms: u64) -> (Event, u64) {
    let at_ms = now_ms();
    let figures = async {
        let view = current_view(state, sku).await?;
        let shards = state.store.shard_units(sku).await.unwrap_or_default();
        let repairing = state.store.lease_held(sku).await.unwrap_or(false);
        Ok::<_, ApiError>(SkuFigures {
            at_ms,
            sku: view,
            shards,
            rates: state.live.rates(sku, after_ms),
            refusals: state.live.refusals(sku),
            latency: state.live.latency(),
            settlement: settlement(state),
            audit: state.live.last_audit(),
            repairing,
        })
    };
    match figures.await {
        Ok(figures) => {
            let last = figures.rates.last().map_or(after_ms, |p| p.at_ms);
            (json_event("figures", &figures), last)
        }
        Err(error) => (
            json_event(
                "unavailable",
                &serde_json::json!({ "detail": error.to_string() }),
            ),
            after_ms,
        ),
    }
}

/// Every SKU's event: the first page of `GET /v1/skus`.
async fn index_event(state: &AppState) -> Event {
    match super::sku_list::first_page(state).await {
        Ok(page) => json_event(
            "figures",
            &IndexFigures {
                at_ms: now_ms(),
                skus: page.skus,
                settlement: settlement(state),
                audit: state.live.last_audit(),
            },
        ),
        Err(error) => json_event(
            "unavailable",
            &serde_json::json!({ "detail": error.to_string() }),
        ),
    }
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event("unavailable"))
}

/// The figures, every [`EVENT_EVERY`], until the page goes or the engine shuts down. At
/// most [`crate::live::MAX_VIEWERS`] pages at once (503 past them).
async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let sku = query.sku.map(Sku::new).transpose()?;
    let viewer = state
        .live
        .viewer()
        .ok_or_else(|| state.refused(Refusal::Overloaded))?;
    let closing = state.live.closing();
    let start = Streaming {
        state,
        sku,
        after_ms: 0,
        first: true,
        closing,
        _viewer: viewer,
    };
    let stream = futures::stream::unfold(start, |mut s| async move {
        if !s.first {
            tokio::select! {
                _ = tokio::time::sleep(EVENT_EVERY) => {}
                _ = s.closing.wait_for(|closing| *closing) => return None,
            }
        }
        if *s.closing.borrow() {
            return None;
        }
        s.first = false;
        let event = match &s.sku {
            Some(sku) => {
                let (event, after_ms) = sku_event(&s.state, sku, s.after_ms).await;
                s.after_ms = after_ms;
                event
            }
            None => index_event(&s.state).await,
        };
        Some((Ok(event), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A stream's state between events.
struct Streaming {
    state: AppState,
    sku: Option<Sku>,
    /// The last rate point sent.
    after_ms: u64,
    first: bool,
    closing: tokio::sync::watch::Receiver<bool>,
    /// Held while the stream lives.
    _viewer: tokio::sync::OwnedSemaphorePermit,
}
