//! The `flashsale-loadtest` command line, and each subcommand run on the library. Every
//! field of a [`Scenario`] can be given as a flag (a unit test holds that true as fields
//! are added), over a TOML file or the defaults.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use flashsale::topology::RedisTarget;
use flashsale_testkit::LocalClusterOptions;

use crate::baseline::{serve_naive, serve_pg_hotrow};
use crate::compare::{compare, CompareOptions};
use crate::demo::{self, DemoOptions};
use crate::protocol::Protocol;
use crate::sale::{run_sale, Setup};
use crate::scenario::{Bundle, Profile, Scenario};
use crate::serve::{serve, ServeOptions};
use crate::spawn::SpawnOptions;

/// Replays a flash sale against the flashsale API and checks that it ended right.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay one sale (open loop) and check its invariants; exit 1 if any is violated.
    Run(Box<RunArgs>),
    /// Measure the engine beside its alternatives in one run and print the table.
    Compare(CompareArgs),
    /// Run a demo sale on the store, without HTTP, against a private Redis, and check that
    /// it ended right.
    Demo(DemoArgs),
    /// Run `flashsale serve` over a private Redis (or Redis Cluster) that lives as long as
    /// the engine, with a ledger beside it unless its arguments name one; SIGINT and SIGTERM
    /// go to the engine.
    Serve(ServeArgs),
    /// Serve a baseline (used by `compare`; labelled as a baseline in every response).
    #[command(hide = true)]
    Baseline {
        /// Which baseline.
        #[command(subcommand)]
        which: Baseline,
    },
}

/// `compare`'s flags.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Connections of the closed-loop measurements.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Where compare.json goes.
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
}

/// `demo`'s flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Units on sale.
    #[arg(long, default_value_t = 500)]
    pub stock: u64,
    /// Shards the stock is split over (default: chosen from the stock).
    #[arg(long, default_value_t = 8)]
    pub shards: u16,
    /// Buyers in the first wave.
    #[arg(long, default_value_t = 5_000)]
    pub users: u32,
    /// Buyers in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Hold length in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub hold_ms: u64,
    /// Use this Redis instead of starting a private one (the demo writes under a fresh
    /// key prefix and deletes nothing): one URL, or several (repeated or comma-separated)
    /// for the seeds of a Redis Cluster, as `flashsale serve --redis-url` takes them.
    #[arg(long, env = "FLASHSALE_DEMO_REDIS_URL", value_delimiter = ',')]
    pub redis_url: Vec<String>,
    /// The one `--redis-url` is a node of a Redis Cluster.
    #[arg(long, requires = "redis_url")]
    pub redis_cluster: bool,
}

/// `serve`'s flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A Redis Cluster of this many masters (at least 3) instead of one Redis; the engine
    /// gets every master as a seed and `--redis-cluster`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(3..))]
    pub cluster_masters: Option<u16>,
    /// Replicas per master of that cluster.
    #[arg(long, requires = "cluster_masters")]
    pub replicas: Option<u16>,
    /// Arguments for `flashsale serve` (see its --help): everything from the first
    /// argument that is not one of the above, or after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub engine_args: Vec<String>,
}

impl ServeArgs {
    /// What to start.
    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            cluster: self.cluster_masters.map(|masters| LocalClusterOptions {
                masters: masters.into(),
                replicas: self.replicas.unwrap_or(0).into(),
            }),
            engine_args: self.engine_args.clone(),
        }
    }
}

/// The baseline servers.
#[derive(Debug, Subcommand)]
pub enum Baseline {
    /// One pooled Redis checkout and one unsharded check-and-DECRBY script per request.
    Naive {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Its Redis.
        #[arg(long)]
        redis_url: String,
        /// Pooled connections.
        #[arg(long, default_value_t = 32)]
        pool_size: usize,
    },
    /// One PostgreSQL hot-row UPDATE and an order insert per request.
    PgHotrow {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Its PostgreSQL.
        #[arg(long)]
        database_url: String,
        /// Pooled connections.
        #[arg(long, default_value_t = crate::baseline::PG_HOTROW_DEFAULT_POOL_SIZE)]
        pool_size: u32,
    },
}

