//! SKUs: load, read, restock and retire.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{rfc3339, ApiError, AppState};
use crate::ids::{OpId, Sku};
use crate::ledger::LedgerRepo;
use crate::store::{
    Loaded, QuantityBound, Retirement, SkuConfig, SkuSpec, StoreError, Totals, MAX_HOLD, MAX_STOCK,
};

/// Where a SKU's sale stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkuStatus {
    /// Before the window.
    Scheduled,
    /// Reservable.
    Live,
    /// No unit available now (held units may still come back).
    SoldOut,
    /// After the window (or its retirement began, which closes the window at once).
    Ended,
    /// Ended, no hold open, no move in transit, and every event of its streams settled in
    /// the ledger: nothing of it changes any more, and it may be retired.
    Settled,
    /// Its retirement began: it takes nothing new, and its keys leave Redis once the
    /// ledger has settled its streams.
    Retiring,
    /// Retired: nothing of it is left in Redis; the answer comes from the ledger.
    Retired,
}

/// Where a retirement stands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetirementView {
    /// The SKU.
    pub sku: String,
    /// `retiring` (begun; the keys go once the ledger has settled the SKU's streams) or
    /// `retired` (nothing of it is left in Redis).
    pub status: SkuStatus,
}

/// A SKU and its units.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkuView {
    /// The SKU.
    pub sku: String,
    /// Units put on sale: loaded plus restocked.
    pub stock: u64,
    /// Units available now.
    pub available: u64,
    /// Units held.
    pub held: u64,
    /// Units sold.
    pub sold: u64,
    /// Units one user may hold or buy.
    pub per_user_limit: u32,
    /// Hold length in seconds.
    pub hold_seconds: f64,
    /// Shards the stock is split over.
    pub shards: u16,
    /// Sale start (RFC 3339), if any.
    pub starts_at: Option<String>,
    /// Sale end (RFC 3339), if any.
    pub ends_at: Option<String>,
    /// Where the sale stands.
    pub status: SkuStatus,
    /// What the SQL ledger has settled so far (absent without a ledger).
    pub settled: Option<SettledView>,
}

/// A SKU's figures in the ledger of record; they trail Redis by the reconciler's lag.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettledView {
    /// Units put on sale.
    pub stock: u64,
    /// Units available.
    pub available: u64,
    /// Units held.
    pub held: u64,
    /// Units sold.
    pub sold: u64,
    /// Reservations cancelled.
    pub cancelled: u64,
    /// Reservations expired.
    pub expired: u64,
    /// Reservations in all.
    pub reservations: u64,
}

impl From<&crate::ledger::LedgerFigures> for SettledView {
    fn from(f: &crate::ledger::LedgerFigures) -> Self {
        Self {
            stock: f.stock,
            available: f.available(),
            held: f.held,
            sold: f.sold,
            cancelled: f.cancelled,
            expired: f.expired,
            reservations: f.reservations,
        }
    }
}

fn view(config: &SkuConfig, totals: &Totals, now_ms: u64) -> SkuView {
    let status = if config.starts_at_ms.is_some_and(|s| now_ms < s) {
        SkuStatus::Scheduled
    } else if config.ends_at_ms.is_some_and(|e| now_ms >= e) {
        SkuStatus::Ended
    } else if totals.available == 0 && totals.in_transit == 0 {
        SkuStatus::SoldOut
    } else {
        SkuStatus::Live
    };
    SkuView {
        sku: config.sku.to_string(),
        stock: totals.loaded + totals.restocked,
        available: totals.available,
        held: totals.held,
        sold: totals.sold,
        per_user_limit: config.per_user_limit,
        hold_seconds: config.hold.as_secs_f64(),
        shards: config.shards,
        starts_at: config.starts_at_ms.map(rfc3339),
        ends_at: config.ends_at_ms.map(rfc3339),
        status,
        settled: None,
    }
}

fn hold(seconds: Option<f64>) -> Result<Duration, ApiError> {
    let seconds = seconds.unwrap_or(600.0);
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| d.as_millis() >= 1 && *d <= MAX_HOLD)
        .ok_or_else(|| ApiError::Invalid {
            code: "invalid_sku_spec",
            detail: "hold_seconds must be between 0.001 and 86400".into(),
        })
}

