//! The events the scripts append to each shard's stream (the outbox), decoded.
//!
//! A stream entry is one script call: fields `sku`, `shard`, `ts` (Redis time, ms) and
//! `ev`, its events one per line, each `<kind>|<field>|...` (see `lua/prelude.lua`).
//! Replaying every entry of every shard in order rebuilds every reservation's state.

use std::collections::HashMap;

use crate::ids::{CallerName, CartId, HoldOrigin, IdempotencyKey, ReservationId, Sku, UserId};

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A shard was loaded (or replaced) with `qty` units and the SKU's rules.
    Loaded {
        /// Units put into this shard.
        qty: u64,
        /// Per-user limit.
        per_user_limit: u32,
        /// Hold length, ms.
        hold_ms: u64,
        /// Sale start, ms since the epoch, 0 for none.
        starts_at_ms: u64,
        /// Sale end, ms since the epoch, 0 for none.
        ends_at_ms: u64,
        /// Shards of the SKU.
        shards: u16,
    },
    /// A repair rebuilt the shard from the ledger; it holds `qty` units in all now
    /// (available, held and sold, plus what its pending moves carry, which the same entry
    /// records again as `moved_out` events), the new base for its counters.
    Restored {
        /// Units in the shard.
        qty: u64,
    },
    /// Units added to the shard.
    Restocked {
        /// Units.
        qty: u64,
        /// The restock's operation id.
        op: String,
    },
    /// A hold was taken.
    Reserved {
        /// The reservation.
        rid: ReservationId,
        /// Its user.
        user: UserId,
        /// Units.
        qty: u32,
        /// What made it: an idempotency key, or a cart.
        origin: HoldOrigin,
        /// When it expires, ms since the epoch.
        deadline_ms: u64,
        /// The named caller that made it, if one did.
        caller: Option<CallerName>,
    },
    /// A hold became a sale.
    Confirmed {
        /// The reservation.
        rid: ReservationId,
        /// Its user.
        user: UserId,
        /// Units.
        qty: u32,
        /// Confirmed after its deadline.
        late: bool,
    },
    /// A hold was cancelled; its units went back.
    Cancelled {
        /// The reservation.
        rid: ReservationId,
        /// Its user.
        user: UserId,
        /// Units.
        qty: u32,
    },
    /// A hold expired; its units went back.
    Expired {
        /// The reservation.
        rid: ReservationId,
        /// Its user.
        user: UserId,
        /// Units.
        qty: u32,
    },
    /// The terms of the cart whose line the `reserved` event after it takes: written with
    /// every line, so that the ledger can rebuild the cart's record (see
    /// `lua/cart_line.lua`).
    Cart {
        /// The cart.
        cart: CartId,
        /// Its user.
        user: UserId,
        /// The idempotency key that made it.
        key: IdempotencyKey,
        /// How many lines it has.
        lines: u16,
        /// When its lines expire, ms since the epoch.
        deadline_ms: u64,
    },
    /// A cancel by key found no reservation and barred the key.
    Barrier {
        /// The user.
        user: UserId,
        /// The barred key.
        key: IdempotencyKey,
    },
    /// Units left this shard for shard `to`.
    MovedOut {
        /// The move's id.
        move_id: String,
        /// Receiving shard.
        to: u16,
        /// Units.
        qty: u64,
    },
    /// Units arrived from shard `from`.
    MovedIn {
        /// The move's id.
        move_id: String,
        /// Donor shard.
        from: u16,
        /// Units.
        qty: u64,
    },
    /// The shard's sale window closed early: a retirement began (`lua/retire_shard.lua`).
    Closed {
        /// The window's new end, ms since the epoch.
        ends_at_ms: u64,
    },
    /// The shard was retired: it holds nothing and takes nothing from now on, and its keys
    /// go once this event is settled (`lua/purge_shard.lua`).
    Retired {
        /// When, ms since the epoch.
        at_ms: u64,
    },
}

/// One stream entry: the events of one script call on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id.
    pub id: String,
    /// The SKU.
    pub sku: Sku,
    /// The shard.
    pub shard: u16,
    /// Redis time of the call, ms since the epoch.
    pub ts_ms: u64,
    /// Its events, in order.
    pub events: Vec<Event>,
}

/// A stream entry that is not what the scripts write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event entry {id}: {why}")]
pub struct MalformedEvent {
    /// The entry id.
    pub id: String,
    /// What is wrong.
    pub why: String,
}

