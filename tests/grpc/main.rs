//! The gRPC face against a real engine on port 0 and a real `redis-server`: every
//! operation and every error code through a tonic client, the details of each status
//! decoded; the same scenario over HTTP and gRPC ending in the same state; health and
//! reflection.

mod errors;
mod health;
mod operations;
mod parity;
mod python;
mod support;
