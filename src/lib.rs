//! flashsale: a flash-sale inventory reservation engine.
//!
//! A SKU's units live in Redis, split over shard counters. Every change of stock is one
//! atomic Lua script on one shard (`lua/`): reserve (a hold with a deadline), confirm,
//! cancel, cancel by idempotency key, expiry sweep, restock, and the two halves of a stock
//! move between shards. Each script appends its events to the shard's stream in the same
//! step, so that a ledger can follow every reservation.
//!
//! # Layout
//!
//! - [`api`]: the application layer: each operation once, its inputs, views and errors.
//! - [`http`]: the HTTP face (axum, one module per resource), problems, OpenAPI document.
//! - [`grpc`]: the gRPC face (tonic): `flashsale.v1`, health, reflection, status details.
//! - [`server`]: the engine as a process: both faces, background tasks, shutdown.
//! - [`admission`]: in-memory load shedding before any Redis call; [`gates`] keeps its
//!   sold-out flags and windows in step with Redis.
//! - [`callers`]: the clients an engine knows by their tokens (`--client-token`).
//! - [`cli`]: the `flashsale` command line, each subcommand run on the library.
//! - [`config`]: `flashsale serve`'s flags; [`metrics`]: the Prometheus registry.
//! - [`ids`]: validated identifiers; nothing unchecked reaches a Redis key.
//! - [`keys`]: the Redis key names, one hash tag per shard.
//! - [`sharding`]: home shards of users, default shard counts, splitting stock.
//! - [`scripts`]: the embedded Lua scripts and their result codes.
//! - [`events`]: the shard streams' entries (the outbox), decoded.
//! - [`ledger`]: the SQL ledger of record (SQLite, PostgreSQL) and its repository.
//! - [`recovery`]: the repair protocol (identity check, lease, fence, drain, audit,
//!   restore): how Redis is rebuilt from the ledger without creating or losing a unit.
//! - [`reconcile`]: settles the shard streams into the ledger, exactly once.
//! - [`settlement`]: the ledger side of `serve`: reconciler and periodic audit.
//! - [`store`]: the typed API over the scripts ([`store::Store`]), stock moves included.
//! - [`topology`]: one Redis or a Redis Cluster, and the connection over either.
//! - [`maintenance`]: the background sweeper and move recovery.
//! - [`live`]: the sampled last minutes of each SKU's counters, for the sale page.
//! - [`registry`]: the engines sharing one Redis, their heartbeats and rate shares.
//!
//! See `ARCHITECTURE.md` for the invariants.

pub mod admission;
pub mod api;
pub mod callers;
pub mod cli;
pub mod config;
pub mod events;
pub mod gates;
pub mod grpc;
pub mod http;
pub mod ids;
pub mod keys;
pub mod ledger;
pub mod live;
pub mod maintenance;
pub mod metrics;
pub mod reconcile;
pub mod recovery;
pub mod registry;
pub mod scripts;
pub mod server;
pub mod settlement;
pub mod sharding;
pub mod store;
pub mod topology;
