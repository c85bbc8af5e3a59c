//! The Lua scripts in `lua/`, embedded in the binary, and the codes they return.
//!
//! Each script is `lua/prelude.lua` followed by its own file. Scripts are called by SHA
//! (`EVALSHA`); [`redis::Script`] answers `NOSCRIPT` by loading the script and calling it
//! again, which is what a restarted or failed-over Redis needs: it has lost its script cache.

use redis::Script;

const PRELUDE: &str = include_str!("../lua/prelude.lua");

macro_rules! with_prelude {
    ($file:literal) => {
        Script::new(&[PRELUDE, include_str!(concat!("../lua/", $file))].concat())
    };
}

macro_rules! alone {
    ($file:literal) => {
        Script::new(include_str!(concat!("../lua/", $file)))
    };
}

/// One compiled handle per script; cheap to share.
#[derive(Debug)]
pub struct Scripts {
    /// `lua/reserve.lua`: the Try, for a batch of requests on one shard.
    pub reserve: Script,
    /// `lua/confirm.lua`: the Confirm, late confirms included.
    pub confirm: Script,
    /// `lua/cancel.lua`: the Cancel by reservation id.
    pub cancel: Script,
    /// `lua/cancel_by_key.lua`: the Cancel by idempotency key, with its barrier.
    pub cancel_by_key: Script,
    /// `lua/sweep.lua`: bounded expiry of holds past their deadline.
    pub sweep: Script,
    /// `lua/restock.lua`: adds units to a shard, idempotent by operation id.
    pub restock: Script,
    /// `lua/load_shard.lua`: loads or replaces a shard that is not live.
    pub load_shard: Script,
    /// `lua/move_out.lua`: takes units out of a donor shard into transit.
    pub move_out: Script,
    /// `lua/move_in.lua`: puts units in transit into the receiving shard.
    pub move_in: Script,
    /// `lua/restore_shard.lua`: rebuilds a fenced shard from the ledger (a repair).
    pub restore_shard: Script,
    /// `lua/fence_shard.lua`: a repair takes a shard; state-changing scripts refuse.
    pub fence_shard: Script,
    /// `lua/unfence_shard.lua`: lifts a repair's fence.
    pub unfence_shard: Script,
    /// `lua/cart_line.lua`: takes, confirms or releases one line of a cart on its shard.
    pub cart_line: Script,
    /// `lua/retire_shard.lua`: closes a shard's window and, once it holds nothing, retires it.
    pub retire_shard: Script,
    /// `lua/purge_shard.lua`: deletes a retired shard's keys once its stream is settled.
    pub purge_shard: Script,
    /// `lua/cart.lua`: a cart's record, moved on by compare-and-set (no prelude).
    pub cart: Script,
    /// `lua/take_lease.lua`: takes a SKU's repair lease (no prelude).
    pub take_lease: Script,
    /// `lua/release_lease.lua`: gives up a SKU's repair lease (no prelude).
    pub release_lease: Script,
    /// `lua/heartbeat.lua`: renews an engine's registry entry and grants its claims (no
    /// prelude).
    pub heartbeat: Script,
    /// `lua/leave.lua`: removes an engine's registry entry (no prelude).
    pub leave: Script,
}

