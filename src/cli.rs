//! The `flashsale` command line: its flags, and each subcommand run on the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::config::{AuditArgs, LedgerArgs, ReconcileArgs, RedisArgs, ServeConfig};
use crate::ledger::Ledger;
use crate::reconcile::Reconciler;
use crate::recovery::audit;
use crate::server::{shutdown_signal, unreachable_redis, Application};
use crate::store::Store;

/// Flash-sale inventory reservation engine.
#[derive(Debug, Parser)]
#[command(name = "flashsale", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API, with the expiry sweeper and stock-move recovery in the background.
    Serve(ServeConfig),
    /// Settle the shard streams into the SQL ledger until SIGTERM or ctrl-c.
    Reconcile(ReconcileArgs),
    /// Compare Redis with the ledger, report drift, and with --repair fix it.
    Audit(AuditArgs),
}

/// The store and the ledger the `reconcile` and `audit` commands work on.
async fn connect(
    redis: &RedisArgs,
    ledger: &LedgerArgs,
) -> anyhow::Result<(Store, Ledger, String)> {
    let url = ledger.url();
    let target = redis.target()?;
    let store = Store::connect(&redis.store_options(target.clone()))
        .await
        .with_context(|| unreachable_redis(&target))?;
    let ledger = Ledger::connect(&url).await?;
    Ok((store, ledger, url))
}

/// Runs the command; its exit code says whether it did what was asked.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // RUST_LOG as `target=level` directives (`warn,flashsale=debug`); warnings by default.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::WARN));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    match cli.command {
        Command::Serve(config) => {
            let app = Application::build(&config).await?;
            tracing::info!(address = %app.local_addr(), "serving");
            println!("flashsale listening on http://{}", app.local_addr());
            if let Some(grpc) = app.grpc_addr() {
                println!("flashsale serving gRPC on {grpc}");
            }
            app.run_until(shutdown_signal()).await?;
        }
        Command::Reconcile(args) => {
            let (store, ledger, url) = connect(&args.redis, &args.ledger).await?;
            let reconciler = Reconciler::new(store, ledger, args.options(), None);
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let running = tokio::spawn(reconciler.run(stopped));
            tracing::info!(database = %url, "reconciling");
            shutdown_signal().await;
            let _ = stop.send(true);
            running.await?;
        }
        Command::Audit(args) => {
            let (store, ledger, _) = connect(&args.redis, &args.ledger).await?;
            let reconciler = if args.no_drain {
                None
            } else {
                let mut options = crate::reconcile::ReconcileOptions::new();
                // Whatever another consumer left pending is settled too: the audit drains.
                options.claim_idle = Duration::from_millis(1);
                Some(Reconciler::new(
                    store.clone(),
                    ledger.clone(),
                    options,
                    None,
                ))
            };
            let report = audit::run(&store, &ledger, reconciler.as_ref(), args.repair).await?;
            print!("{report}");
            // Drift left as it is, or a SKU another repair held (not looked at): not done.
            let unrepaired = !report.busy.is_empty()
                || (!report.drifts.is_empty() && (!args.repair || !report.skipped.is_empty()));
            if unrepaired {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
