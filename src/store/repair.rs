//! The scripts a repair calls (see `src/recovery/`): its lease, the fence on each shard,
//! reading a shard whole, and rebuilding it from the ledger.

use std::collections::HashMap;
use std::time::Duration;

use super::records::{is_hold_field, is_user_field, rid_of};
use super::{HoldRecord, KeyEntry, SkuConfig, Store, StoreError, UserRecord};
use crate::ids::{random_token, Sku};
use crate::ledger::MoveOut;
use crate::scripts::ScriptCode;

/// Everything a shard holds, read field by field (a fenced shard does not change meanwhile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Hold records by reservation id, each with what made it: its idempotency key (from
    /// its user's record), or `#<cart id>` for a cart's line.
    pub holds: Vec<(String, HoldRecord, String)>,
    /// Users' records by user id: allowances, keys and barriers.
    pub users: Vec<(String, UserRecord)>,
}

/// A SKU's rules, as every shard keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardRules {
    /// Units one user may hold or buy.
    pub per_user_limit: u32,
    /// Hold length, ms.
    pub hold_ms: u64,
    /// Sale start, ms since the epoch, 0 for none.
    pub starts_at_ms: u64,
    /// Sale end, ms since the epoch, 0 for none.
    pub ends_at_ms: u64,
    /// The SKU's shard count, which every routed call is checked against.
    pub shards: u16,
}

/// A shard as the ledger says it must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardImage {
    /// The SKU's rules.
    pub rules: ShardRules,
    /// Units available in the shard.
    pub available: u64,
    /// Units held by its holds.
    pub held: u64,
    /// Units sold from it.
    pub sold: u64,
    /// Reservations and barriers recorded in the shard.
    pub made: u64,
    /// The last stream position the ledger settled for the shard, (ms, seq): the shard's
    /// stream hands out only later ids after the restore.
    pub settled_up_to: (u64, u64),
    /// Moves out of the shard whose units have not arrived: restored as pending, so that
    /// they are completed once.
    pub pending: Vec<MoveOut>,
    /// Field and value pairs: allowances, idempotency records and barriers, hold records,
    /// restock op and move records.
    pub fields: Vec<(String, String)>,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The shard is as the image says.
    Restored,
    /// Another repairer took the fence over: nothing written.
    FenceLost,
    /// The shard's version moved since it was fenced: nothing written.
    Changed,
}

