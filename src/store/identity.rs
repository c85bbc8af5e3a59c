//! Which Redis answers: the run id the identity check compares with the ledger's last check.

use super::{parse, Store, StoreError};

impl Store {
    /// This Redis's run id (new at every restart) and the run id the engines last checked
    /// against the ledger, if any. On a cluster the identity is every master's run id,
    /// sorted: a failover puts a replica with another run id in a master's place, and a
    /// replica may not have had the last writes, so it too takes the SKUs through the
    /// repair protocol. A reshard moves slots between the same masters and changes nothing.
    pub async fn redis_identity(&self) -> Result<(String, Option<String>), StoreError> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let answers = self.connection().on_every_master(&info).await?;
        let mut run_ids = answers
            .into_iter()
            .map(|(node, answer)| {
                let text: String = parse(answer)?;
                text.lines()
                    .find_map(|line| line.strip_prefix("run_id:"))
                    .map(|id| id.trim().to_owned())
                    .ok_or_else(|| {
                        StoreError::Protocol(format!("INFO server of {node:?} has no run_id"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        run_ids.sort();
        let marker: Option<String> = redis::cmd("GET")
            .arg(self.inner.keys.identity())
            .query_async(&mut self.connection())
            .await?;
        Ok((run_ids.join(","), marker))
    }

    /// Records that this Redis (by run id) was checked against the ledger.
    pub async fn mark_identity(&self, run_id: &str) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.inner.keys.identity())
            .arg(run_id)
            .exec_async(&mut self.connection())
            .await?;
        Ok(())
    }
}
