//! The reconciler and the audit against a real `redis-server`, a real SQLite file and a
//! real PostgreSQL, each started by the test.

mod backlog;
mod crash;
mod postgres;
mod reconcile;
mod retire;
mod sale;
#[path = "../http/support.rs"]
mod support;