/// `run`'s flags: where the engine is, and the scenario's fields (each overrides the file).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A scenario file (TOML); flags below override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start a private Redis and the engine for this run.
    #[arg(long, conflicts_with_all = ["target", "redis_url", "database_url"])]
    pub spawn: bool,
    /// With --spawn: a Redis Cluster of this many masters (at least 3) instead of one Redis;
    /// every engine gets the masters as seeds and --redis-cluster.
    #[arg(
        long,
        value_name = "N",
        requires = "spawn",
        conflicts_with = "target",
        value_parser = clap::value_parser!(u16).range(3..)
    )]
    pub cluster_masters: Option<u16>,
    /// With --cluster-masters: replicas per master, 0 to 2.
    #[arg(
        long,
        value_name = "R",
        requires = "cluster_masters",
        conflicts_with = "target",
        value_parser = clap::value_parser!(u16).range(0..=2)
    )]
    pub replicas: Option<u16>,
    /// With --spawn: this many `flashsale serve` processes (1 to 8) sharing the Redis, the key
    /// prefix and the ledger; worker connection i goes to engine i mod this.
    #[arg(
        long,
        value_name = "M",
        requires = "spawn",
        conflicts_with = "target",
        value_parser = clap::value_parser!(u16).range(1..=8)
    )]
    pub engines: Option<u16>,
    /// With --spawn: settle the ledger in a `flashsale reconcile` process of its own (the
    /// engines run with --no-reconcile), measured apart in the report.
    #[arg(long, requires = "spawn", conflicts_with = "target")]
    pub reconciler_process: bool,
    /// The engine's base URL (without --spawn).
    #[arg(long, env = "FLASHSALE_TARGET", required_unless_present = "spawn")]
    pub target: Option<String>,
    /// The engine's gRPC face, HOST:PORT (its --grpc-listen), for --protocol grpc without
    /// --spawn (spawned engines serve one on a free port).
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "FLASHSALE_GRPC_TARGET",
        conflicts_with = "spawn"
    )]
    pub grpc_target: Option<String>,
    /// The engine's admin token, to load the SKU (without --spawn).
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "spawn"
    )]
    pub admin_token: Option<String>,
    /// The engine's Redis, to check invariants there too (without --spawn); several URLs,
    /// comma-separated, are a Redis Cluster's seeds.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The engine's key prefix.
    #[arg(long, default_value = "fs:")]
    pub key_prefix: String,
    /// The engine's ledger, to check invariants there too (without --spawn).
    #[arg(long)]
    pub database_url: Option<String>,
    /// SKU name.
    #[arg(long)]
    pub sku: Option<String>,
    /// Units on sale.
    #[arg(long)]
    pub stock: Option<u64>,
    /// Shards.
    #[arg(long)]
    pub shards: Option<u16>,
    /// The pool of distinct buyers; arrival n is buyer n mod users.
    #[arg(long)]
    pub users: Option<u64>,
    /// Units a buyer may hold or buy.
    #[arg(long)]
    pub per_user_limit: Option<u32>,
    /// Units per reserve.
    #[arg(long)]
    pub quantity: Option<u32>,
    /// Hold length, seconds.
    #[arg(long)]
    pub hold_seconds: Option<f64>,
    /// A constant arrival rate per second (instead of the spike).
    #[arg(long, conflicts_with = "peak")]
    pub rate: Option<f64>,
    /// Spike: peak arrivals per second.
    #[arg(long)]
    pub peak: Option<f64>,
    /// Spike: ms to climb to the peak.
    #[arg(long, conflicts_with = "rate")]
    pub ramp_ms: Option<u64>,
    /// Spike: ms at the peak.
    #[arg(long, conflicts_with = "rate")]
    pub hold_ms: Option<u64>,
    /// Spike: ms to fall to the tail rate.
    #[arg(long, conflicts_with = "rate")]
    pub decay_ms: Option<u64>,
    /// Spike: arrivals per second after the fall.
    #[arg(long, conflicts_with = "rate")]
    pub tail: Option<f64>,
    /// How long arrivals come, ms.
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// Share of holders who confirm.
    #[arg(long)]
    pub confirm_share: Option<f64>,
    /// Share of holders who cancel (the rest abandon).
    #[arg(long)]
    pub cancel_share: Option<f64>,
    /// How long a holder takes to confirm or cancel, ms.
    #[arg(long)]
    pub think_ms: Option<u64>,
    /// Client timeout, ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Times a timed-out reserve is retried with the same idempotency key.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Connections (HTTP/1.1, or HTTP/2 to the gRPC face: one channel each).
    #[arg(long)]
    pub connections: Option<usize>,
    /// How the buyers' calls (reserves, confirms, cancels, carts) reach the engines: http
    /// (HTTP/1.1) or grpc (flashsale.v1.Reservations; with --spawn every engine serves its
    /// gRPC face). Loading the SKU and the checks stay on HTTP.
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Skip the closing wave (then undersell is not checked).
    #[arg(long, conflicts_with = "closing_wave")]
    pub no_closing_wave: bool,
    /// Run the closing wave even if the scenario file turns it off.
    #[arg(long)]
    pub closing_wave: bool,
    /// A second SKU sold with the first in carts: `SKU:STOCK:SHARE`, the share of arrivals
    /// that buy both in one cart (for example `case-1:80:0.3`).
    #[arg(long, value_parser = parse_bundle)]
    pub bundle: Option<Bundle>,
    /// Where report.json, chart.svg and report.html go.
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Extra arguments for the spawned `flashsale serve` (repeat: --engine-arg=--rate-sku --engine-arg=0).
    #[arg(
        long = "engine-arg",
        allow_hyphen_values = true,
        conflicts_with = "target"
    )]
    pub engine_args: Vec<String>,
}

