//! One sale, start to finish: set up (or spawn) the engine, load the SKU, replay the
//! arrivals, verify the invariants, write the report and the chart.

use std::path::PathBuf;

use flashsale::ledger::Ledger;
use flashsale::store::{Store, StoreOptions};
use flashsale::topology::RedisTarget;
use serde_json::json;

use crate::chart::{self, ChartInput};
use crate::checks::{self, Inspect};
use crate::client::Target;
use crate::cpu::RequestCpuMeter;
use crate::html;
use crate::private_redis::ScriptStats;
use crate::protocol::Protocol;
use crate::report::{Measured, Report};
use crate::run;
use crate::scenario::Scenario;
use crate::spawn::{SpawnOptions, Spawned};

/// Where the engine is and how to reach its parts.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Start a private Redis (or Redis Cluster) and engines of this shape (the rest is then
    /// ignored).
    pub spawn: Option<SpawnOptions>,
    /// The engine's base URL.
    pub target: Option<String>,
    /// Its gRPC face, `HOST:PORT`, for a scenario whose protocol is gRPC (without
    /// `spawn`: spawned engines are started with one).
    pub grpc_target: Option<String>,
    /// Its admin token (to load the SKU).
    pub admin_token: Option<String>,
    /// Its Redis, for the checks in Redis.
    pub redis_url: Option<String>,
    /// Its key prefix.
    pub key_prefix: String,
    /// Its ledger, for the checks in the ledger.
    pub database_url: Option<String>,
    /// Where `report.json`, `chart.svg` and `report.html` go.
    pub out: PathBuf,
    /// Draw the progress bar.
    pub progress: bool,
}

/// Loads the scenario's SKU (and its bundle's) through the admin API.
async fn load_sku(target: &Target, token: &str, scenario: &Scenario) -> anyhow::Result<()> {
    let mut skus = vec![(scenario.sku.as_str(), scenario.stock)];
    if let Some(bundle) = &scenario.bundle {
        skus.push((bundle.sku.as_str(), bundle.stock));
    }
    for (sku, stock) in skus {
        let body = json!({
            "stock": stock,
            "shards": scenario.shards,
            "per_user_limit": scenario.per_user_limit,
            "hold_seconds": scenario.hold_seconds,
        });
        let status =
            crate::client::put_json(target, &format!("/v1/skus/{sku}"), token, &body).await?;
        anyhow::ensure!(
            status == 200 || status == 201,
            "loading {sku} answered {status}"
        );
    }
    Ok(())
}

/// What is measured on spawned servers from before the arrivals to after the closing wave.
struct Meters {
    scripts: ScriptStats,
    cpu: RequestCpuMeter,
}

impl Meters {
    fn start(spawned: &Spawned) -> anyhow::Result<Self> {
        Ok(Self {
            scripts: spawned.redis.script_stats()?,
            cpu: RequestCpuMeter::start(spawned.processes()?)?,
        })
    }

    /// Script time over `reservations`, and every process's CPU over `reservations` and
    /// over `requests`.
    fn read(
        &self,
        spawned: &Spawned,
        reservations: u64,
        requests: u64,
    ) -> anyhow::Result<Measured> {
        let scripts = spawned.redis.script_stats()?.since(self.scripts);
        Ok(Measured {
            redis_us_per_reservation: (reservations > 0)
                .then(|| scripts.usec as f64 / reservations as f64),
            cpu_per_reservation: Some(self.cpu.read(reservations)?),
            cpu_per_request: Some(self.cpu.read(requests)?),
            topology: None,
        })
    }
}

/// Runs the sale and returns its report (also written to `setup.out`).
pub async fn run_sale(scenario: &Scenario, setup: &Setup) -> anyhow::Result<Report> {
    scenario.validate()?;
    let grpc = scenario.protocol == Protocol::Grpc;
    let spawned = match &setup.spawn {
        Some(options) => Some(
            Spawned::start(&SpawnOptions {
                grpc: options.grpc || grpc,
                ..options.clone()
            })
            .await?,
        ),
        None => None,
    };
    let (targets, token) = match &spawned {
        Some(s) => (s.targets(), Some(s.admin_token.clone())),
        None => {
            let base = setup
                .target
                .clone()
                .ok_or_else(|| anyhow::anyhow!("give --target or --spawn"))?;
            let mut target = Target::parse(&base)?;
            match &setup.grpc_target {
                Some(addr) => target = target.with_grpc(addr)?,
                None if grpc => anyhow::bail!(
                    "the protocol is gRPC: give the engine's gRPC address (--grpc-target)"
                ),
                None => {}
            }
            (vec![target], setup.admin_token.clone())
        }
    };
    // The first engine loads the SKU and answers the checks' reads; buyers use them all.
    let target = targets[0].clone();
    let token = token.ok_or_else(|| anyhow::anyhow!("give --admin-token to load the SKU"))?;
    load_sku(&target, &token, scenario).await?;

    let (redis_target, prefix, database_url) = match &spawned {
        Some(s) => (
            Some(s.redis.target()),
            s.prefix.clone(),
            Some(s.database_url.clone()),
        ),
        None => (
            // Several URLs, comma-separated, are a cluster's seeds, as for the engine.
            setup
                .redis_url
                .as_deref()
                .map(|url| RedisTarget::parse(&[url], false))
                .transpose()?,
            setup.key_prefix.clone(),
            setup.database_url.clone(),
        ),
    };
    let meters = spawned.as_ref().map(Meters::start).transpose()?;
    let outcome = run::replay(&targets, scenario, setup.progress).await?;
    let mut measured = match (&spawned, &meters) {
        (Some(s), Some(m)) => m.read(
            s,
            outcome.book.holds.len() as u64,
            outcome.sent + outcome.closing.recorder.overall.len(),
        )?,
        _ => Measured::default(),
    };

    let inspect = match redis_target {
        Some(redis) => Some(Inspect {
            store: Store::connect(&StoreOptions {
                prefix,
                ..StoreOptions::new(redis)
            })
            .await?,
            ledger: match database_url {
                Some(url) => Some(Ledger::connect(&url).await?),
                None => None,
            },
        }),
        None => None,
    };
    let (violations, sku) =
        checks::verify(&target, scenario, &outcome.book, inspect.as_ref()).await?;
    if let Some(s) = &spawned {
        let shards = sku["shards"].as_u64().and_then(|n| u16::try_from(n).ok());
        let shards = shards.or(scenario.shards).unwrap_or(0);
        measured.topology = Some(s.topology(&scenario.sku.parse()?, shards)?);
    }
    let report = Report::new(scenario, &outcome, violations, sku, measured);
    let chart = chart::svg(&ChartInput {
        title: format!("sale of {}", scenario.sku),
        samples: outcome.recorder.samples.as_deref().unwrap_or_default(),
        closing: outcome
            .closing
            .recorder
            .samples
            .as_deref()
            .unwrap_or_default(),
        closing_span: outcome.closing.span,
        sold_out_at: outcome.recorder.first("sold_out"),
    })?;
    std::fs::create_dir_all(&setup.out)?;
    std::fs::write(
        setup.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(setup.out.join("chart.svg"), &chart)?;
    std::fs::write(setup.out.join("report.html"), html::page(&report, &chart))?;
    Ok(report)
}
