//! Answers for retired SKUs, from the ledger: once a SKU is retired nothing of it is left in
//! Redis, and its record, reservations included, is the ledger's. Without a ledger (or
//! while it is not connected) there is nothing to answer from: the caller's 404 stands.

use super::reservations::{ReservationStatus, ReservationView};
use super::skus::{SettledView, SkuStatus, SkuView};
use super::{rfc3339, AppState};
use crate::ids::{ReservationId, Sku};
use crate::ledger::{LedgerError, LedgerRepo};

/// The ledger's view of `sku` if the ledger says it is retired.
pub(super) async fn sku_view(state: &AppState, sku: &Sku) -> Option<SkuView> {
    let ledger = state.ledger.get()?;
    let found = async {
        if ledger.retired(sku.as_str()).await?.is_none() {
            return Ok::<_, LedgerError>(None);
        }
        let rules = ledger
            .skus()
            .await?
            .into_iter()
            .find(|s| s.sku == sku.as_str());
        let f = ledger.figures(sku.as_str()).await?;
        let nonzero = |ms: u64| (ms > 0).then(|| rfc3339(ms));
        Ok(Some(SkuView {
            sku: sku.to_string(),
            stock: f.stock,
            available: f.available(),
            held: f.held,
            sold: f.sold,
            per_user_limit: rules.as_ref().map_or(0, |r| r.per_user_limit),
            hold_seconds: rules.as_ref().map_or(0.0, |r| r.hold_ms as f64 / 1000.0),
            shards: rules.as_ref().map_or(0, |r| r.shards),
            starts_at: rules.as_ref().and_then(|r| nonzero(r.starts_at_ms)),
            ends_at: rules.as_ref().and_then(|r| nonzero(r.ends_at_ms)),
            status: SkuStatus::Retired,
            settled: Some(SettledView::from(&f)),
        }))
    };
    match found.await {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(%error, %sku, "ledger unavailable for a retired sku");
            None
        }
    }
}

/// Whether the ledger says `sku` is retired (false without a ledger, or when it fails).
pub(super) async fn is_retired(state: &AppState, sku: &Sku) -> bool {
    let Some(ledger) = state.ledger.get() else {
        return false;
    };
    match ledger.retired(sku.as_str()).await {
        Ok(at) => at.is_some(),
        Err(error) => {
            tracing::warn!(%error, %sku, "ledger unavailable for a retired sku");
            false
        }
    }
}

/// The ledger's record of reservation `id` if its SKU is retired, and the caller that
/// made it.
pub(super) async fn reservation_view(
    state: &AppState,
    id: &ReservationId,
) -> Option<(ReservationView, Option<String>)> {
    let ledger = state.ledger.get()?;
    let sku = id.sku();
    let found = async {
        if ledger.retired(sku.as_str()).await?.is_none() {
            return Ok::<_, LedgerError>(None);
        }
        let Some(r) = ledger.reservation(id.as_str()).await? else {
            return Ok(None);
        };
        let status = match r.state.as_str() {
            "confirmed" => ReservationStatus::Confirmed,
            "cancelled" => ReservationStatus::Cancelled,
            "expired" => ReservationStatus::Expired,
            _ => ReservationStatus::Held,
        };
        let view = ReservationView {
            reservation_id: r.rid,
            sku: sku.to_string(),
            user_id: r.user,
            quantity: r.quantity,
            status,
            expires_at: rfc3339(r.deadline_ms.unwrap_or(0)),
            cart_id: r
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix('#'))
                .map(str::to_owned),
            retired: true,
        };
        Ok(Some((view, r.caller)))
    };
    match found.await {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(%error, %id, "ledger unavailable for a retired sku's reservation");
            None
        }
    }
}