/// Reads `--bundle SKU:STOCK:SHARE`.
fn parse_bundle(text: &str) -> Result<Bundle, String> {
    let bad = || format!("expected SKU:STOCK:SHARE, such as case-1:80:0.3 (got {text:?})");
    let mut parts = text.split(':');
    let (Some(sku), Some(stock), Some(share), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(Bundle {
        sku: sku.to_owned(),
        stock: stock.parse().map_err(|_| bad())?,
        share: share.parse().map_err(|_| bad())?,
    })
}

impl RunArgs {
    /// The scenario: the file's (or the defaults), with the flags over it.
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
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
            quantity,
            hold_seconds,
            duration_ms,
            confirm_share,
            cancel_share,
            think_ms,
            retries,
            timeout_ms,
            connections,
            protocol
        );
        if self.shards.is_some() {
            s.shards = self.shards;
        }
        if let Some(rate) = self.rate {
            s.profile = Profile::Constant { rate };
        }
        // A spike flag over a constant profile starts from the default spike.
        let spike_flags = self.ramp_ms.or(self.hold_ms).or(self.decay_ms).is_some()
            || self.peak.or(self.tail).is_some();
        if spike_flags && matches!(s.profile, Profile::Constant { .. }) {
            s.profile = Scenario::default().profile;
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
        if self.bundle.is_some() {
            s.bundle = self.bundle.clone();
        }
        if self.no_closing_wave {
            s.closing_wave = false;
        }
        if self.closing_wave {
            s.closing_wave = true;
        }
        Ok(s)
    }

    /// Where the engine is and where the outputs go.
    pub fn setup(&self) -> Setup {
        Setup {
            spawn: self.spawn.then(|| SpawnOptions {
                cluster: self.cluster_masters.map(|masters| LocalClusterOptions {
                    masters: masters.into(),
                    replicas: self.replicas.unwrap_or(0).into(),
                }),
                engines: self.engines.map_or(1, usize::from),
                engine_args: self.engine_args.clone(),
                separate_reconciler: self.reconciler_process,
                // Added by the sale when the scenario's protocol (flag or file) is gRPC.
                grpc: false,
            }),
            target: self.target.clone(),
            grpc_target: self.grpc_target.clone(),
            admin_token: self.admin_token.clone(),
            redis_url: self.redis_url.clone(),
            key_prefix: self.key_prefix.clone(),
            database_url: self.database_url.clone(),
            out: self.out.clone(),
            progress: !self.quiet,
        }
    }
}

