//! The application layer's views as `flashsale.v1` messages, and the messages' times as
//! the operations take them.

use prost_types::Timestamp;

use super::proto;
use crate::api::carts::{CartStatus, CartView};
use crate::api::reservations::{ReservationStatus, ReservationView};
use crate::api::skus::{SettledView, SkuStatus, SkuView};
use crate::api::ApiError;

/// An RFC 3339 time, as the views write them, as a `Timestamp`.
fn timestamp(text: &str) -> Option<Timestamp> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp {
        seconds: time.unix_timestamp(),
        nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
    })
}

/// A `Timestamp` given in field `field` as ms since the epoch (a time before it counts as
/// the epoch).
pub fn epoch_ms(field: &str, time: Option<Timestamp>) -> Result<Option<u64>, ApiError> {
    let Some(time) = time else {
        return Ok(None);
    };
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(ApiError::Invalid {
            code: "invalid_time",
            detail: format!("{field} must be a valid Timestamp: nanos from 0 to 999999999"),
        });
    }
    let ms = i128::from(time.seconds) * 1_000 + i128::from(time.nanos / 1_000_000);
    Ok(Some(u64::try_from(ms.max(0)).unwrap_or(u64::MAX)))
}

impl From<ReservationView> for proto::Reservation {
    fn from(view: ReservationView) -> Self {
        use proto::ReservationStatus as P;
        let status = match view.status {
            ReservationStatus::Held => P::Held,
            ReservationStatus::Confirmed => P::Confirmed,
            ReservationStatus::Cancelled => P::Cancelled,
            ReservationStatus::Expired => P::Expired,
        };
        Self {
            expires_at: timestamp(&view.expires_at),
            reservation_id: view.reservation_id,
            sku: view.sku,
            user_id: view.user_id,
            quantity: view.quantity,
            status: status.into(),
            cart_id: view.cart_id,
            retired: view.retired,
        }
    }
}

impl From<CartView> for proto::Cart {
    fn from(view: CartView) -> Self {
        use proto::CartStatus as P;
        let status = match view.status {
            CartStatus::Held => P::Held,
            CartStatus::Confirmed => P::Confirmed,
            CartStatus::Cancelled => P::Cancelled,
            CartStatus::Expired => P::Expired,
            CartStatus::Pending => P::Pending,
        };
        Self {
            expires_at: timestamp(&view.expires_at),
            cart_id: view.cart_id,
            user_id: view.user_id,
            status: status.into(),
            lines: view
                .lines
                .into_iter()
                .map(|line| proto::CartLineView {
                    sku: line.sku,
                    quantity: line.quantity,
                    reservation_id: line.reservation_id,
                })
                .collect(),
        }
    }
}

impl From<SettledView> for proto::Settled {
    fn from(view: SettledView) -> Self {
        Self {
            stock: view.stock,
            available: view.available,
            held: view.held,
            sold: view.sold,
            cancelled: view.cancelled,
            expired: view.expired,
            reservations: view.reservations,
        }
    }
}

impl From<SkuView> for proto::Sku {
    fn from(view: SkuView) -> Self {
        use proto::SkuStatus as P;
        let status = match view.status {
            SkuStatus::Scheduled => P::Scheduled,
            SkuStatus::Live => P::Live,
            SkuStatus::SoldOut => P::SoldOut,
            SkuStatus::Ended => P::Ended,
            SkuStatus::Settled => P::Settled,
            SkuStatus::Retiring => P::Retiring,
            SkuStatus::Retired => P::Retired,
        };
        Self {
            starts_at: view.starts_at.as_deref().and_then(timestamp),
            ends_at: view.ends_at.as_deref().and_then(timestamp),
            sku: view.sku,
            stock: view.stock,
            available: view.available,
            held: view.held,
            sold: view.sold,
            per_user_limit: view.per_user_limit,
            hold_seconds: view.hold_seconds,
            shards: u32::from(view.shards),
            status: status.into(),
            settled: view.settled.map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_travel_both_ways_and_bad_ones_are_refused() {
        let ts = timestamp("2026-11-27T10:00:00.250Z").unwrap();
        assert_eq!(
            epoch_ms("starts_at", Some(ts)).unwrap(),
            Some(1_795_773_600_250)
        );
        let before_epoch = Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(epoch_ms("starts_at", Some(before_epoch)).unwrap(), Some(0));
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        let error = epoch_ms("ends_at", Some(bad)).unwrap_err();
        assert_eq!(error.code(), "invalid_time");
        assert!(error.detail().starts_with("ends_at"));
    }
}
