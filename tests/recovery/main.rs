//! Tests of recovery: stock moves cut short, SKUs replaced, shards restored from the ledger
//! after Redis lost its data, engines with stale caches, and the repair protocol's fence and
//! lease, each against a real `redis-server` and a real SQLite ledger of the test's own.

#[path = "../http/support.rs"]
mod app;
mod carts;
mod nemesis;
mod protocol;
mod sequences;
mod support;