pub async fn current_view(state: &AppState, sku: &Sku) -> Result<SkuView, ApiError> {
    let config = match state.store.config(sku).await {
        Err(StoreError::UnknownSku) => {
            return super::retired::sku_view(state, sku)
                .await
                .ok_or(StoreError::UnknownSku.into());
        }
        other => other?,
    };
    let totals = state.store.totals(sku).await?;
    let mut view = view(&config, &totals, state.store.redis_now_ms());
    if state.store.retiring_since(sku).await?.is_some() {
        view.status = SkuStatus::Retiring;
    } else if view.status == SkuStatus::Ended
        && totals.held == 0
        && totals.in_transit == 0
        && state.store.streams_settled(sku, config.ever_shards).await?
    {
        view.status = SkuStatus::Settled;
    }
    if let Some(ledger) = state.ledger.get() {
        // The ledger being down must not take the SKU view down with it.
        match ledger.figures(sku.as_str()).await {
            Ok(f) => view.settled = Some(SettledView::from(&f)),
            Err(error) => tracing::warn!(%error, "ledger figures unavailable"),
        }
    }
    Ok(view)
}

/// What a SKU is loaded with, as a face read it; the operation validates it.
pub struct SkuInput {
    /// Units on sale.
    pub stock: u64,
    /// Units one user may hold or buy (default 1).
    pub per_user_limit: Option<u64>,
    /// How long a hold lasts, in seconds (default 600).
    pub hold_seconds: Option<f64>,
    /// Shards the stock is split over (default: chosen from the stock).
    pub shards: Option<u64>,
    /// When the sale opens, ms since the epoch (a time before it counts as the epoch);
    /// open at once when absent or at the epoch.
    pub starts_at_ms: Option<u64>,
    /// When the sale closes, ms since the epoch; never when absent.
    pub ends_at_ms: Option<u64>,
}

/// Loads a SKU, or replaces one that has no holds, sales or barriers yet; says which.
/// The caller has checked the admin token.
pub async fn put_sku(
    state: &AppState,
    sku: String,
    input: SkuInput,
) -> Result<(Loaded, SkuView), ApiError> {
    let sku = Sku::new(sku)?;
    // A retired SKU's id is not reused: the ledger keeps its record under it.
    if super::retired::is_retired(state, &sku).await {
        return Err(StoreError::Retired.into());
    }
    // Out-of-range values saturate here and are refused, with their range named, by the
    // spec's own validation.
    let spec = SkuSpec {
        stock: input.stock,
        shards: input.shards.map(|n| u16::try_from(n).unwrap_or(u16::MAX)),
        per_user_limit: input
            .per_user_limit
            .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        hold: hold(input.hold_seconds)?,
        // A start at the epoch (or before) is no start: the sale is open. An end at the
        // epoch is 1 ms after it, since 0 would mean no end.
        starts_at_ms: input.starts_at_ms.filter(|ms| *ms > 0),
        ends_at_ms: input.ends_at_ms.map(|ms| ms.max(1)),
    };
    let loaded = state.store.load(&sku, &spec).await?;
    let config = state.store.config(&sku).await?;
    state.admission.forget(&sku);
    state.admission.know(&config);
    Ok((loaded, current_view(state, &sku).await?))
}

/// Reads a SKU: its rules, units and status; of a retired one, the ledger's record.
pub async fn get_sku(state: &AppState, sku: String) -> Result<SkuView, ApiError> {
    let sku = Sku::new(sku)?;
    current_view(state, &sku).await
}

/// Adds units to a loaded SKU, spread over its shards: `quantity` if the face read a whole
/// number (`None` otherwise, refused), at most once per `operation_id`. The caller has
/// checked the admin token.
pub async fn restock(
    state: &AppState,
    sku: String,
    quantity: Option<u64>,
    operation_id: Option<String>,
) -> Result<SkuView, ApiError> {
    let sku = Sku::new(sku)?;
    let quantity = quantity
        .filter(|q| (1..=MAX_STOCK).contains(q))
        .ok_or(StoreError::InvalidQuantity(QuantityBound::Restock))?;
    let op = operation_id.map(OpId::new).transpose()?;
    state.store.restock(&sku, quantity, op.as_ref()).await?;
    state.admission.clear_sold_out(&sku);
    current_view(state, &sku).await
}

/// Retires a SKU: it takes nothing new from now on (its window closes at once), and every
/// key and field of it leaves Redis once the ledger has settled its streams. Idempotent:
/// the answer says where the retirement stands. The caller has checked the admin token.
pub async fn retire_sku(state: &AppState, sku: String) -> Result<RetirementView, ApiError> {
    let sku = Sku::new(sku)?;
    let status = match state.store.retire(&sku).await {
        Ok(Retirement::Retiring) => {
            // This engine refuses from memory at once; the others at their next reload.
            state.admission.forget(&sku);
            SkuStatus::Retiring
        }
        Ok(Retirement::Retired) => {
            state.admission.forget(&sku);
            SkuStatus::Retired
        }
        Err(StoreError::UnknownSku) if super::retired::is_retired(state, &sku).await => {
            SkuStatus::Retired
        }
        Err(error) => return Err(error.into()),
    };
    Ok(RetirementView {
        sku: sku.to_string(),
        status,
    })
}
