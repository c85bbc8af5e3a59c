//! The values the store takes and gives.

use std::time::Duration;

use crate::ids::{CallerName, CartId, HoldOrigin, IdempotencyKey, ReservationId, Sku, UserId};
use crate::sharding::MAX_SHARDS;

use super::StoreError;

/// Longest hold a SKU may give: a day.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// Most units one SKU may hold, loaded plus restocked: far beyond any sale, far inside the
/// 2^53 that Lua numbers count exactly.
pub const MAX_STOCK: u64 = 1_000_000_000_000;
/// Highest per-user limit.
pub const MAX_PER_USER_LIMIT: u32 = 1_000_000;

/// What an operator loads a SKU with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuSpec {
    /// Units on sale.
    pub stock: u64,
    /// Shard count; `None` picks [`crate::sharding::default_shards`] for the stock.
    pub shards: Option<u16>,
    /// Units one user may hold or buy in total.
    pub per_user_limit: u32,
    /// How long a hold lasts before its units go back.
    pub hold: Duration,
    /// Reserves before this instant (ms since the Unix epoch) are refused.
    pub starts_at_ms: Option<u64>,
    /// Reserves from this instant (ms since the Unix epoch) on are refused.
    pub ends_at_ms: Option<u64>,
}

impl SkuSpec {
    /// `stock` units, one per user, holds of ten minutes, no sale window.
    pub fn new(stock: u64) -> Self {
        Self {
            stock,
            shards: None,
            per_user_limit: 1,
            hold: Duration::from_secs(600),
            starts_at_ms: None,
            ends_at_ms: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let bad = |why: &str| Err(StoreError::InvalidSpec(why.to_owned()));
        if self.stock > MAX_STOCK {
            return bad("stock is too large");
        }
        if self.shards.is_some_and(|n| n == 0 || n > MAX_SHARDS) {
            return bad("shards must be between 1 and 1024");
        }
        if self.per_user_limit == 0 || self.per_user_limit > MAX_PER_USER_LIMIT {
            return bad("per_user_limit must be between 1 and 1000000");
        }
        if self.hold.as_millis() == 0 || self.hold > MAX_HOLD {
            return bad("hold must be between 1 ms and 24 h");
        }
        if let (Some(start), Some(end)) = (self.starts_at_ms, self.ends_at_ms) {
            if start >= end {
                return bad("the sale must start before it ends");
            }
        }
        Ok(())
    }
}

/// A loaded SKU's configuration, as the engine routes by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuConfig {
    /// The SKU.
    pub sku: Sku,
    /// Its shard count: users are routed over shards `0..shards`.
    pub shards: u16,
    /// The most shards it ever had (a replace may lower the count): shards
    /// `shards..ever_shards` hold nothing new, but their streams, holds and counters are
    /// settled, swept, totalled and audited like the others.
    pub ever_shards: u16,
    /// Units it was loaded with.
    pub stock: u64,
    /// Units one user may hold or buy.
    pub per_user_limit: u32,
    /// Hold length.
    pub hold: Duration,
    /// Sale window start, ms since the Unix epoch.
    pub starts_at_ms: Option<u64>,
    /// Sale window end, ms since the Unix epoch.
    pub ends_at_ms: Option<u64>,
}

/// What a load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// The SKU is new.
    Created,
    /// The SKU existed, had no holds, sales or barriers, and was replaced.
    Replaced,
}

/// A reserve request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// What to reserve.
    pub sku: Sku,
    /// Who reserves.
    pub user: UserId,
    /// How many units.
    pub quantity: u32,
    /// The client's idempotency key.
    pub key: IdempotencyKey,
    /// The named caller making it (recorded in the hold: only it may act on the hold).
    pub caller: Option<CallerName>,
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldState {
    /// Units held until the deadline.
    Held,
    /// Sold.
    Confirmed,
    /// Cancelled; the units went back.
    Cancelled,
    /// The deadline passed unconfirmed; the units go back (see the store's docs on late
    /// confirms).
    Expired,
}

impl HoldState {
    /// The state's name in the API and the events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Decodes the one-letter state of a stored hold; a held hold whose deadline has
    /// passed reads as expired even before a script has returned its units.
    pub(crate) fn decode(letter: &str, deadline_ms: u64, now_ms: u64) -> Option<Self> {
        Some(match letter {
            "h" if now_ms >= deadline_ms => Self::Expired,
            "h" => Self::Held,
            "c" => Self::Confirmed,
            "x" => Self::Cancelled,
            "e" => Self::Expired,
            _ => return None,
        })
    }
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its id.
    pub id: ReservationId,
    /// The user who holds it.
    pub user: UserId,
    /// Units.
    pub quantity: u32,
    /// Where it stands.
    pub state: HoldState,
    /// When the hold expires (or expired), ms since the Unix epoch, by Redis's clock.
    pub deadline_ms: u64,
    /// What made it: an idempotency key, or a cart (a cart's line).
    pub origin: HoldOrigin,
    /// The named caller that made it, if one did.
    pub caller: Option<CallerName>,
}

impl Reservation {
    /// The SKU it belongs to.
    pub fn sku(&self) -> &Sku {
        self.id.sku()
    }
}

