//! The expiry sweep: holds past their deadline back on sale.

use super::{Store, StoreError, SweepReport, SWEEP_BATCH};
use crate::ids::Sku;
use crate::scripts::ScriptCode;

impl Store {
    /// Expires the holds of `sku` whose deadline has passed, oldest first, at most
    /// `max_per_shard` index entries per shard.
    pub async fn sweep(&self, sku: &Sku, max_per_shard: u32) -> Result<SweepReport, StoreError> {
        let config = self.config(sku).await?;
        let mut report = SweepReport::default();
        for shard in 0..config.ever_shards {
            let shard_report = self.sweep_shard(sku, shard, max_per_shard).await?;
            report.expired += shard_report.expired;
            report.more |= shard_report.more;
        }
        if report.expired > 0 {
            self.units_returned(sku);
        }
        Ok(report)
    }

    pub(super) async fn sweep_shard(
        &self,
        sku: &Sku,
        shard: u16,
        max: u32,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let mut left = max;
        while left > 0 {
            let batch = left.min(SWEEP_BATCH);
            let (_, _, expired, more, code): (u64, i64, u64, u8, i64) = self
                .invocation(&self.inner.scripts.sweep, sku, shard, false)
                .arg(batch)
                .invoke_async(&mut self.connection())
                .await?;
            if StoreError::from_raw(code)? == ScriptCode::Fenced {
                return Err(StoreError::Recovering);
            }
            report.expired += expired;
            report.more = more == 1;
            left -= batch;
            if !report.more {
                break;
            }
        }
        Ok(report)
    }
}