/// Runs the command; its exit code says whether the sale ended right.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let scenario = args.scenario()?;
            let report = run_sale(&scenario, &args.setup()).await?;
            println!("{report}");
            for file in ["report.json", "report.html", "chart.svg"] {
                println!("{file:<12} {}", args.out.join(file).display());
            }
            if !report.passed {
                return Ok(ExitCode::FAILURE);
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
        Command::Demo(args) => {
            let redis = (!args.redis_url.is_empty())
                .then(|| RedisTarget::parse(&args.redis_url, args.redis_cluster))
                .transpose()?;
            let report = demo::run(&DemoOptions {
                stock: args.stock,
                shards: Some(args.shards),
                users: args.users,
                concurrency: args.concurrency,
                hold: Duration::from_millis(args.hold_ms),
                redis,
            })
            .await?;
            println!("{report}");
            anyhow::ensure!(report.violations.is_empty(), "the demo sale ended wrong");
        }
        Command::Serve(args) => return serve(&args.options()).await,
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
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["flashsale-loadtest", "run"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            other => panic!("parsed {other:?}"),
        }
    }

    /// The flag names `run` takes.
    fn flags() -> Vec<String> {
        let mut cli = Cli::command();
        let run = cli.find_subcommand_mut("run").expect("run").clone();
        run.get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    }

    #[test]
    fn every_scenario_field_is_a_flag() {
        let flags = flags();
        let defaults = serde_json::to_value(Scenario::default()).unwrap();
        let mut fields: Vec<String> = defaults
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "profile")
            .cloned()
            .collect();
        for profile in [Profile::Constant { rate: 1.0 }, Scenario::default().profile] {
            let value = serde_json::to_value(profile).unwrap();
            fields.extend(
                value
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "kind")
                    .cloned(),
            );
        }
        assert!(fields.len() > 20, "{fields:?}");
        for field in fields {
            let flag = field.replace('_', "-");
            assert!(
                flags.contains(&flag),
                "no --{flag} for scenario field {field}"
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_pick_the_profile() {
        let args = run_args(&[
            "--spawn",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/ci.toml"),
            "--think-ms",
            "7",
            "--quantity",
            "2",
            "--rate",
            "300",
            "--no-closing-wave",
        ])
        .unwrap();
        let s = args.scenario().unwrap();
        assert_eq!((s.think_ms, s.quantity, s.sku.as_str()), (7, 2, "ci-sale"));
        assert_eq!(s.profile, Profile::Constant { rate: 300.0 });
        assert!(!s.closing_wave);
        let spike = run_args(&["--spawn", "--rate", "10"]).unwrap();
        assert!(matches!(
            spike.scenario().unwrap().profile,
            Profile::Constant { .. }
        ));
        let back = run_args(&["--spawn", "--peak", "900"]).unwrap();
        assert!(matches!(
            back.scenario().unwrap().profile,
            Profile::Spike { peak, .. } if peak == 900.0
        ));
    }

    #[test]
    fn the_protocol_is_a_flag_and_a_grpc_target_is_for_an_engine_not_spawned() {
        let http = run_args(&["--spawn"]).unwrap();
        assert_eq!(http.scenario().unwrap().protocol, Protocol::Http);
        let grpc = run_args(&["--spawn", "--protocol", "grpc"]).unwrap();
        assert_eq!(grpc.scenario().unwrap().protocol, Protocol::Grpc);
        assert!(run_args(&["--spawn", "--protocol", "h3"]).is_err());
        let elsewhere = run_args(&[
            "--target",
            "http://127.0.0.1:1",
            "--admin-token",
            "t",
            "--protocol",
            "grpc",
            "--grpc-target",
            "127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(
            elsewhere.setup().grpc_target.as_deref(),
            Some("127.0.0.1:2")
        );
        let both = run_args(&["--spawn", "--grpc-target", "127.0.0.1:2"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn where_the_engine_is_is_a_usage_error_when_missing() {
        std::env::remove_var("FLASHSALE_TARGET");
        std::env::remove_var("FLASHSALE_ADMIN_TOKEN");
        let missing = run_args(&[]).unwrap_err();
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let text = missing.to_string();
        assert!(
            text.contains("--target") && text.contains("--admin-token"),
            "{text}"
        );
        let both = run_args(&["--spawn", "--target", "http://127.0.0.1:1"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(run_args(&["--target", "http://127.0.0.1:1", "--admin-token", "t"]).is_ok());
        let stray = run_args(&[
            "--target",
            "http://x",
            "--admin-token",
            "t",
            "--engine-arg=-v",
        ]);
        assert!(stray.is_err(), "--engine-arg needs --spawn");
        assert!(run_args(&["--spawn", "--rate", "1", "--peak", "2"]).is_err());
    }

    #[test]
    fn spawn_takes_a_cluster_and_several_engines() {
        let plain = run_args(&["--spawn"]).unwrap().setup();
        assert_eq!(plain.spawn, Some(SpawnOptions::default()));
        assert_eq!(SpawnOptions::default().engines, 1);
        assert_eq!(SpawnOptions::default().cluster, None);
        let shaped = run_args(&[
            "--spawn",
            "--cluster-masters",
            "3",
            "--replicas",
            "2",
            "--engines",
            "8",
            "--engine-arg=--rate-sku",
            "--engine-arg=0",
            "--reconciler-process",
        ])
        .unwrap()
        .setup();
        assert_eq!(
            shaped.spawn,
            Some(SpawnOptions {
                cluster: Some(LocalClusterOptions {
                    masters: 3,
                    replicas: 2
                }),
                engines: 8,
                engine_args: vec!["--rate-sku".into(), "0".into()],
                separate_reconciler: true,
                grpc: false,
            })
        );
        let bare = run_args(&["--spawn", "--cluster-masters", "5"])
            .unwrap()
            .setup();
        assert_eq!(
            bare.spawn.map(|s| (s.cluster, s.engines)),
            Some((
                Some(LocalClusterOptions {
                    masters: 5,
                    replicas: 0
                }),
                1
            ))
        );
        let two = run_args(&["--spawn", "--engines", "2"]).unwrap().setup();
        assert_eq!(two.spawn.map(|s| (s.cluster, s.engines)), Some((None, 2)));
        let target = run_args(&["--target", "http://127.0.0.1:1", "--admin-token", "t"]);
        assert_eq!(target.unwrap().setup().spawn, None);
    }

    #[test]
    fn wrong_shapes_are_refused_naming_the_flag_and_its_bounds() {
        use clap::error::ErrorKind;
        let refused = |args: &[&str], kind: ErrorKind, says: &[&str]| {
            let error = run_args(args).expect_err(&format!("{args:?} accepted"));
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            let text = error.to_string();
            for words in says {
                assert!(text.contains(words), "{args:?}: {text}");
            }
        };
        let value = ErrorKind::ValueValidation;
        refused(
            &["--spawn", "--cluster-masters", "2"],
            value,
            &["--cluster-masters", "2 is not in 3.."],
        );
        refused(
            &["--spawn", "--cluster-masters", "0"],
            value,
            &["--cluster-masters"],
        );
        refused(
            &["--spawn", "--cluster-masters", "3", "--replicas", "3"],
            value,
            &["--replicas", "3 is not in 0..=2"],
        );
        refused(
            &["--spawn", "--engines", "0"],
            value,
            &["--engines", "0 is not in 1..=8"],
        );
        refused(
            &["--spawn", "--engines", "9"],
            value,
            &["--engines", "9 is not in 1..=8"],
        );
        refused(&["--spawn", "--engines", "two"], value, &["--engines"]);
        // Replicas need a cluster; a cluster and engines need --spawn, and say so beside a
        // running engine's --target.
        let missing = ErrorKind::MissingRequiredArgument;
        refused(
            &["--spawn", "--replicas", "1"],
            missing,
            &["--cluster-masters"],
        );
        let elsewhere = ["--target", "http://127.0.0.1:1", "--admin-token", "t"];
        for (flag, value) in [("--cluster-masters", "3"), ("--engines", "2")] {
            refused(&[flag, value], missing, &["--spawn"]);
            let args: Vec<&str> = elsewhere.iter().copied().chain([flag, value]).collect();
            refused(&args, ErrorKind::ArgumentConflict, &["--target", flag]);
        }
        let args: Vec<&str> = elsewhere
            .iter()
            .copied()
            .chain(["--replicas", "1"])
            .collect();
        refused(
            &args,
            ErrorKind::ArgumentConflict,
            &["--target", "--replicas"],
        );
    }

    fn serve_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["flashsale-loadtest", "serve"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(args),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn serve_takes_a_cluster_shape_and_passes_the_rest_to_the_engine() {
        let single = serve_args(&["--", "--admin-token", "t", "--rate-sku", "0"]).unwrap();
        assert_eq!(single.options().cluster, None);
        assert_eq!(
            single.options().engine_args,
            ["--admin-token", "t", "--rate-sku", "0"]
        );
        let cluster = serve_args(&["--cluster-masters", "3", "--replicas", "1"]).unwrap();
        assert_eq!(
            cluster.options().cluster,
            Some(LocalClusterOptions {
                masters: 3,
                replicas: 1
            })
        );
        assert!(cluster.options().engine_args.is_empty());
        let bare = serve_args(&["--cluster-masters", "4"]).unwrap();
        assert_eq!(bare.options().cluster.map(|c| c.replicas), Some(0));
        // The engine's flags may come without `--` (as scripts/serve.sh passes them), after
        // the command's own; from the first of them on, everything is the engine's.
        let plain = serve_args(&["--admin-token", "t", "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(plain.options().cluster, None);
        assert_eq!(
            plain.options().engine_args,
            ["--admin-token", "t", "--listen", "127.0.0.1:0"]
        );
        for args in [
            &["--cluster-masters", "3", "--admin-token", "t"][..],
            &["--cluster-masters", "3", "--", "--admin-token", "t"],
        ] {
            let mixed = serve_args(args).unwrap();
            assert_eq!(mixed.options().cluster.map(|c| c.masters), Some(3));
            assert_eq!(mixed.options().engine_args, ["--admin-token", "t"]);
        }
        let late = serve_args(&["--admin-token", "t", "--cluster-masters", "3"]).unwrap();
        assert_eq!(
            late.options().cluster,
            None,
            "the engine's, after its flags"
        );
        // A cluster needs three masters; replicas need a cluster.
        for wrong in [&["--cluster-masters", "2"][..], &["--replicas", "1"]] {
            assert!(serve_args(wrong).is_err(), "{wrong:?} accepted");
        }
    }
}
