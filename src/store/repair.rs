//! Reading a shard whole, and rebuilding it: what the audit needs to compare Redis with
//! the ledger and to repair Redis from it.

use super::{SkuConfig, Store, StoreError};
use crate::ids::Sku;
use crate::scripts::ScriptCode;

/// Everything a shard holds, read field by field (not atomically: for a quiet shard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// The shard's `:made` counter; `None` if the shard does not exist.
    pub made: Option<i64>,
    /// Hold records: reservation id -> `<state>|<user>|<qty>|<deadline>|<key>`.
    pub holds: Vec<(String, String)>,
    /// Idempotency records: `<user>:<key>` -> reservation id, or `!` for a barrier.
    pub keys: Vec<(String, String)>,
}

/// A shard as the ledger says it must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardImage {
    /// Per-user limit, hold ms, sale window (0 = open), shard count.
    pub rules: (u32, u64, u64, u64, u16),
    /// Available, held and sold units.
    pub units: (u64, u64, u64),
    /// Reservations and barriers recorded in the shard.
    pub made: u64,
    /// Field and value pairs: allowances, idempotency records, hold records.
    pub fields: Vec<(String, String)>,
}

impl Store {
    /// Reads a shard's `:made` counter, hold records and idempotency records.
    pub async fn shard_snapshot(&self, sku: &Sku, shard: u16) -> Result<ShardSnapshot, StoreError> {
        let hash = self.shard_keys(sku, shard).hash;
        let mut conn = self.connection();
        let made: Option<i64> = redis::cmd("HGET")
            .arg(&hash)
            .arg(":made")
            .query_async(&mut conn)
            .await?;
        let mut snapshot = ShardSnapshot {
            made,
            ..ShardSnapshot::default()
        };
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
                if field.contains('~') {
                    snapshot.holds.push((field, value));
                } else if !field.starts_with(':') && field.contains(':') {
                    snapshot.keys.push((field, value));
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(snapshot)
    }

    /// Rebuilds a shard as `image` says, if its `:made` counter is still `expected_made`
    /// (`None`: the shard was absent). Returns `false` when the shard changed meanwhile and
    /// nothing was written.
    pub async fn restore_shard(
        &self,
        sku: &Sku,
        shard: u16,
        expected_made: Option<i64>,
        image: &ShardImage,
    ) -> Result<bool, StoreError> {
        let (limit, hold_ms, starts, ends, shards) = image.rules;
        let (avail, held, sold) = image.units;
        let mut call = self.invocation(&self.inner.scripts.restore_shard, sku, shard, true);
        call.arg(expected_made.unwrap_or(-1))
            .arg(limit)
            .arg(hold_ms)
            .arg(starts)
            .arg(ends)
            .arg(shards)
            .arg(avail)
            .arg(held)
            .arg(sold)
            .arg(image.made);
        for (field, value) in &image.fields {
            call.arg(field).arg(value);
        }
        let (_, _, code): (u64, i64, i64) = call.invoke_async(&mut self.connection()).await?;
        match StoreError::from_raw(code)? {
            ScriptCode::Ok => Ok(true),
            ScriptCode::SkuLive => Ok(false),
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
