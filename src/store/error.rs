//! The store's error type, and the one place where script result codes become errors.

use crate::scripts::ScriptCode;

use super::{LineRefusal, MAX_STOCK};
use crate::ids::CartId;

fn cart_refusal(lines: &[LineRefusal]) -> String {
    let each: Vec<String> = lines
        .iter()
        .map(|line| format!("{}: {}", line.sku, line.detail))
        .collect();
    format!(
        "the cart was refused and nothing of it is held ({})",
        each.join("; ")
    )
}

/// Why a store operation did not do what was asked. Refusals are expected outcomes of a
/// sale; only [`StoreError::Redis`] and [`StoreError::Protocol`] are failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No unit of the SKU is available in any shard.
    #[error("no unit of this SKU is available now; held units may come back if their holds are cancelled or expire")]
    SoldOut,
    /// Fewer units are left in the whole SKU than the request wants (but some are).
    #[error("fewer units left than requested")]
    InsufficientStock,
    /// The user would hold or own more than the SKU's per-user limit.
    #[error("per-user limit exceeded")]
    LimitExceeded,
    /// The sale window has not opened.
    #[error("the sale has not started")]
    NotStarted,
    /// The sale window has closed.
    #[error("the sale has ended")]
    Ended,
    /// The SKU was never loaded.
    #[error("unknown sku")]
    UnknownSku,
    /// A quantity that is not a whole number within the operation's bound.
    #[error("{0}")]
    InvalidQuantity(QuantityBound),
    /// The idempotency key was used before with other parameters.
    #[error("idempotency key reused with other parameters")]
    KeyReused,
    /// The idempotency key is barred by an earlier cancel (TCC anti-hanging).
    #[error("idempotency key barred by an earlier cancel")]
    KeyCancelled,
    /// No such reservation.
    #[error("reservation not found")]
    NotFound,
    /// The reservation was cancelled, so it cannot be confirmed.
    #[error("reservation cancelled")]
    Cancelled,
    /// The reservation was confirmed, so it cannot be cancelled.
    #[error("reservation confirmed")]
    Confirmed,
    /// The hold expired and its units could not be taken again.
    #[error("reservation expired and its units are gone ({0})")]
    Expired(ExpiredBecause),
    /// The user has used as many idempotency keys on the SKU (reserves and cancels by key)
    /// as one may ([`crate::store::MAX_KEYS_PER_USER`]).
    #[error("this user has used {} idempotency keys on this SKU, the most one may: reuse the key of an earlier reservation to read it", crate::store::MAX_KEYS_PER_USER)]
    TooManyKeys,
    /// Another caller made the reservation (or cart): only that caller may act on it.
    #[error(
        "this reservation was made by another caller: only that caller may confirm or cancel it"
    )]
    NotOwner,
    /// The SKU has holds, sales or barriers: it can be restocked, not replaced.
    #[error("sku is live: it has holds, sales or barriers")]
    SkuLive,
    /// A retirement was asked of a SKU that holds units: they must be settled first.
    #[error("the sku has {held} units held: confirm or cancel those reservations, or wait for them to expire, then retire it")]
    HoldsOpen {
        /// Units held.
        held: u64,
    },
    /// The SKU is retiring or retired: it takes no reserve, load or restock again.
    #[error("the sku is retired (or retiring): it takes no new reservation, load or restock; its record is in the ledger")]
    Retired,
    /// A SKU specification that cannot be loaded.
    #[error("invalid sku specification: {0}")]
    InvalidSpec(String),
    /// Concurrent reserves kept taking the units moved for this one; retrying may succeed.
    #[error("stock is contended; retry")]
    Contended,
    /// A repair owns the SKU's shard (it is being rebuilt from the ledger): nothing changed;
    /// the same request shortly after will be answered.
    #[error("this SKU is being repaired from the ledger; retry shortly")]
    Recovering,
    /// A confirm is in Redis but fewer replicas than `--confirm-wait-replicas` had it when
    /// the wait ended: it is not answered as done, since a failover now could lose it. The
    /// same confirm again is answered once the replicas have it.
    #[error("the confirm is on {acked} of {wanted} replicas; retry it")]
    NotReplicated {
        /// Replicas that had it.
        acked: u32,
        /// Replicas asked for.
        wanted: u32,
    },
    /// A cart was refused: nothing of it is held. The lines named are those refused (the
    /// first one is the cart's reason); lines not named were not refused.
    #[error("{}", cart_refusal(.0))]
    CartRefused(Vec<LineRefusal>),
    /// No such cart.
    #[error("cart not found")]
    CartNotFound,
    /// The cart is between steps: being opened or rolled back, by this engine or another.
    #[error(
        "the cart is being opened or rolled back; retry shortly with the same Idempotency-Key"
    )]
    CartPending,
    /// The reservation is a line of a cart: the cart is confirmed or cancelled, not its lines.
    #[error("this reservation is a line of cart {0}: confirm or cancel the cart")]
    CartLine(CartId),
    /// The cart was confirmed, so it cannot be cancelled.
    #[error("cart confirmed")]
    CartConfirmed,
    /// The cart was cancelled, so it cannot be confirmed.
    #[error("cart cancelled")]
    CartCancelled,
    /// The cart's deadline passed before it was confirmed; its units went back.
    #[error("cart expired: its deadline passed before it was confirmed")]
    CartExpired,
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

