//! The store's connection: the shared multiplexed [`RedisConnection`] (one Redis or a
//! cluster; either reconnects by itself), plus what a dropped connection means for a flash
//! sale.
//!
//! A dropped connection may be a Redis that restarted, or on a cluster a master that failed
//! over to a replica, and either may have lost acknowledged writes (an append-only file
//! synced every second, or none; a replica that had not received the last writes). So a drop marks
//! the store *suspect*: admission refuses requests until the gate task has checked the
//! Redis it now talks to against the ledger (see `gates.rs`). Reads are sent again once on
//! the new connection (they, and the store's few plain writes, are idempotent); scripts are not: the request fails with 503
//! and the client's retry, with its idempotency key, comes after the check. Timeouts are
//! not retried either: a stalled Redis must fail requests fast, not twice as slowly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::topology::{connection_lost, RedisConnection};

/// The multiplexed connection, with the store's suspect flag.
#[derive(Clone)]
pub struct StoreConnection {
    pub(super) conn: RedisConnection,
    pub(super) suspect: Arc<AtomicBool>,
}

fn is_script(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => {
            name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")
        }
        _ => false,
    }
}

impl StoreConnection {
    fn flag(&self, result: &RedisResult<impl Sized>) {
        if let Err(error) = result {
            if connection_lost(error) {
                self.suspect.store(true, Ordering::Release);
            }
        }
    }

    /// [`RedisConnection::on_node_of`], a drop raising the suspect flag. Not sent again:
    /// what it is for (`WAIT` for this connection's writes) means nothing on a new one.
    pub async fn on_node_of(&mut self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        let result = self.conn.on_node_of(key, cmd).await;
        self.flag(&result);
        result
    }

    /// [`RedisConnection::on_every_master`], a drop raising the suspect flag and the read
    /// sent again once.
    pub async fn on_every_master(&mut self, cmd: &Cmd) -> RedisResult<Vec<(String, Value)>> {
        let result = self.conn.on_every_master(cmd).await;
        self.flag(&result);
        match result {
            Err(error) if connection_lost(&error) => self.conn.on_every_master(cmd).await,
            other => other,
        }
    }
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            match self.conn.req_packed_command(cmd).await {
                Err(error) if connection_lost(&error) => {
                    self.suspect.store(true, Ordering::Release);
                    if is_script(cmd) {
                        Err(error)
                    } else {
                        self.conn.req_packed_command(cmd).await
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
            match self.conn.req_packed_commands(pipeline, offset, count).await {
                // The store's pipelines are reads or idempotent writes (a SKU's routing
                // record); stock only changes in scripts.
                Err(error) if connection_lost(&error) => {
                    self.suspect.store(true, Ordering::Release);
                    self.conn.req_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