impl Entry {
    /// Decodes an entry from its id and fields.
    pub fn parse(id: &str, fields: &HashMap<String, String>) -> Result<Self, MalformedEvent> {
        let bad = |why: String| MalformedEvent {
            id: id.to_owned(),
            why,
        };
        let field = |name: &str| {
            fields
                .get(name)
                .ok_or_else(|| bad(format!("no field {name}")))
        };
        let sku = Sku::new(field("sku")?.as_str()).map_err(|e| bad(e.to_string()))?;
        let shard = field("shard")?
            .parse()
            .map_err(|_| bad("bad shard".into()))?;
        let ts_ms = field("ts")?.parse().map_err(|_| bad("bad ts".into()))?;
        let events = field("ev")?
            .lines()
            .map(|line| parse_line(line).map_err(|why| bad(format!("{why} in {line:?}"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id: id.to_owned(),
            sku,
            shard,
            ts_ms,
            events,
        })
    }
}

/// Decodes one event line.
pub fn parse_line(line: &str) -> Result<Event, String> {
    let parts: Vec<&str> = line.split('|').collect();
    let (kind, rest) = parts.split_first().ok_or("empty event")?;
    let arity = |n: usize| {
        if rest.len() == n {
            Ok(())
        } else {
            Err(format!("{kind} takes {n} fields, got {}", rest.len()))
        }
    };
    fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("bad number {s:?}"))
    }
    let rid = |s: &str| ReservationId::parse(s).map_err(|e| e.to_string());
    let user = |s: &str| UserId::new(s).map_err(|e| e.to_string());
    let key = |s: &str| IdempotencyKey::new(s).map_err(|e| e.to_string());
    Ok(match *kind {
        "loaded" => {
            arity(6)?;
            Event::Loaded {
                qty: num(rest[0])?,
                per_user_limit: num(rest[1])?,
                hold_ms: num(rest[2])?,
                starts_at_ms: num(rest[3])?,
                ends_at_ms: num(rest[4])?,
                shards: num(rest[5])?,
            }
        }
        "restored" => {
            arity(1)?;
            Event::Restored { qty: num(rest[0])? }
        }
        "restocked" => {
            arity(2)?;
            Event::Restocked {
                qty: num(rest[0])?,
                op: rest[1].to_owned(),
            }
        }
        "reserved" => {
            // A sixth field names the caller, when one was named.
            if rest.len() != 6 {
                arity(5)?;
            }
            Event::Reserved {
                rid: rid(rest[0])?,
                user: user(rest[1])?,
                qty: num(rest[2])?,
                deadline_ms: num(rest[3])?,
                origin: HoldOrigin::parse(rest[4]).map_err(|e| e.to_string())?,
                caller: rest
                    .get(5)
                    .map(|name| CallerName::new(*name))
                    .transpose()
                    .map_err(|e| e.to_string())?,
            }
        }
        "confirmed" => {
            arity(4)?;
            Event::Confirmed {
                rid: rid(rest[0])?,
                user: user(rest[1])?,
                qty: num(rest[2])?,
                late: rest[3] == "1",
            }
        }
        "cancelled" | "expired" => {
            arity(3)?;
            let (rid, user, qty) = (rid(rest[0])?, user(rest[1])?, num(rest[2])?);
            if *kind == "cancelled" {
                Event::Cancelled { rid, user, qty }
            } else {
                Event::Expired { rid, user, qty }
            }
        }
        "cart" => {
            arity(5)?;
            Event::Cart {
                cart: CartId::parse(rest[0]).map_err(|e| e.to_string())?,
                user: user(rest[1])?,
                key: key(rest[2])?,
                lines: num(rest[3])?,
                deadline_ms: num(rest[4])?,
            }
        }
        "barrier" => {
            arity(2)?;
            Event::Barrier {
                user: user(rest[0])?,
                key: key(rest[1])?,
            }
        }
        "moved_out" => {
            arity(3)?;
            Event::MovedOut {
                move_id: rest[0].to_owned(),
                to: num(rest[1])?,
                qty: num(rest[2])?,
            }
        }
        "moved_in" => {
            arity(3)?;
            Event::MovedIn {
                move_id: rest[0].to_owned(),
                from: num(rest[1])?,
                qty: num(rest[2])?,
            }
        }
        "closed" => {
            arity(1)?;
            Event::Closed {
                ends_at_ms: num(rest[0])?,
            }
        }
        "retired" => {
            arity(1)?;
            Event::Retired {
                at_ms: num(rest[0])?,
            }
        }
        other => return Err(format!("unknown event kind {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_decode_and_malformed_ones_are_refused() {
        let rid = ReservationId::generate(&Sku::new("tv").unwrap(), 2);
        let line = format!("reserved|{rid}|ann|2|1764064666123|k-1");
        assert_eq!(
            parse_line(&line).unwrap(),
            Event::Reserved {
                rid: rid.clone(),
                user: UserId::new("ann").unwrap(),
                qty: 2,
                origin: HoldOrigin::Key(IdempotencyKey::new("k-1").unwrap()),
                deadline_ms: 1_764_064_666_123,
                caller: None,
            }
        );
        assert_eq!(
            parse_line(&format!("{line}|shop")).unwrap(),
            Event::Reserved {
                rid: rid.clone(),
                user: UserId::new("ann").unwrap(),
                qty: 2,
                origin: HoldOrigin::Key(IdempotencyKey::new("k-1").unwrap()),
                deadline_ms: 1_764_064_666_123,
                caller: Some(CallerName::new("shop").unwrap()),
            }
        );
        assert_eq!(
            parse_line(&format!("confirmed|{rid}|ann|2|1")).unwrap(),
            Event::Confirmed {
                rid: rid.clone(),
                user: UserId::new("ann").unwrap(),
                qty: 2,
                late: true
            }
        );
        assert_eq!(
            parse_line("closed|1764064666123").unwrap(),
            Event::Closed {
                ends_at_ms: 1_764_064_666_123
            }
        );
        assert_eq!(
            parse_line("retired|7").unwrap(),
            Event::Retired { at_ms: 7 }
        );
        for bad in [
            String::new(),
            "reserved|x".to_owned(),
            "retired".to_owned(),
            "closed|soon".to_owned(),
            format!("confirmed|{rid}|ann|two|0"),
            format!("expired|{rid}|a:b|1"),
            "shipped|1".to_owned(),
        ] {
            assert!(parse_line(&bad).is_err(), "{bad:?}");
        }
        let fields: HashMap<String, String> = [
            ("sku", "tv"),
            ("shard", "2"),
            ("ts", "5"),
            ("ev", "restocked|3|op1\nbarrier|bob|k"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let entry = Entry::parse("1-0", &fields).unwrap();
        assert_eq!((entry.shard, entry.ts_ms, entry.events.len()), (2, 5, 2));
    }
}
