//! Faults, retries and bad input, against real processes: the engine as `flashsale serve`,
//! a private `redis-server`, a real SQLite ledger. Every case runs a sale and asserts the
//! invariants afterwards.

mod clocks;
mod engine;
mod engine_crash;
mod input;
mod network;
mod proxy;
mod redis_crash;
mod sale;
mod slow_down;
