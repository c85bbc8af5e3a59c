//! Several engines on one Redis: each built in-process on its own runtime, on port 0, with
//! the same Redis and key prefix, as `flashsale serve` instances sharing a sale would be.

mod membership;
mod rates;
mod sold_out;
mod support;
mod sweeps;
