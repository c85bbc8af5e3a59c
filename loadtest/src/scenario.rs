//! A sale to replay: the SKU, the buyers, how they arrive and what they do with a hold.
//! From a TOML file, flags, or both (flags win).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;

/// How arrivals are spread over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Profile {
    /// The same rate throughout.
    Constant {
        /// Arrivals per second.
        rate: f64,
    },
    /// A flash sale opening: rate climbs from 0 to `peak` in `ramp_ms`, holds for
    /// `hold_ms`, falls back to `tail` in `decay_ms`, and stays there.
    Spike {
        /// Arrivals per second at the peak.
        peak: f64,
        /// Climb, ms.
        ramp_ms: u64,
        /// Plateau, ms.
        hold_ms: u64,
        /// Fall, ms.
        decay_ms: u64,
        /// Arrivals per second after the fall.
        tail: f64,
    },
}

impl Profile {
    /// Arrivals per second `t` after the start.
    pub fn rate_at(&self, t: Duration) -> f64 {
        match *self {
            Self::Constant { rate } => rate,
            Self::Spike {
                peak,
                ramp_ms,
                hold_ms,
                decay_ms,
                tail,
            } => {
                let ms = t.as_secs_f64() * 1000.0;
                let (ramp, hold, decay) = (ramp_ms as f64, hold_ms as f64, decay_ms as f64);
                if ms < ramp {
                    peak * ms / ramp.max(1.0)
                } else if ms < ramp + hold {
                    peak
                } else if ms < ramp + hold + decay {
                    peak + (tail - peak) * (ms - ramp - hold) / decay.max(1.0)
                } else {
                    tail
                }
            }
        }
    }

    /// The intended send times (offsets from the start) of every arrival within
    /// `duration`: the k-th arrival is when the integral of the rate reaches k, so that a
    /// steep ramp gets its arrivals too.
    pub fn schedule(&self, duration: Duration) -> Vec<Duration> {
        const STEP: f64 = 0.000_5;
        let mut times = Vec::new();
        let end = duration.as_secs_f64();
        let (mut t, mut expected, mut next) = (0.0f64, 0.0f64, 1.0f64);
        while t < end {
            let added = self
                .rate_at(Duration::from_secs_f64(t + STEP / 2.0))
                .max(0.0)
                * STEP;
            while added > 0.0 && expected + added >= next {
                let at = t + STEP * (next - expected) / added;
                if at >= end {
                    break;
                }
                times.push(Duration::from_secs_f64(at));
                next += 1.0;
            }
            expected += added;
            t += STEP;
        }
        times
    }
}

/// A second SKU sold with the first in carts (the phone and its case): a share of the
/// arrivals buy both, all together or not at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The second SKU (same per-user limit and hold as the first).
    pub sku: String,
    /// Its units on sale.
    pub stock: u64,
    /// Share of arrivals that send a cart of one unit of it with their units of the first.
    pub share: f64,
}

/// Everything a run needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// The SKU on sale.
    pub sku: String,
    /// Units on sale.
    pub stock: u64,
    /// Shards (none: the engine's default for the stock).
    pub shards: Option<u16>,
    /// Distinct buyers; arrivals go through them in turn.
    pub users: u64,
    /// Units one buyer may hold or buy.
    pub per_user_limit: u32,
    /// Units per reserve.
    pub quantity: u32,
    /// Hold length, seconds.
    pub hold_seconds: f64,
    /// How arrivals come.
    pub profile: Profile,
    /// How long arrivals come, ms.
    pub duration_ms: u64,
    /// Share of holders who confirm (pay).
    pub confirm_share: f64,
    /// Share of holders who cancel; the rest abandon their hold and let it expire.
    pub cancel_share: f64,
    /// How long a holder takes to confirm or cancel, ms.
    pub think_ms: u64,
    /// A request unanswered this long counts as a timeout, ms.
    pub timeout_ms: u64,
    /// Times a timed-out reserve is sent again with the same idempotency key.
    pub retries: u32,
    /// Connections the client keeps open (HTTP/1.1 connections, or HTTP/2 connections to
    /// the gRPC face, one channel each).
    pub connections: usize,
    /// How the buyers' calls reach the engine: `http` (HTTP/1.1) or `grpc` (its gRPC
    /// face; with `--spawn` every engine serves one).
    pub protocol: Protocol,
    /// After the arrivals, wait for abandoned holds to expire and send buyers who all
    /// confirm until the SKU is sold out: the sale must end with every unit sold.
    pub closing_wave: bool,
    /// Carts of the SKU and a second one, for a share of the buyers.
    pub bundle: Option<Bundle>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            sku: "flash-1".to_owned(),
            stock: 500,
            shards: None,
            users: 20_000,
            per_user_limit: 1,
            quantity: 1,
            hold_seconds: 2.0,
            profile: Profile::Spike {
                peak: 5_000.0,
                ramp_ms: 500,
                hold_ms: 1_500,
                decay_ms: 1_000,
                tail: 500.0,
            },
            duration_ms: 4_000,
            confirm_share: 0.6,
            cancel_share: 0.2,
            think_ms: 50,
            timeout_ms: 2_000,
            retries: 1,
            connections: 128,
            protocol: Protocol::Http,
            closing_wave: true,
            bundle: None,
        }
    }
}

