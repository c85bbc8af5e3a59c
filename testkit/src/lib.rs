//! flashsale-testkit: the private servers flashsale's tests, benches and load harness run
//! against, each on free loopback ports in temporary directories of its own, stopped and
//! removed when its handle drops. Never a server someone else started.
//!
//! - [`LocalRedis`]: one `redis-server`, optionally with an append-only file, that can be
//!   killed and restarted in place.
//! - [`LocalCluster`]: a Redis Cluster of `redis-server --cluster-enabled yes` nodes,
//!   joined by `redis-cli --cluster create`, with failover and slot moves on demand.
//! - [`LocalPostgres`]: a PostgreSQL cluster of its own (`initdb`, `pg_ctl`).
//! - [`LocalPrometheus`]: a Prometheus server scraping given targets every second.
//! - [`LocalBrowser`]: a headless Chromium behind Debian's `chromedriver`.
//! - [`free_port`]: a loopback port nobody listens on.

mod browser;
mod cluster;
mod postgres;
mod prometheus;
mod redis;
mod resp;

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;

pub use browser::LocalBrowser;
pub use cluster::{ClusterNode, LocalCluster, LocalClusterOptions, Role, SLOTS};
pub use postgres::LocalPostgres;
pub use prometheus::LocalPrometheus;
pub use redis::{evalsha_stats, Fsync, LocalRedis, LocalRedisOptions};

/// A loopback port that was free a moment ago: bound and released, so that a server can
/// bind it. Someone else may take it in between; callers retry with another.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something listens on loopback `port`, up to `within`; `what` names it in
/// the error.
pub(crate) fn wait_listening(port: u16, within: std::time::Duration, what: &str) -> io::Result<()> {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > within {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not listen within {within:?}"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// The `redis-server` binary: `$FLASHSALE_REDIS_SERVER`, or the one on `PATH`.
pub(crate) fn redis_server_binary() -> PathBuf {
    std::env::var_os("FLASHSALE_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// The `redis-cli` binary: `$FLASHSALE_REDIS_CLI`, or the one on `PATH`.
pub(crate) fn redis_cli_binary() -> PathBuf {
    std::env::var_os("FLASHSALE_REDIS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-cli"))
}
