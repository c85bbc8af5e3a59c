//! The store's connection: the shared multiplexed [`ConnectionManager`], with one retry of a
//! command whose connection dropped under it.
//!
//! After a Redis restart or failover, the first command on the old connection fails with a
//! broken pipe while the manager reconnects. Every store call is safe to send twice: the
//! scripts are idempotent for the same arguments (a reserve carries its reservation id and
//! idempotency key, a move its move id, a restock its operation id) and the rest are reads.
//! Timeouts are not retried: a stalled Redis must fail requests fast, not twice as slowly.

use futures::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// The multiplexed connection, retrying once on a dropped connection.
#[derive(Clone)]
pub struct StoreConnection(pub(super) ConnectionManager);

fn dropped(error: &RedisError) -> bool {
    !error.is_timeout() && (error.is_connection_dropped() || error.is_io_error())
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            match self.0.req_packed_command(cmd).await {
                Err(error) if dropped(&error) => self.0.req_packed_command(cmd).await,
                other => other,
            }
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(error) if dropped(&error) => {
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}
