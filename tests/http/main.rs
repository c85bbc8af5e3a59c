//! The HTTP API against a real server on port 0 and a real `redis-server`; every response
//! is checked against the server's own OpenAPI document.

mod bounds;
mod callers;
mod carts;
mod listing;
mod metrics;
mod routes;
mod rules;
mod shedding;
mod shutdown;
mod startup;
mod support;