impl Scenario {
    /// Reads a scenario from a TOML file; missing fields take their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(toml::from_str(&text)?)
    }

    /// Refuses a scenario that cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.users > 0, "users must be at least 1");
        anyhow::ensure!(self.connections > 0, "connections must be at least 1");
        anyhow::ensure!(
            self.quantity >= 1 && self.quantity <= self.per_user_limit,
            "quantity must be in 1..=per_user_limit"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.confirm_share)
                && (0.0..=1.0).contains(&self.cancel_share)
                && self.confirm_share + self.cancel_share <= 1.0,
            "confirm_share and cancel_share must be shares that add up to at most 1"
        );
        anyhow::ensure!(self.hold_seconds > 0.0, "hold_seconds must be positive");
        if let Some(bundle) = &self.bundle {
            anyhow::ensure!(
                (0.0..=1.0).contains(&bundle.share),
                "bundle.share must be a share, from 0 to 1"
            );
            anyhow::ensure!(bundle.sku != self.sku, "bundle.sku must be another SKU");
        }
        Ok(())
    }

    /// Whether buyers want more than there is: then the sale must end sold out.
    pub fn demand_exceeds_supply(&self) -> bool {
        self.users.saturating_mul(u64::from(self.per_user_limit)) >= self.stock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_profile_spaces_arrivals_evenly() {
        let times = Profile::Constant { rate: 100.0 }.schedule(Duration::from_secs(2));
        assert_eq!(times.len(), 200);
        let gap = (times[1] - times[0]).as_secs_f64();
        assert!((gap - 0.01).abs() < 1e-6, "{gap}");
    }

    #[test]
    fn a_spike_climbs_holds_and_falls() {
        let spike = Profile::Spike {
            peak: 1000.0,
            ramp_ms: 100,
            hold_ms: 200,
            decay_ms: 100,
            tail: 10.0,
        };
        assert_eq!(spike.rate_at(Duration::from_millis(50)), 500.0);
        assert_eq!(spike.rate_at(Duration::from_millis(200)), 1000.0);
        assert_eq!(spike.rate_at(Duration::from_millis(1000)), 10.0);
        let times = spike.schedule(Duration::from_millis(400));
        // About half a ramp, a plateau and half a fall of arrivals: 50 + 200 + ~50.
        assert!((280..=320).contains(&times.len()), "{}", times.len());
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn scenarios_parse_from_toml_with_defaults() {
        let scenario: Scenario = toml::from_str(
            r#"
            stock = 100
            users = 1000
            [profile]
            kind = "constant"
            rate = 250.0
            "#,
        )
        .unwrap();
        assert_eq!(scenario.stock, 100);
        assert_eq!(scenario.profile, Profile::Constant { rate: 250.0 });
        assert_eq!(scenario.per_user_limit, 1);
        assert_eq!(scenario.protocol, Protocol::Http);
        scenario.validate().unwrap();
        let grpc: Scenario = toml::from_str(r#"protocol = "grpc""#).unwrap();
        assert_eq!(grpc.protocol, Protocol::Grpc);
        assert!(toml::from_str::<Scenario>(r#"protocol = "h3""#).is_err());
        assert!(toml::from_str::<Scenario>("stok = 1").is_err());
    }
}
