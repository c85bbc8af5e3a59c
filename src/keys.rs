//! Redis key names. The only place that spells a key.
//!
//! All keys of one shard share the hash tag `{<sku>:<n>}` and therefore one hash slot, so a
//! script touching them is atomic on Redis Cluster too. Ids are validated before they get
//! here (see [`crate::ids`]), and the prefix is checked once, so no client input can move a
//! key to another slot or collide with another key's name.

use crate::ids::Sku;

/// Why a key prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix may contain only ASCII letters and digits and '.', '_', '-', ':' (got {0:?})")]
pub struct BadPrefix(pub String);

/// The key names under one prefix: several engines (or tests) can share a Redis under
/// different prefixes without seeing each other's data.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

/// The keys of one shard.
#[derive(Debug, Clone)]
pub struct ShardKeys {
    /// Counters, config, allowances, idempotency keys and holds.
    pub hash: String,
    /// Reservation ids by deadline, for the sweeper.
    pub deadlines: String,
    /// The shard's event stream (the outbox).
    pub events: String,
    /// Pending outgoing stock moves.
    pub moves: String,
}

/// The keys of one bucket of cart records, tagged `{cart~<bucket>}`: no SKU contains `~`,
/// so no shard shares their slot by accident.
#[derive(Debug, Clone)]
pub struct CartKeys {
    /// Cart records by cart id, and `<user>:<key>` to the cart a key made.
    pub hash: String,
    /// Sorted set: carts that are not finished, by when the maintenance pass is to look at
    /// them (a held cart's deadline; a cart between steps, the end of its lease).
    pub open: String,
}

/// The keys of the engine registry, all tagged `{engines}`.
#[derive(Debug, Clone)]
pub struct EngineKeys {
    /// Sorted set: engine id by the expiry of its entry (ms, Redis's clock).
    pub live: String,
    /// Hash: engine id to its entry (host, pid, recent demand).
    pub demand: String,
    /// Hash: engine id to its claims on the rates.
    pub claims: String,
}

impl KeySpace {
    /// Key space under `prefix` (for example `fs:`).
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if !ok {
            return Err(BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Keys of shard `shard` of `sku`.
    pub fn shard(&self, sku: &Sku, shard: u16) -> ShardKeys {
        let tag = format!("{}{{{sku}:{shard}}}", self.prefix);
        ShardKeys {
            hash: tag.clone(),
            deadlines: format!("{tag}:deadlines"),
            events: format!("{tag}:events"),
            moves: format!("{tag}:moves"),
        }
    }

    /// The SKU and shard whose stream `key` is: the inverse of [`KeySpace::shard`]'s
    /// `events` (a SKU has no `{`, `}` or `:`, so the tag splits one way only).
    pub fn events_shard(&self, key: &str) -> Option<(Sku, u16)> {
        let tag = key.strip_prefix(&self.prefix)?.strip_suffix(":events")?;
        let (sku, shard) = tag.strip_prefix('{')?.strip_suffix('}')?.rsplit_once(':')?;
        Some((Sku::new(sku).ok()?, shard.parse().ok()?))
    }

    /// The SKU's configuration (shard count and rules), read by the engine to route.
    pub fn meta(&self, sku: &Sku) -> String {
        format!("{}{{{sku}}}:meta", self.prefix)
    }

    /// The run id of the Redis the engines last checked against the ledger: a different
    /// one means Redis restarted since, and may have lost writes.
    pub fn identity(&self) -> String {
        format!("{}redis-identity", self.prefix)
    }

    /// The SKU's repair lease: the one repairer allowed to fence and rebuild its shards.
    pub fn repair_lease(&self, sku: &Sku) -> String {
        format!("{}{{{sku}}}:repair", self.prefix)
    }

    /// The engine registry (see [`crate::registry`]): live engines by expiry, their
    /// entries, and their claims on the rates. One hash tag, so one hash slot.
    pub fn engines(&self) -> EngineKeys {
        let live = format!("{}{{engines}}", self.prefix);
        EngineKeys {
            demand: format!("{live}:demand"),
            claims: format!("{live}:claims"),
            live,
        }
    }

    /// The keys of cart bucket `bucket` (see [`crate::ids::CartId`]).
    pub fn cart_bucket(&self, bucket: u16) -> CartKeys {
        let hash = format!("{}{{cart~{bucket}}}", self.prefix);
        CartKeys {
            open: format!("{hash}:open"),
            hash,
        }
    }

    /// The set of loaded SKUs, walked by the background sweeper.
    pub fn registry(&self) -> String {
        format!("{}skus", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_share_one_hash_tag() {
        let keys = KeySpace::new("fs:").unwrap();
        let shard = keys.shard(&Sku::new("tv").unwrap(), 3);
        assert_eq!(shard.hash, "fs:{tv:3}");
        for key in [&shard.deadlines, &shard.events, &shard.moves] {
            assert!(key.starts_with("fs:{tv:3}:"), "{key}");
        }
        let engines = keys.engines();
        assert_eq!(engines.live, "fs:{engines}");
        for key in [&engines.demand, &engines.claims] {
            assert!(key.starts_with("fs:{engines}:"), "{key}");
        }
        let carts = keys.cart_bucket(5);
        assert_eq!(carts.hash, "fs:{cart~5}");
        assert_eq!(carts.open, "fs:{cart~5}:open");
        assert!(KeySpace::new("a{b").is_err());
        assert!(KeySpace::new("t-1:").is_ok());
    }

    #[test]
    fn a_stream_key_names_its_sku_and_shard() {
        let keys = KeySpace::new("fs:x:").unwrap();
        let sku = Sku::new("a.b-c_d").unwrap();
        let events = keys.shard(&sku, 12).events;
        assert_eq!(keys.events_shard(&events), Some((sku.clone(), 12)));
        for other in [
            keys.shard(&sku, 12).hash,
            keys.shard(&sku, 12).moves,
            "other:{tv:1}:events".to_owned(),
            "fs:x:{tv}:events".to_owned(),
        ] {
            assert_eq!(keys.events_shard(&other), None, "{other}");
        }
    }
}