impl Store {
    /// Takes the SKU's repair lease for `ttl` if no repair of this Redis run holds it.
    /// Returns the owner token (`<run id>/<random>`) if taken.
    pub async fn take_lease(&self, sku: &Sku, ttl: Duration) -> Result<Option<String>, StoreError> {
        let (run_id, _) = self.redis_identity().await?;
        let owner = format!("{run_id}/{}", random_token());
        let taken: i64 = self
            .inner
            .scripts
            .take_lease
            .key(self.inner.keys.repair_lease(sku))
            .arg(&run_id)
            .arg(&owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await?;
        Ok((taken == 1).then_some(owner))
    }

    /// Gives the lease up, if `owner` still holds it.
    pub async fn release_lease(&self, sku: &Sku, owner: &str) -> Result<(), StoreError> {
        self.inner
            .scripts
            .release_lease
            .key(self.inner.keys.repair_lease(sku))
            .arg(owner)
            .invoke_async::<i64>(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Whether a repair of this Redis run holds the SKU's lease.
    pub async fn lease_held(&self, sku: &Sku) -> Result<bool, StoreError> {
        let (run_id, _) = self.redis_identity().await?;
        let holder: Option<String> = redis::cmd("GET")
            .arg(self.inner.keys.repair_lease(sku))
            .query_async(&mut self.connection())
            .await?;
        Ok(holder.is_some_and(|h| h.starts_with(&format!("{run_id}/"))))
    }

    /// Fences a shard for `owner`; returns its version then (`-1`: it has none).
    pub async fn fence_shard(&self, sku: &Sku, shard: u16, owner: &str) -> Result<i64, StoreError> {
        let (_, version): (u64, i64) = self
            .invocation(&self.inner.scripts.fence_shard, sku, shard, false)
            .arg(owner)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(version)
    }

    /// Lifts `owner`'s fence from a shard; `false` if the fence was not (or no longer) its.
    pub async fn unfence_shard(
        &self,
        sku: &Sku,
        shard: u16,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let (_, code): (u64, i64) = self
            .invocation(&self.inner.scripts.unfence_shard, sku, shard, false)
            .arg(owner)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(StoreError::from_raw(code)? == ScriptCode::Ok)
    }

    /// Reads a shard's hold records and idempotency records.
    pub async fn shard_snapshot(&self, sku: &Sku, shard: u16) -> Result<ShardSnapshot, StoreError> {
        let hash = self.shard_keys(sku, shard).hash;
        let mut conn = self.connection();
        let mut snapshot = ShardSnapshot::default();
        let mut holds = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&hash)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for (field, value) in fields {
                if is_hold_field(&field) {
                    if let Some(hold) = HoldRecord::parse(&value) {
                        holds.push((field, hold));
                    }
                } else if is_user_field(&field) {
                    if let Some(user) = UserRecord::parse(&value) {
                        snapshot.users.push((field, user));
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let keys: HashMap<&str, &str> = snapshot
            .users
            .iter()
            .flat_map(|(_, user)| {
                user.keys.iter().filter_map(|(key, entry)| match entry {
                    KeyEntry::Hold(field) => Some((field.as_str(), key.as_str())),
                    KeyEntry::Barrier => None,
                })
            })
            .collect();
        let sku_name = sku.as_str();
        snapshot.holds = holds
            .into_iter()
            .map(|(field, hold)| {
                let origin = match &hold.cart {
                    Some(cart) => format!("#{cart}"),
                    None => keys
                        .get(field.as_str())
                        .copied()
                        .unwrap_or_default()
                        .to_owned(),
                };
                (rid_of(sku_name, shard, &field), hold, origin)
            })
            .collect();
        Ok(snapshot)
    }

    /// Rebuilds a shard `owner` fenced as `image` says, if its version is still `version`
    /// (what fencing it returned).
    pub async fn restore_shard(
        &self,
        sku: &Sku,
        shard: u16,
        owner: &str,
        version: i64,
        image: &ShardImage,
    ) -> Result<RestoreOutcome, StoreError> {
        let rules = image.rules;
        let (ms, seq) = image.settled_up_to;
        let mut call = self.invocation(&self.inner.scripts.restore_shard, sku, shard, true);
        call.arg(owner)
            .arg(version)
            .arg(rules.per_user_limit)
            .arg(rules.hold_ms)
            .arg(rules.starts_at_ms)
            .arg(rules.ends_at_ms)
            .arg(rules.shards)
            .arg(image.available)
            .arg(image.held)
            .arg(image.sold)
            .arg(image.made)
            .arg(format!("{ms}-{seq}"))
            .arg(image.pending.len());
        for pending in &image.pending {
            call.arg(&pending.id).arg(pending.to).arg(pending.units);
        }
        for (field, value) in &image.fields {
            call.arg(field).arg(value);
        }
        let (_, _, code): (u64, i64, i64) = call.invoke_async(&mut self.connection()).await?;
        match StoreError::from_raw(code)? {
            ScriptCode::Ok => Ok(RestoreOutcome::Restored),
            ScriptCode::Fenced => Ok(RestoreOutcome::FenceLost),
            ScriptCode::SkuLive => Ok(RestoreOutcome::Changed),
            other => Err(StoreError::from_code(other)),
        }
    }

    /// Writes a SKU's routing record after its shards were restored, as a load does.
    pub async fn restore_meta(&self, config: &SkuConfig) -> Result<(), StoreError> {
        self.write_meta(config).await?;
        self.reload_config(&config.sku).await?;
        Ok(())
    }
}
