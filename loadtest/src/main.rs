//! `flashsale-loadtest`: parses arguments and calls the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use flashsale_loadtest::baseline::{serve_naive, serve_pg_hotrow};
use flashsale_loadtest::compare::{compare, CompareOptions};
use flashsale_loadtest::sale::{run_sale, Setup};
use flashsale_loadtest::scenario::{Profile, Scenario};

/// Replays a flash sale against the flashsale API and checks that it ended right.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay one sale (open loop) and check its invariants; exit 1 if any is violated.
    Run(Box<RunArgs>),
    /// Measure the engine beside its alternatives in one run and print the table.
    Compare(CompareArgs),
    /// Serve a baseline (used by `compare`; labelled as a baseline in every response).
    #[command(hide = true)]
    Baseline {
        #[command(subcommand)]
        which: Baseline,
    },
}

#[derive(Args)]
struct CompareArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections of the closed-loop measurements.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Where compare.json goes.
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Baseline {
    /// One pooled Redis checkout and one unsharded check-and-DECRBY script per request.
    Naive {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value_t = 32)]
        pool_size: usize,
    },
    /// One PostgreSQL hot-row UPDATE and an order insert per request.
    PgHotrow {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = flashsale_loadtest::baseline::PG_HOTROW_DEFAULT_POOL_SIZE)]
        pool_size: u32,
    },
}

#[derive(Args)]
struct RunArgs {
    /// A scenario file (TOML); flags below override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start a private Redis and the engine for this run.
    #[arg(long)]
    spawn: bool,
    /// The engine's base URL (without --spawn).
    #[arg(long, env = "FLASHSALE_TARGET")]
    target: Option<String>,
    /// The engine's admin token (without --spawn).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The engine's Redis, to check invariants there too (without --spawn).
    #[arg(long)]
    redis_url: Option<String>,
    /// The engine's key prefix.
    #[arg(long, default_value = "fs:")]
    key_prefix: String,
    /// The engine's ledger, to check invariants there too (without --spawn).
    #[arg(long)]
    database_url: Option<String>,
    /// SKU name.
    #[arg(long)]
    sku: Option<String>,
    /// Units on sale.
    #[arg(long)]
    stock: Option<u64>,
    /// Shards.
    #[arg(long)]
    shards: Option<u16>,
    /// Distinct buyers.
    #[arg(long)]
    users: Option<u64>,
    /// Units a buyer may hold or buy.
    #[arg(long)]
    per_user_limit: Option<u32>,
    /// Hold length, seconds.
    #[arg(long)]
    hold_seconds: Option<f64>,
    /// A constant arrival rate per second (instead of the spike).
    #[arg(long)]
    rate: Option<f64>,
    /// Spike: peak arrivals per second.
    #[arg(long)]
    peak: Option<f64>,
    /// Spike: ms to climb to the peak.
    #[arg(long)]
    ramp_ms: Option<u64>,
    /// Spike: ms at the peak.
    #[arg(long)]
    hold_ms: Option<u64>,
    /// Spike: ms to fall to the tail rate.
    #[arg(long)]
    decay_ms: Option<u64>,
    /// Spike: arrivals per second after the fall.
    #[arg(long)]
    tail: Option<f64>,
    /// How long arrivals come, ms.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Share of holders who confirm.
    #[arg(long)]
    confirm_share: Option<f64>,
    /// Share of holders who cancel (the rest abandon).
    #[arg(long)]
    cancel_share: Option<f64>,
    /// Times a timed-out reserve is retried with the same idempotency key.
    #[arg(long)]
    retries: Option<u32>,
    /// Client timeout, ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// HTTP connections.
    #[arg(long)]
    connections: Option<usize>,
    /// Skip the closing wave (then undersell is not checked).
    #[arg(long)]
    no_closing_wave: bool,
    /// Where report.json and chart.svg go.
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Extra arguments for the spawned `flashsale serve` (repeat: --engine-arg=--rate-sku --engine-arg=0).
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    engine_args: Vec<String>,
}

impl RunArgs {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut s = match &self.config {
            Some(path) => Scenario::from_file(path)?,
            None => Scenario::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { s.$field = v; } )* };
        }
        set!(
            sku,
            stock,
            users,
            per_user_limit,
            hold_seconds,
            duration_ms,
            confirm_share,
            cancel_share,
            retries,
            timeout_ms,
            connections
        );
        if self.shards.is_some() {
            s.shards = self.shards;
        }
        if let Some(rate) = self.rate {
            s.profile = Profile::Constant { rate };
        }
        if let Profile::Spike {
            peak,
            ramp_ms,
            hold_ms,
            decay_ms,
            tail,
        } = &mut s.profile
        {
            macro_rules! spike {
                ($($field:ident),*) => { $( if let Some(v) = self.$field { *$field = v; } )* };
            }
            spike!(peak, ramp_ms, hold_ms, decay_ms, tail);
        }
        if self.no_closing_wave {
            s.closing_wave = false;
        }
        Ok(s)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let scenario = args.scenario()?;
            let setup = Setup {
                spawn: args.spawn,
                target: args.target.clone(),
                admin_token: args.admin_token.clone(),
                redis_url: args.redis_url.clone(),
                key_prefix: args.key_prefix.clone(),
                database_url: args.database_url.clone(),
                engine_args: args.engine_args.clone(),
                out: args.out.clone(),
                progress: !args.quiet,
            };
            let report = run_sale(&scenario, &setup).await?;
            println!("{report}");
            println!("report: {}", args.out.join("report.json").display());
            println!("chart:  {}", args.out.join("chart.svg").display());
            if !report.passed {
                std::process::exit(1);
            }
        }
        Command::Compare(args) => {
            let options = CompareOptions {
                seconds: args.seconds.max(1),
                connections: args.connections.max(1),
            };
            let comparison = compare(&options).await?;
            println!("{comparison}");
            std::fs::create_dir_all(&args.out)?;
            std::fs::write(
                args.out.join("compare.json"),
                serde_json::to_vec_pretty(&comparison)?,
            )?;
        }
        Command::Baseline { which } => {
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            match which {
                Baseline::Naive {
                    listen,
                    redis_url,
                    pool_size,
                } => {
                    let listener = tokio::net::TcpListener::bind(listen).await?;
                    serve_naive(listener, &redis_url, "naive", pool_size, stop).await?;
                }
                Baseline::PgHotrow {
                    listen,
                    database_url,
                    pool_size,
                } => {
                    let listener = tokio::net::TcpListener::bind(listen).await?;
                    serve_pg_hotrow(listener, &database_url, pool_size, stop).await?;
                }
            }
        }
    }
    Ok(())
}
