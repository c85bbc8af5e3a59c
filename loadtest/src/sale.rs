//! One sale, start to finish: set up (or spawn) the engine, load the SKU, replay the
//! arrivals, verify the invariants, write the report and the chart.

use std::path::PathBuf;

use flashsale::ledger::Ledger;
use flashsale::store::{Store, StoreOptions};
use serde_json::json;

use crate::chart::{self, ChartInput};
use crate::checks::{self, Inspect};
use crate::client::Target;
use crate::html;
use crate::report::Report;
use crate::run;
use crate::scenario::Scenario;
use crate::spawn::Spawned;

/// Where the engine is and how to reach its parts.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Start a private Redis and engine (the rest is then ignored).
    pub spawn: bool,
    /// The engine's base URL.
    pub target: Option<String>,
    /// Its admin token (to load the SKU).
    pub admin_token: Option<String>,
    /// Its Redis, for the checks in Redis.
    pub redis_url: Option<String>,
    /// Its key prefix.
    pub key_prefix: String,
    /// Its ledger, for the checks in the ledger.
    pub database_url: Option<String>,
    /// Extra `flashsale serve` arguments for `--spawn`.
    pub engine_args: Vec<String>,
    /// Where `report.json`, `chart.svg` and `report.html` go.
    pub out: PathBuf,
    /// Draw the progress bar.
    pub progress: bool,
}

/// Loads the scenario's SKU through the admin API.
async fn load_sku(target: &Target, token: &str, scenario: &Scenario) -> anyhow::Result<()> {
    let body = json!({
        "stock": scenario.stock,
        "shards": scenario.shards,
        "per_user_limit": scenario.per_user_limit,
        "hold_seconds": scenario.hold_seconds,
    });
    let status =
        crate::client::put_json(target, &format!("/v1/skus/{}", scenario.sku), token, &body)
            .await?;
    anyhow::ensure!(
        status == 200 || status == 201,
        "loading the SKU answered {status}"
    );
    Ok(())
}

/// Runs the sale and returns its report (also written to `setup.out`).
pub async fn run_sale(scenario: &Scenario, setup: &Setup) -> anyhow::Result<Report> {
    scenario.validate()?;
    let spawned = if setup.spawn {
        Some(Spawned::start(&setup.engine_args).await?)
    } else {
        None
    };
    let (base, token) = match &spawned {
        Some(s) => (s.base.clone(), Some(s.admin_token.clone())),
        None => (
            setup
                .target
                .clone()
                .ok_or_else(|| anyhow::anyhow!("give --target or --spawn"))?,
            setup.admin_token.clone(),
        ),
    };
    let target = Target::parse(&base)?;
    let token = token.ok_or_else(|| anyhow::anyhow!("give --admin-token to load the SKU"))?;
    load_sku(&target, &token, scenario).await?;

    let (redis_url, prefix, database_url) = match &spawned {
        Some(s) => (
            Some(s.redis.url()),
            s.prefix.clone(),
            Some(s.database_url.clone()),
        ),
        None => (
            setup.redis_url.clone(),
            setup.key_prefix.clone(),
            setup.database_url.clone(),
        ),
    };
    let before = spawned.as_ref().map(|s| s.redis.script_stats());
    let outcome = run::replay(&target, scenario, setup.progress).await?;
    let redis_us = match (&spawned, before) {
        (Some(s), Some((usec, _))) if !outcome.book.holds.is_empty() => {
            let (after, _) = s.redis.script_stats();
            Some((after - usec) as f64 / outcome.book.holds.len() as f64)
        }
        _ => None,
    };

    let inspect = match redis_url {
        Some(url) => Some(Inspect {
            store: Store::connect(&StoreOptions {
                prefix,
                ..StoreOptions::new(url)
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
    let report = Report::new(scenario, &outcome, violations, sku, redis_us);
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
