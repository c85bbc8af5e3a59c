//! Baseline: a PostgreSQL hot row. Per request, in one transaction,
//! `UPDATE baseline_stock SET qty = qty - $2 WHERE sku = $1 AND qty >= $2` and an insert
//! into `baseline_orders`. This is the textbook relational answer: correct (the row lock
//! serialises buyers and the guard keeps `qty` from going negative), but every buyer of a
//! SKU queues on the same row lock.
//!
//! Tables, created at start if missing:
//! `baseline_stock (sku TEXT PRIMARY KEY, qty BIGINT NOT NULL)` and
//! `baseline_orders (id BIGSERIAL PRIMARY KEY, sku, user_id, quantity, created_at)`.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::{Refusal, Reserve, ReserveBody, StockBody};

/// The label on every response.
const BASELINE: &str = "pg-hotrow";

/// A typical application pool size, for callers without an opinion: well above the
/// number of cores, as pools usually are, so the row lock rather than the pool is the
/// bottleneck being measured.
pub const PG_HOTROW_DEFAULT_POOL_SIZE: u32 = 32;

/// Run one statement at a time: a prepared statement may hold only one command.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS baseline_stock (
        sku TEXT PRIMARY KEY,
        qty BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS baseline_orders (
        id BIGSERIAL PRIMARY KEY,
        sku TEXT NOT NULL,
        user_id TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
];

/// Serves the PostgreSQL hot-row baseline on `listener` until `shutdown` completes, against
/// the database at `database_url` through a pool of at most `pool_size` connections
/// ([`PG_HOTROW_DEFAULT_POOL_SIZE`] is the usual choice). Creates its tables if they are missing.
///
/// Fails early if the database cannot be reached or the tables cannot be created.
pub async fn serve_pg_hotrow(
    listener: tokio::net::TcpListener,
    database_url: &str,
    pool_size: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(pool_size.max(1))
        .connect(database_url)
        .await
        .context("connecting the pg-hotrow baseline to PostgreSQL")?;
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .context("creating the pg-hotrow baseline's tables")?;
    }
    let router = Router::new()
        .route("/v1/reservations", post(reserve_handler))
        .route("/v1/skus/{sku}", put(set_stock))
        .route("/healthz", get(|| async { super::healthy(BASELINE) }))
        .with_state(pool);
    axum::serve(listener, super::labelled(router, BASELINE))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the pg-hotrow baseline")
}

async fn reserve_handler(
    State(pool): State<PgPool>,
    headers: HeaderMap,
    Json(body): Json<ReserveBody>,
) -> Response {
    let reserve = match Reserve::validate(&headers, body) {
        Ok(reserve) => reserve,
        Err(refusal) => return refusal.into_response(),
    };
    match take(&pool, &reserve).await {
        Ok(Ok(order_id)) => reserve.held(BASELINE, order_id.to_string()),
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "pg-hotrow baseline: reserve failed");
            Refusal::Unavailable.into_response()
        }
    }
}

/// Decrements the stock row and records the order, atomically: the order id, or why no
/// units were taken. The outer error is the database's.
async fn take(pool: &PgPool, reserve: &Reserve) -> Result<Result<i64, Refusal>, sqlx::Error> {
    let quantity = i64::from(reserve.quantity);
    let mut tx = pool.begin().await?;
    let updated =
        sqlx::query("UPDATE baseline_stock SET qty = qty - $2 WHERE sku = $1 AND qty >= $2")
            .bind(reserve.sku.as_str())
            .bind(quantity)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if updated == 0 {
        // Asked inside the transaction, on the connection already held, rather than
        // checking out a second one after the rollback.
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM baseline_stock WHERE sku = $1)")
                .bind(reserve.sku.as_str())
                .fetch_one(&mut *tx)
                .await?;
        tx.rollback().await?;
        return Ok(Err(if known {
            Refusal::SoldOut
        } else {
            Refusal::SkuNotFound
        }));
    }
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO baseline_orders (sku, user_id, quantity) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(reserve.sku.as_str())
    .bind(reserve.user.as_str())
    .bind(quantity)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(order_id))
}

async fn set_stock(
    State(pool): State<PgPool>,
    Path(sku): Path<String>,
    Json(body): Json<StockBody>,
) -> Response {
    let (sku, stock) = match super::validate_stock(sku, body) {
        Ok(valid) => valid,
        Err(refusal) => return refusal.into_response(),
    };
    let upsert = sqlx::query(
        "INSERT INTO baseline_stock (sku, qty) VALUES ($1, $2)
         ON CONFLICT (sku) DO UPDATE SET qty = EXCLUDED.qty",
    )
    .bind(sku.as_str())
    .bind(stock)
    .execute(&pool)
    .await;
    match upsert {
        Ok(_) => super::stock_set(BASELINE, &sku, stock),
        Err(e) => {
            tracing::warn!(error = %e, "pg-hotrow baseline: setting stock failed");
            Refusal::Unavailable.into_response()
        }
    }
}
