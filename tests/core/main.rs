//! Tests of the reservation core against real `redis-server` processes, each test starting
//! its own on a free port (see `flashsale_testkit::LocalRedis`).

mod callers;
mod carts;
mod coalescing;
mod concurrency;
mod expiry;
mod memory;
mod model;
mod restart;
mod scripts;
mod sell_through;
mod support;