/// The quantities an operation takes, named in its `invalid_quantity` refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityBound {
    /// A reserve: 1 to the SKU's per-user limit.
    PerUser(u32),
    /// A restock: 1 to [`MAX_STOCK`].
    Restock,
}

impl std::fmt::Display for QuantityBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PerUser(1) => f.write_str("quantity must be 1: at most 1 per user for this SKU"),
            Self::PerUser(limit) => write!(
                f,
                "quantity must be a whole number from 1 to {limit}: at most {limit} per user for this SKU"
            ),
            Self::Restock => write!(f, "quantity must be a whole number from 1 to {MAX_STOCK}"),
        }
    }
}

/// Why a late confirm failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredBecause {
    /// The units were sold to someone else.
    Stock,
    /// The user holds other units in their place, up to the limit.
    Limit,
}

impl std::fmt::Display for ExpiredBecause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stock => "no stock",
            Self::Limit => "per-user limit",
        })
    }
}

impl StoreError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::InsufficientStock => "insufficient_stock",
            Self::LimitExceeded => "limit_exceeded",
            Self::NotStarted => "sale_not_started",
            Self::Ended => "sale_ended",
            Self::UnknownSku => "sku_not_found",
            Self::InvalidQuantity(_) => "invalid_quantity",
            Self::KeyReused => "idempotency_key_reused",
            Self::KeyCancelled | Self::Cancelled => "reservation_cancelled",
            Self::NotFound => "reservation_not_found",
            Self::Confirmed => "reservation_confirmed",
            Self::Expired(_) => "reservation_expired",
            Self::TooManyKeys => "too_many_keys",
            Self::NotOwner => "not_your_reservation",
            Self::SkuLive => "sku_live",
            Self::HoldsOpen { .. } => "sku_holds_open",
            Self::Retired => "sku_retired",
            Self::InvalidSpec(_) => "invalid_sku_spec",
            Self::Recovering => "recovering",
            Self::NotReplicated { .. } => "not_replicated",
            Self::CartRefused(lines) => lines.first().map_or("cart_refused", |line| line.code),
            Self::CartNotFound => "cart_not_found",
            Self::CartPending => "cart_pending",
            Self::CartLine(_) => "cart_line",
            Self::CartConfirmed => "cart_confirmed",
            Self::CartCancelled => "cart_cancelled",
            Self::CartExpired => "cart_expired",
            Self::Contended | Self::Redis(_) | Self::Protocol(_) => "unavailable",
        }
    }

    /// The refusal a script code stands for. Codes that are not refusals (`Ok`,
    /// `Replayed`, ...) are handled by the caller and come out as protocol errors here.
    pub(crate) fn from_code(code: ScriptCode) -> Self {
        match code {
            ScriptCode::ShardEmpty => Self::SoldOut,
            ScriptCode::Limit => Self::LimitExceeded,
            ScriptCode::NotStarted => Self::NotStarted,
            ScriptCode::Ended => Self::Ended,
            ScriptCode::NoSku => Self::UnknownSku,
            // A reserve answers BAD_QTY itself, naming the SKU's limit; the other script
            // that can say it is the restock.
            ScriptCode::BadQty => Self::InvalidQuantity(QuantityBound::Restock),
            ScriptCode::KeyReused => Self::KeyReused,
            ScriptCode::KeyCancelled => Self::KeyCancelled,
            ScriptCode::NotFound => Self::NotFound,
            ScriptCode::Cancelled => Self::Cancelled,
            ScriptCode::Confirmed => Self::Confirmed,
            ScriptCode::Expired => Self::Expired(ExpiredBecause::Stock),
            ScriptCode::SkuLive => Self::SkuLive,
            ScriptCode::Fenced => Self::Recovering,
            ScriptCode::TooManyKeys => Self::TooManyKeys,
            ScriptCode::NotOwner => Self::NotOwner,
            other => Self::Protocol(format!("{other:?} is not a refusal")),
        }
    }

    /// The error for a raw script integer.
    pub(crate) fn from_raw(code: i64) -> Result<ScriptCode, Self> {
        ScriptCode::from_i64(code).ok_or_else(|| Self::Protocol(format!("unknown code {code}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_stable_code() {
        let refusals = [
            (ScriptCode::ShardEmpty, "sold_out"),
            (ScriptCode::Limit, "limit_exceeded"),
            (ScriptCode::NotStarted, "sale_not_started"),
            (ScriptCode::Ended, "sale_ended"),
            (ScriptCode::NoSku, "sku_not_found"),
            (ScriptCode::BadQty, "invalid_quantity"),
            (ScriptCode::KeyReused, "idempotency_key_reused"),
            (ScriptCode::KeyCancelled, "reservation_cancelled"),
            (ScriptCode::NotFound, "reservation_not_found"),
            (ScriptCode::Cancelled, "reservation_cancelled"),
            (ScriptCode::Confirmed, "reservation_confirmed"),
            (ScriptCode::Expired, "reservation_expired"),
            (ScriptCode::SkuLive, "sku_live"),
            (ScriptCode::Fenced, "recovering"),
            (ScriptCode::TooManyKeys, "too_many_keys"),
            (ScriptCode::NotOwner, "not_your_reservation"),
        ];
        for (code, expected) in refusals {
            assert_eq!(StoreError::from_code(code).code(), expected, "{code:?}");
        }
        for not_a_refusal in [
            ScriptCode::Ok,
            ScriptCode::Replayed,
            ScriptCode::Replaced,
            ScriptCode::DuplicateId,
            ScriptCode::StaleRoute,
        ] {
            assert!(matches!(
                StoreError::from_code(not_a_refusal),
                StoreError::Protocol(_)
            ));
        }
        assert!(StoreError::from_raw(99).is_err());
    }

    #[test]
    fn an_invalid_quantity_names_its_bound() {
        assert_eq!(
            StoreError::InvalidQuantity(QuantityBound::PerUser(5)).to_string(),
            "quantity must be a whole number from 1 to 5: at most 5 per user for this SKU"
        );
        assert_eq!(
            StoreError::InvalidQuantity(QuantityBound::PerUser(1)).to_string(),
            "quantity must be 1: at most 1 per user for this SKU"
        );
        assert_eq!(
            StoreError::InvalidQuantity(QuantityBound::Restock).to_string(),
            "quantity must be a whole number from 1 to 1000000000000"
        );
    }
}
