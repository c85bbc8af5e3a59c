//! The store's connection: the shared multiplexed [`ConnectionManager`], which reconnects
//! by itself, plus what a dropped connection means for a flash sale.
//!
//! A dropped connection may be a Redis that restarted, and a restarted Redis may have lost
//! acknowledged writes (an append-only file synced every second, or none). So a drop marks
//! the store *suspect*: admission refuses requests until the gate task has checked the
//! Redis it now talks to against the ledger (see `gates.rs`). Reads are sent again once on
//! the new connection (they, and the store's few plain writes, are idempotent); scripts are not: the request fails with 503
//! and the client's retry, with its idempotency key, comes after the check. Timeouts are
//! not retried either: a stalled Redis must fail requests fast, not twice as slowly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Arg, Cmd, Pipeline, RedisError, RedisFuture, Value};

/// The multiplexed connection, with the store's suspect flag.
#[derive(Clone)]
pub struct StoreConnection {
    pub(super) manager: ConnectionManager,
    pub(super) suspect: Arc<AtomicBool>,
}

fn dropped(error: &RedisError) -> bool {
    !error.is_timeout() && (error.is_connection_dropped() || error.is_io_error())
}

fn is_script(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => {
            name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")
        }
        _ => false,
    }
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            match self.manager.req_packed_command(cmd).await {
                Err(error) if dropped(&error) => {
                    self.suspect.store(true, Ordering::Release);
                    if is_script(cmd) {
                        Err(error)
                    } else {
                        self.manager.req_packed_command(cmd).await
                    }
                }
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
            match self
                .manager
                .req_packed_commands(pipeline, offset, count)
                .await
            {
                // The store's pipelines are reads or idempotent writes (a SKU's routing
                // record); stock only changes in scripts.
                Err(error) if dropped(&error) => {
                    self.suspect.store(true, Ordering::Release);
                    self.manager
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                other => other,
            }
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}
