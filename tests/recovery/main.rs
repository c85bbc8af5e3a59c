//! Regression tests of recovery: stock moves cut short, SKUs replaced, shards restored
//! from the ledger after Redis lost its data, and engines with stale caches, each against
//! a real `redis-server` and a real SQLite ledger of the test's own.

mod sequences;
mod support;
