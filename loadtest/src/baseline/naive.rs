//! Baseline: one pooled-connection checkout per request and one unsharded check-and-DECRBY
//! script. This is how a team usually puts a flash sale on Redis first: correct (the
//! script is atomic, so no oversell) but with every buyer of a SKU on one key, one shard
//! and one Redis core, and a pool checkout (with deadpool's recycle `PING`) on every
//! request.
//!
//! State: `<prefix>:{<sku>}:stock`, a plain integer. Nothing else: no holds, no
//! idempotency, no expiry.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use deadpool_redis::{Config, Pool, PoolConfig, Runtime};
use flashsale::ids::Sku;

use super::{Refusal, Reserve, ReserveBody, StockBody};

/// The label on every response.
const BASELINE: &str = "naive-redis";

/// Takes `ARGV[1]` units from the stock at `KEYS[1]` if that many are left.
const RESERVE_LUA: &str = r"
-- Check-and-decrement of one SKU's stock; atomic, so it never oversells.
-- KEYS[1]  the SKU's stock counter
-- ARGV[1]  units wanted (>= 1)
-- Returns  -1 no such SKU, 0 not enough left (nothing changed), 1 taken
local stockKey = KEYS[1]
local s = tonumber(redis.call('GET', stockKey) or '-1')
if s < 0 then return -1 end
if s < tonumber(ARGV[1]) then return 0 end
redis.call('DECRBY', stockKey, ARGV[1])
return 1
";

/// What every handler shares.
#[derive(Clone)]
struct NaiveState {
    /// Checked out once per request, never held across requests.
    pool: Pool,
    /// The operator's key prefix; trusted, unlike the SKU.
    prefix: Arc<str>,
    /// [`RESERVE_LUA`], called by SHA; `redis::Script` loads it again on `NOSCRIPT`.
    reserve: Arc<redis::Script>,
}

impl NaiveState {
    fn stock_key(&self, sku: &Sku) -> String {
        format!("{}:{{{}}}:stock", self.prefix, sku.as_str())
    }
}

/// Serves the naive Redis baseline on `listener` until `shutdown` completes: stock under
/// `<prefix>:{<sku>}:stock` in the Redis at `redis_url`, reached through a deadpool pool of
/// at most `pool_size` connections, one checkout per request.
///
/// Fails early if Redis does not answer at start.
pub async fn serve_naive(
    listener: tokio::net::TcpListener,
    redis_url: &str,
    prefix: &str,
    pool_size: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut config = Config::from_url(redis_url);
    config.pool = Some(PoolConfig::new(pool_size.max(1)));
    let pool = config
        .create_pool(Some(Runtime::Tokio1))
        .context("creating the naive baseline's Redis pool")?;
    let reserve = redis::Script::new(RESERVE_LUA);
    {
        let mut conn = pool
            .get()
            .await
            .with_context(|| format!("connecting the naive baseline to {redis_url}"))?;
        // Loaded once here so that the first burst of a run does not all miss with NOSCRIPT.
        reserve
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .context("loading the naive baseline's reserve script")?;
    }
    let state = NaiveState {
        pool,
        prefix: prefix.into(),
        reserve: Arc::new(reserve),
    };
    let router = Router::new()
        .route("/v1/reservations", post(reserve_handler))
        .route("/v1/skus/{sku}", put(set_stock))
        .route("/healthz", get(|| async { super::healthy(BASELINE) }))
        .with_state(state);
    axum::serve(listener, super::labelled(router, BASELINE))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the naive baseline")
}

async fn reserve_handler(
    State(state): State<NaiveState>,
    headers: HeaderMap,
    Json(body): Json<ReserveBody>,
) -> Response {
    let reserve = match Reserve::validate(&headers, body) {
        Ok(reserve) => reserve,
        Err(refusal) => return refusal.into_response(),
    };
    match take(&state, &reserve).await {
        Ok(()) => reserve.held(BASELINE, flashsale::ids::random_token()),
        Err(refusal) => refusal.into_response(),
    }
}

/// Runs the script on a freshly checked-out connection.
async fn take(state: &NaiveState, reserve: &Reserve) -> Result<(), Refusal> {
    let mut conn = state.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "naive baseline: no Redis connection");
        Refusal::Unavailable
    })?;
    let code: i64 = state
        .reserve
        .key(state.stock_key(&reserve.sku))
        .arg(reserve.quantity)
        .invoke_async(&mut *conn)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "naive baseline: reserve script failed");
            Refusal::Unavailable
        })?;
    match code {
        1 => Ok(()),
        0 => Err(Refusal::SoldOut),
        -1 => Err(Refusal::SkuNotFound),
        other => {
            tracing::warn!(code = other, "naive baseline: unexpected script reply");
            Err(Refusal::Unavailable)
        }
    }
}

async fn set_stock(
    State(state): State<NaiveState>,
    Path(sku): Path<String>,
    Json(body): Json<StockBody>,
) -> Response {
    let (sku, stock) = match super::validate_stock(sku, body) {
        Ok(valid) => valid,
        Err(refusal) => return refusal.into_response(),
    };
    let set = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        redis::cmd("SET")
            .arg(state.stock_key(&sku))
            .arg(stock)
            .query_async::<()>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    };
    match set.await {
        Ok(()) => super::stock_set(BASELINE, &sku, stock),
        Err(error) => {
            tracing::warn!(%error, "naive baseline: setting stock failed");
            Refusal::Unavailable.into_response()
        }
    }
}
