//! `flashsale serve`'s configuration: flags, each with an environment fallback.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use crate::admission::{AdmissionConfig, Bucket};

/// How to run the service.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis to keep the sale in.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Start a private redis-server on a free port for this run instead (a local try-out;
    /// its data goes with the process).
    #[arg(long, env = "FLASHSALE_SPAWN_REDIS")]
    pub spawn_redis: bool,

    /// Prefix of every Redis key the engine writes.
    #[arg(long, env = "FLASHSALE_KEY_PREFIX", default_value = "fs:")]
    pub key_prefix: String,

    /// Bearer token for the admin routes (load, restock). Without one they refuse everyone.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Reserves per second over all SKUs (0: no limit).
    #[arg(long, env = "FLASHSALE_RATE_GLOBAL", default_value_t = 200_000)]
    pub rate_global: u32,

    /// Reserves admitted at once over all SKUs before the global rate applies.
    #[arg(long, env = "FLASHSALE_BURST_GLOBAL", default_value_t = 20_000)]
    pub burst_global: u32,

    /// Reserves per second for one SKU (0: no limit).
    #[arg(long, env = "FLASHSALE_RATE_SKU", default_value_t = 100_000)]
    pub rate_sku: u32,

    /// Reserves of one SKU admitted at once before its rate applies.
    #[arg(long, env = "FLASHSALE_BURST_SKU", default_value_t = 10_000)]
    pub burst_sku: u32,

    /// Requests with Redis calls in flight at once; beyond it requests get 503 at once.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 4_096)]
    pub max_in_flight: usize,

    /// How often expired holds are swept and interrupted stock moves completed, in ms.
    #[arg(long, env = "FLASHSALE_SWEEP_INTERVAL_MS", default_value_t = 250)]
    pub sweep_interval_ms: u64,

    /// How often a sold-out SKU is checked for units that came back, in ms.
    #[arg(long, env = "FLASHSALE_SOLD_OUT_POLL_MS", default_value_t = 50)]
    pub sold_out_poll_ms: u64,

    /// How long a Redis call may take before the request fails with 503, in ms.
    #[arg(long, env = "FLASHSALE_REDIS_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_timeout_ms: u64,
}

fn bucket(rate: u32, burst: u32) -> Option<Bucket> {
    let rate = NonZeroU32::new(rate)?;
    Some(Bucket {
        rate,
        burst: NonZeroU32::new(burst).unwrap_or(rate),
    })
}

impl ServeConfig {
    /// A configuration for tests and embedding: the defaults, on `redis_url`, port 0.
    pub fn local(redis_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            redis_url: redis_url.into(),
            spawn_redis: false,
            key_prefix: "fs:".to_owned(),
            admin_token: None,
            rate_global: 200_000,
            burst_global: 20_000,
            rate_sku: 100_000,
            burst_sku: 10_000,
            max_in_flight: 4_096,
            sweep_interval_ms: 250,
            sold_out_poll_ms: 50,
            redis_timeout_ms: 1_000,
        }
    }

    /// The admission limits.
    pub fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            global: bucket(self.rate_global, self.burst_global),
            per_sku: bucket(self.rate_sku, self.burst_sku),
            max_in_flight: self.max_in_flight.max(1),
        }
    }

    /// The sweep interval.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(1))
    }

    /// The sold-out poll interval.
    pub fn sold_out_poll(&self) -> Duration {
        Duration::from_millis(self.sold_out_poll_ms.max(1))
    }

    /// The Redis call timeout.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }
}