impl Scripts {
    /// Every script, ready to call.
    pub fn new() -> Self {
        Self {
            reserve: with_prelude!("reserve.lua"),
            confirm: with_prelude!("confirm.lua"),
            cancel: with_prelude!("cancel.lua"),
            cancel_by_key: with_prelude!("cancel_by_key.lua"),
            sweep: with_prelude!("sweep.lua"),
            restock: with_prelude!("restock.lua"),
            load_shard: with_prelude!("load_shard.lua"),
            move_out: with_prelude!("move_out.lua"),
            move_in: with_prelude!("move_in.lua"),
            restore_shard: with_prelude!("restore_shard.lua"),
            fence_shard: with_prelude!("fence_shard.lua"),
            unfence_shard: with_prelude!("unfence_shard.lua"),
            cart_line: with_prelude!("cart_line.lua"),
            retire_shard: with_prelude!("retire_shard.lua"),
            purge_shard: with_prelude!("purge_shard.lua"),
            cart: alone!("cart.lua"),
            take_lease: alone!("take_lease.lua"),
            release_lease: alone!("release_lease.lua"),
            heartbeat: alone!("heartbeat.lua"),
            leave: alone!("leave.lua"),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// A script's result code: the table at the top of `lua/prelude.lua`, in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptCode {
    /// Done now.
    Ok,
    /// Done before: the original result, unchanged.
    Replayed,
    /// This shard has too few available units.
    ShardEmpty,
    /// The user's allowance would exceed the per-user limit.
    Limit,
    /// Before the sale window.
    NotStarted,
    /// After the sale window.
    Ended,
    /// The shard was never loaded.
    NoSku,
    /// Quantity out of range.
    BadQty,
    /// The idempotency key was used with other parameters.
    KeyReused,
    /// The idempotency key is barred by a cancel.
    KeyCancelled,
    /// No such reservation.
    NotFound,
    /// The reservation was cancelled.
    Cancelled,
    /// The reservation was confirmed.
    Confirmed,
    /// The reservation expired and its units could not be taken again.
    Expired,
    /// The SKU has holds, sales or barriers and cannot be replaced.
    SkuLive,
    /// The proposed reservation id exists already.
    DuplicateId,
    /// A load replaced an earlier one.
    Replaced,
    /// A repair owns the shard: nothing changed.
    Fenced,
    /// The caller routed by another shard count than the shard was loaded for.
    StaleRoute,
    /// The hold is a cart's line: only its cart confirms or cancels it.
    CartLine,
    /// The user has recorded as many idempotency keys in the SKU as one may.
    TooManyKeys,
    /// Another named caller made the reservation.
    NotOwner,
}

impl ScriptCode {
    /// The code for a script's integer, or `None` for one no script returns.
    pub fn from_i64(code: i64) -> Option<Self> {
        use ScriptCode::*;
        const ALL: [ScriptCode; 22] = [
            Ok,
            Replayed,
            ShardEmpty,
            Limit,
            NotStarted,
            Ended,
            NoSku,
            BadQty,
            KeyReused,
            KeyCancelled,
            NotFound,
            Cancelled,
            Confirmed,
            Expired,
            SkuLive,
            DuplicateId,
            Replaced,
            Fenced,
            StaleRoute,
            CartLine,
            TooManyKeys,
            NotOwner,
        ];
        usize::try_from(code).ok().and_then(|i| ALL.get(i).copied())
    }
}

/// One reservation as a script reports it: `{code, rid, state, user, qty, deadline, key,
/// caller}` (`key` is the hold's origin field, `caller` empty for none); `rid` is empty when
/// the reply concerns no reservation.
pub type RawHold = (i64, String, String, String, u64, u64, String, String);

/// `reserve.lua`'s reply to one request: `{code, rid, state, qty, deadline, caller}` (the
/// user and the key are the request's).
pub type RawReserve = (i64, String, String, u64, u64, String);

#[cfg(test)]
mod tests {
    use super::*;

    /// The prelude's table and the enum must agree: each constant's value is its position.
    #[test]
    fn codes_match_the_prelude() {
        let names = [
            ("OK", ScriptCode::Ok),
            ("REPLAYED", ScriptCode::Replayed),
            ("SHARD_EMPTY", ScriptCode::ShardEmpty),
            ("LIMIT", ScriptCode::Limit),
            ("NOT_STARTED", ScriptCode::NotStarted),
            ("ENDED", ScriptCode::Ended),
            ("NO_SKU", ScriptCode::NoSku),
            ("BAD_QTY", ScriptCode::BadQty),
            ("KEY_REUSED", ScriptCode::KeyReused),
            ("KEY_CANCELLED", ScriptCode::KeyCancelled),
            ("NOT_FOUND", ScriptCode::NotFound),
            ("CANCELLED", ScriptCode::Cancelled),
            ("CONFIRMED", ScriptCode::Confirmed),
            ("EXPIRED", ScriptCode::Expired),
            ("SKU_LIVE", ScriptCode::SkuLive),
            ("DUPLICATE_ID", ScriptCode::DuplicateId),
            ("REPLACED", ScriptCode::Replaced),
            ("FENCED", ScriptCode::Fenced),
            ("STALE_ROUTE", ScriptCode::StaleRoute),
            ("CART_LINE", ScriptCode::CartLine),
            ("TOO_MANY_KEYS", ScriptCode::TooManyKeys),
            ("NOT_OWNER", ScriptCode::NotOwner),
        ];
        let declared = parse_prelude_codes(PRELUDE);
        assert_eq!(declared.len(), names.len(), "{declared:?}");
        for (name, code) in names {
            let value = declared
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} not declared in prelude.lua"))
                .1;
            assert_eq!(ScriptCode::from_i64(value), Some(code), "{name}");
        }
        assert_eq!(ScriptCode::from_i64(-1), None);
        assert_eq!(ScriptCode::from_i64(22), None);
    }

    /// Reads `local A, B = 0, 1` lines of upper-case names from the prelude.
    fn parse_prelude_codes(lua: &str) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for line in lua.lines() {
            let Some(rest) = line.strip_prefix("local ") else {
                continue;
            };
            let Some((names, values)) = rest.split_once(" = ") else {
                continue;
            };
            let names: Vec<_> = names.split(", ").collect();
            if !names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            {
                continue;
            }
            let values: Vec<_> = values
                .split(", ")
                .map(|v| v.trim().parse::<i64>())
                .collect();
            if values.len() != names.len() || values.iter().any(|v| v.is_err()) {
                continue;
            }
            for (n, v) in names.into_iter().zip(values) {
                out.push((n.to_owned(), v.unwrap()));
            }
        }
        out
    }
}
