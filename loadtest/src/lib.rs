//! flashsale-loadtest: replays a flash sale against the HTTP API (or the gRPC face), open
//! loop, and proves it ended right; measures the engine beside the usual alternatives.
//!
//! # Layout
//!
//! - [`scenario`]: the sale to replay (flags or TOML) and its arrival schedule.
//! - [`client`]: a lean HTTP/1.1 client, one kept-alive connection per worker.
//! - [`grpc_client`]: the same calls over the engine's gRPC face, one HTTP/2 connection
//!   per worker, answers labelled as over HTTP; [`protocol`]: `--protocol`, and a
//!   connection of the load over either.
//! - [`run`]: the open-loop generator (and a closed loop for saturation), the buyers'
//!   behaviour, the closing wave.
//! - [`stats`]: HDR histograms per outcome and per second.
//! - [`checks`]: the invariants, through the API, in Redis and in the ledger.
//! - [`report`], [`chart`], [`html`]: `report.json` and the table, the SVG chart, the
//!   self-contained `report.html`.
//! - [`cli`]: the command's flags; every scenario field is one.
//! - [`private_redis`]: the private Redis or Redis Cluster of a run, measured master by
//!   master; [`cpu`]: a process's CPU time from `/proc`.
//! - [`spawn`], [`sale`]: `--spawn` (a private Redis or cluster and one or more engines)
//!   and one whole sale.
//! - [`serve`]: the engine over a private Redis or Redis Cluster, in the foreground.
//! - [`compare`]: the engine beside its alternatives, in one run.
//! - [`demo`]: a sale on the store directly, without HTTP (`flashsale-loadtest demo`).
//! - [`baseline`]: the alternatives, labelled as such.

pub mod baseline;
pub mod chart;
pub mod checks;
pub mod cli;
pub mod client;
pub mod compare;
pub mod cpu;
pub mod demo;
pub mod grpc_client;
pub mod html;
pub mod private_redis;
pub mod protocol;
pub mod report;
pub mod run;
pub mod sale;
pub mod scenario;
pub mod serve;
pub mod spawn;
pub mod stats;
