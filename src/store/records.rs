//! The records a shard hash keeps per user and per hold, as `lua/prelude.lua` writes them:
//! the one place on this side that reads or writes their text (reads of a hold, the keys a
//! closed SKU recorded, a repair's snapshot and its rebuild).
//!
//! One reservation costs two fields, for as long as the SKU lives: its user's record (units
//! and the user's keys, one field however many holds the user has) and its hold record
//! under the last 21 characters of its id (`~<token>`: the shard's tag says the rest).

/// Idempotency keys (reserves' and cancels' by key) one user may record in one SKU: it
/// bounds the user's record, which every call for the user reads whole. `maxKeys` in
/// `lua/prelude.lua`.
pub const MAX_KEYS_PER_USER: usize = 16;

/// Characters of a reservation id that name its hold in the shard: `~` and its token.
const HOLD_FIELD_LEN: usize = 21;

/// The field of a reservation's hold record: the id's last 21 characters, `~<token>`.
pub fn hold_field(rid: &str) -> &str {
    &rid[rid.len().saturating_sub(HOLD_FIELD_LEN)..]
}

/// The reservation id of the hold under `field` in `shard` of `sku`.
pub fn rid_of(sku: &str, shard: u16, field: &str) -> String {
    format!("{sku}~{shard}{field}")
}

/// Whether a shard field is a hold record (counters start with `:`, users with an id
/// character).
pub fn is_hold_field(field: &str) -> bool {
    field.starts_with('~')
}

/// Whether a shard field is a user's record.
pub fn is_user_field(field: &str) -> bool {
    !field.starts_with(':') && !field.starts_with('~')
}

/// What a user's record names under one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEntry {
    /// The key made the hold under this field (`~<token>`).
    Hold(String),
    /// A cancel by key found no reservation and barred the key.
    Barrier,
}

/// A user's record in a shard: `<units>` then `|<key>=<entry>` per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    /// Units the user holds or bought in the shard.
    pub units: u64,
    /// The user's keys, in the order they were recorded.
    pub keys: Vec<(String, KeyEntry)>,
}

impl UserRecord {
    /// Reads a record as the scripts write it; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let units = parts.next()?.parse().ok()?;
        let keys = parts
            .map(|part| {
                let (key, entry) = part.split_once('=')?;
                let entry = match entry {
                    "!" => KeyEntry::Barrier,
                    field if is_hold_field(field) => KeyEntry::Hold(field.to_owned()),
                    _ => return None,
                };
                Some((key.to_owned(), entry))
            })
            .collect::<Option<_>>()?;
        Some(Self { units, keys })
    }

    /// The record as the scripts read it.
    pub fn format(&self) -> String {
        let mut text = self.units.to_string();
        for (key, entry) in &self.keys {
            text.push('|');
            text.push_str(key);
            text.push('=');
            text.push_str(match entry {
                KeyEntry::Hold(field) => field,
                KeyEntry::Barrier => "!",
            });
        }
        text
    }

    /// The key that made the hold under `field`, if this user's record names it.
    pub fn key_of(&self, field: &str) -> Option<&str> {
        self.keys.iter().find_map(|(key, entry)| match entry {
            KeyEntry::Hold(f) if f == field => Some(key.as_str()),
            _ => None,
        })
    }
}

/// A hold record: `<state>|<user>|<qty>|<deadline>`, then `|#<cart id>` for a cart's line
/// and `|@<caller>` for a named caller's hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    /// The state's letter: `h`, `c`, `x` or `e`.
    pub state: String,
    /// Its user.
    pub user: String,
    /// Units (0 for the tombstone of a cart's line released before it was taken).
    pub quantity: u64,
    /// Its deadline, ms since the epoch.
    pub deadline_ms: u64,
    /// The cart it is a line of.
    pub cart: Option<String>,
    /// The named caller that made it.
    pub caller: Option<String>,
}

impl HoldRecord {
    /// Reads a record as the scripts write it; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let mut record = Self {
            state: parts.next()?.to_owned(),
            user: parts.next()?.to_owned(),
            quantity: parts.next()?.parse().ok()?,
            deadline_ms: parts.next()?.parse().ok()?,
            cart: None,
            caller: None,
        };
        for part in parts {
            if let Some(cart) = part.strip_prefix('#') {
                record.cart = Some(cart.to_owned());
            } else if let Some(caller) = part.strip_prefix('@') {
                record.caller = Some(caller.to_owned());
            } else {
                return None;
            }
        }
        Some(record)
    }

    /// The record as the scripts read it.
    pub fn format(&self) -> String {
        let mut text = format!(
            "{}|{}|{}|{}",
            self.state, self.user, self.quantity, self.deadline_ms
        );
        if let Some(cart) = &self.cart {
            text.push_str("|#");
            text.push_str(cart);
        }
        if let Some(caller) = &self.caller {
            text.push_str("|@");
            text.push_str(caller);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_bound_is_the_prelude_s() {
        let prelude = include_str!("../../lua/prelude.lua");
        let line = format!("local maxKeys = {MAX_KEYS_PER_USER}\n");
        assert!(prelude.contains(&line), "prelude.lua must say {line:?}");
    }

    #[test]
    fn records_read_back_as_written() {
        let user = UserRecord {
            units: 2,
            keys: vec![
                (
                    "order-1".into(),
                    KeyEntry::Hold("~abcdefghijklmnopqrst".into()),
                ),
                ("order-2".into(), KeyEntry::Barrier),
            ],
        };
        assert_eq!(user.format(), "2|order-1=~abcdefghijklmnopqrst|order-2=!");
        assert_eq!(UserRecord::parse(&user.format()), Some(user.clone()));
        assert_eq!(user.key_of("~abcdefghijklmnopqrst"), Some("order-1"));
        assert_eq!(UserRecord::parse("0"), Some(UserRecord::default()));
        assert_eq!(UserRecord::parse("1|k=x"), None);

        let hold = HoldRecord {
            state: "h".into(),
            user: "ann".into(),
            quantity: 1,
            deadline_ms: 1_764_763_200_000,
            cart: Some("cart~3~abcdefghijklmnopqrst".into()),
            caller: Some("shop".into()),
        };
        let text = hold.format();
        assert_eq!(
            text,
            "h|ann|1|1764763200000|#cart~3~abcdefghijklmnopqrst|@shop"
        );
        assert_eq!(HoldRecord::parse(&text), Some(hold));
        assert_eq!(
            HoldRecord::parse("c|ann|1|5").map(|h| (h.cart, h.caller)),
            Some((None, None))
        );
        assert_eq!(
            hold_field("sale~0~abcdefghijklmnopqrst"),
            "~abcdefghijklmnopqrst"
        );
        assert_eq!(
            rid_of("sale", 0, "~abcdefghijklmnopqrst"),
            "sale~0~abcdefghijklmnopqrst"
        );
    }
}