/// The outcome of a reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The reservation, new or the original one for a repeated key.
    pub reservation: Reservation,
    /// Whether the key had made it before (an idempotent repeat).
    pub replayed: bool,
}

/// A SKU's units summed over its shards, read in one atomic step on a single Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Units that can be reserved now.
    pub available: u64,
    /// Units held by unexpired, unconfirmed holds (and expired ones not yet swept).
    pub held: u64,
    /// Units sold.
    pub sold: u64,
    /// Units loaded.
    pub loaded: u64,
    /// Units added by restocks.
    pub restocked: u64,
    /// Units taken out of one shard and not yet put into another.
    pub in_transit: u64,
    /// Whether a repair fences any of its shards.
    pub fenced: bool,
}

impl Totals {
    /// Conservation: every unit ever put in is available, held, sold or in transit.
    pub fn conserved(&self) -> bool {
        self.loaded + self.restocked == self.available + self.held + self.sold + self.in_transit
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Holds expired.
    pub expired: u64,
    /// Whether due holds remain because the work bound was reached.
    pub more: bool,
}

/// Most lines a cart may have.
pub const MAX_CART_LINES: usize = 16;

/// One line of a cart request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLineRequest {
    /// What to reserve.
    pub sku: Sku,
    /// How many units.
    pub quantity: u32,
}

/// A cart request: several SKUs, held all together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRequest {
    /// Who reserves.
    pub user: UserId,
    /// The client's idempotency key for the whole cart.
    pub key: IdempotencyKey,
    /// 1 to [`MAX_CART_LINES`] lines, each SKU at most once.
    pub lines: Vec<CartLineRequest>,
    /// The named caller making it (recorded in the cart and its lines).
    pub caller: Option<CallerName>,
}

/// Where a cart stands (see `lua/cart.lua`). Only `Held`, `Confirmed`, `Cancelled` and
/// `Expired` are outcomes; the others are steps on the way to one, which the engine or,
/// after a crash, the maintenance pass finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CartState {
    /// Its record is written; its lines are being taken.
    Opening,
    /// Every line is held, until the cart's deadline.
    Held,
    /// Its lines are being confirmed.
    Confirming,
    /// Every line is sold.
    Confirmed,
    /// Its lines are being cancelled.
    Cancelling,
    /// Every line was cancelled; the units went back.
    Cancelled,
    /// Its deadline passed unconfirmed; its lines are being returned.
    Expiring,
    /// Every line expired; the units went back.
    Expired,
    /// A line was refused (or the engine that opened it was lost): the lines taken are
    /// being returned.
    RollingBack,
    /// Nothing of it is held; its key may make a cart again.
    RolledBack,
}

impl CartState {
    /// The state's name in the API and in the cart's record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opening => "opening",
            Self::Held => "held",
            Self::Confirming => "confirming",
            Self::Confirmed => "confirmed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Expiring => "expiring",
            Self::Expired => "expired",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Reads a record's state.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Opening,
            Self::Held,
            Self::Confirming,
            Self::Confirmed,
            Self::Cancelling,
            Self::Cancelled,
            Self::Expiring,
            Self::Expired,
            Self::RollingBack,
            Self::RolledBack,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub quantity: u32,
    /// The line's hold, readable as a reservation (its origin names the cart).
    pub reservation: ReservationId,
}

/// One cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    /// Its id.
    pub id: CartId,
    /// The user who holds it.
    pub user: UserId,
    /// The idempotency key that made it.
    pub key: IdempotencyKey,
    /// Where it stands. A held cart past its deadline reads as expired even before the
    /// maintenance pass has returned its units.
    pub state: CartState,
    /// When its lines expire, all together, ms since the Unix epoch, by Redis's clock.
    pub deadline_ms: u64,
    /// Its lines, in SKU order (the order they are taken in).
    pub lines: Vec<CartLine>,
    /// The named caller that made it, if one did.
    pub caller: Option<CallerName>,
}

/// The outcome of opening a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartOpened {
    /// The cart, held; or, for a repeated key, the original cart as it is now.
    pub cart: Cart,
    /// Whether the key had made this cart before.
    pub replayed: bool,
}

/// Why one line of a cart was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRefusal {
    /// The line's SKU.
    pub sku: Sku,
    /// The refusal's stable code, as a single reserve of the line would have had it.
    pub code: &'static str,
    /// What it means.
    pub detail: String,
}

/// How many entries of each kind the store keeps in memory for SKUs (see
/// [`crate::store::Store::tracked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedByStore {
    /// Cached configurations: one per loaded SKU in use.
    pub configs: usize,
    /// SKUs with reserve queues.
    pub queues: usize,
    /// Refill locks, one per (SKU, shard) that ran short.
    pub refill_locks: usize,
}

/// One shard's units, as the sale page draws them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ShardUnits {
    /// The shard.
    pub shard: u16,
    /// Units it was given: its part of the load, restocks, and what moved in, less what
    /// moved out.
    pub stock: u64,
    /// Units available there now.
    pub available: u64,
    /// Units held there.
    pub held: u64,
    /// Units sold there.
    pub sold: u64,
    /// Whether a repair fences it.
    pub fenced: bool,
}
