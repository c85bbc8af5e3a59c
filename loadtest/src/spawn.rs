//! `--spawn`: a private Redis (one server or a Redis Cluster) and the engine itself, one or
//! several `flashsale serve` processes sharing it, the key prefix and an SQLite ledger in a
//! temporary directory, so that one command shows a whole sale on a fresh machine.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale::ids::random_token;
use flashsale::ledger::Ledger;
use flashsale_testkit::{free_port, LocalClusterOptions};
use serde::Serialize;

use crate::client::{Call, Connection, Target};
use crate::cpu::{Processes, Watched};
use crate::private_redis::PrivateRedis;

/// The most engines `--engines` starts: they share two cores with Redis and the generator.
pub const MAX_ENGINES: usize = 8;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnOptions {
    /// A Redis Cluster of this shape instead of one Redis.
    pub cluster: Option<LocalClusterOptions>,
    /// `flashsale serve` processes, 1 to [`MAX_ENGINES`].
    pub engines: usize,
    /// More arguments for every `flashsale serve`.
    pub engine_args: Vec<String>,
    /// Settle the streams into the ledger in a `flashsale reconcile` process of its own,
    /// the engines started with `--no-reconcile`, instead of inside every engine.
    pub separate_reconciler: bool,
    /// Every engine also serves its gRPC face (`--grpc-listen 127.0.0.1:<free port>`), for
    /// a load over gRPC; its address is in the engine's [`Target::grpc`].
    pub grpc: bool,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            cluster: None,
            engines: 1,
            engine_args: Vec::new(),
            separate_reconciler: false,
            grpc: false,
        }
    }
}

impl SpawnOptions {
    /// One engine on one Redis with `engine_args`.
    pub fn single(engine_args: &[String]) -> Self {
        Self {
            engine_args: engine_args.to_vec(),
            ..Self::default()
        }
    }
}

/// One running `flashsale serve`.
pub struct Engine {
    /// Its base URL.
    pub base: String,
    /// Where requests to it go (its gRPC face too, when it serves one).
    pub target: Target,
    /// Its log (stderr).
    log: PathBuf,
    child: Child,
}

impl Engine {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process to measure, named `engine <n>`.
    pub fn watched(&self, n: usize) -> Watched {
        Watched {
            name: format!("engine {n}"),
            pid: self.pid(),
        }
    }
}

/// What ran a sale: the Redis topology and the engines, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// `single` (one Redis) or `cluster`.
    pub redis: &'static str,
    /// Masters (1 for one Redis).
    pub masters: usize,
    /// Replicas per master.
    pub replicas: usize,
    /// `flashsale serve` processes sharing it.
    pub engines: usize,
    /// How many of the SKU's shards each master holds, by `127.0.0.1:<port>`.
    pub shards_per_master: BTreeMap<String, u16>,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.redis {
            "cluster" => {
                let replicas = if self.replicas == 1 {
                    "replica"
                } else {
                    "replicas"
                };
                write!(
                    f,
                    "Redis Cluster of {} masters ({} {replicas} each)",
                    self.masters, self.replicas
                )?
            }
            _ => f.write_str("one Redis")?,
        }
        let plural = if self.engines == 1 { "" } else { "s" };
        write!(f, ", {} engine{plural}", self.engines)?;
        if self.redis == "cluster" {
            let spread: Vec<String> = self
                .shards_per_master
                .iter()
                .map(|(master, n)| format!("{master} {n}"))
                .collect();
            write!(f, "; shards per master: {}", spread.join(", "))?;
        }
        Ok(())
    }
}

/// The `flashsale` binary next to this one (both are built by `cargo build`).
pub fn engine_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me
        .parent()
        .map(|dir| dir.join("flashsale"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no flashsale binary next to {}; run `cargo build --release --workspace`",
                me.display()
            )
        })?;
    Ok(path)
}

/// Whether `target` answers `GET /healthz` with 200 now.
async fn healthy(target: &Target) -> bool {
    let Ok(mut conn) = Connection::open(target).await else {
        return false;
    };
    let call = Call::Get {
        path: "/healthz".into(),
    };
    matches!(conn.send(&call).await, Ok(answer) if answer.status == 200)
}

/// Waits until `target` answers `GET /healthz`.
pub async fn wait_healthy(target: &Target, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while !healthy(target).await {
        anyhow::ensure!(
            started.elapsed() < within,
            "{} did not come up",
            target.base()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A free port for an engine's gRPC face, other than its HTTP `port` (which is free until
/// the engine binds it, so the system may offer it again).
fn grpc_port(port: u16) -> std::io::Result<u16> {
    loop {
        let grpc = free_port()?;
        if grpc != port {
            return Ok(grpc);
        }
    }
}

/// The last lines of a log, to say why a process stopped.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Running engines and their private Redis; all stop when this drops.
pub struct Spawned {
    /// The engines' Redis.
    pub redis: PrivateRedis,
    /// The engines, in start order; the first loads SKUs and answers the checks' reads.
    pub engines: Vec<Engine>,
    /// Their admin token.
    pub admin_token: String,
    /// Their key prefix.
    pub prefix: String,
    /// Their ledger.
    pub database_url: String,
    /// `flashsale reconcile`, when it runs in a process of its own.
    reconciler: Option<Child>,
    dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts a private Redis and the engines on it; `options.engine_args` go to every
    /// `flashsale serve`.
    pub async fn start(options: &SpawnOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=MAX_ENGINES).contains(&options.engines),
            "engines must be 1 to {MAX_ENGINES}, not {}",
            options.engines
        );
        let redis = PrivateRedis::start(options.cluster)?;
        let dir = tempfile::Builder::new()
            .prefix("flashsale-loadtest-")
            .tempdir()?;
        let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
        // The schema first, once: engines starting together would each try to migrate.
        Ledger::connect(&database_url).await?;
        let mut spawned = Self {
            redis,
            engines: Vec::with_capacity(options.engines),
            admin_token: random_token(),
            prefix: format!("lt{}:", random_token()),
            database_url,
            reconciler: None,
            dir,
        };
        let mut engine_args = options.engine_args.clone();
        if options.separate_reconciler {
            spawned.reconciler = Some(spawned.start_reconciler()?);
            engine_args.push("--no-reconcile".into());
        }
        // Should a start fail, dropping `spawned` stops the engines started so far.
        for n in 0..options.engines {
            let engine = spawned.start_engine(n, options.grpc, &engine_args)?;
            spawned.engines.push(engine);
        }
        for engine in &mut spawned.engines {
            wait_up(engine, Duration::from_secs(30)).await?;
        }
        Ok(spawned)
    }

    fn start_engine(&self, n: usize, grpc: bool, extra: &[String]) -> anyhow::Result<Engine> {
        let port = free_port()?;
        let grpc = grpc.then(|| grpc_port(port)).transpose()?;
        let log = self.dir.path().join(format!("engine-{n}.log"));
        let child = Command::new(engine_binary()?)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(
                grpc.iter()
                    .flat_map(|port| ["--grpc-listen".to_owned(), format!("127.0.0.1:{port}")]),
            )
            .args(self.redis.engine_args())
            .args(["--key-prefix", &self.prefix])
            .args(["--admin-token", &self.admin_token])
            .args(["--database-url", &self.database_url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut target = Target::parse(&base)?;
        if let Some(port) = grpc {
            target = target.with_grpc(&format!("127.0.0.1:{port}"))?;
        }
        Ok(Engine {
            target,
            base,
            log,
            child,
        })
    }

    fn start_reconciler(&self) -> anyhow::Result<Child> {
        let log = self.dir.path().join("reconcile.log");
        Ok(Command::new(engine_binary()?)
            .arg("reconcile")
            .args(self.redis.engine_args())
            .args(["--key-prefix", &self.prefix])
            .args(["--database-url", &self.database_url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?)
    }

    /// Every process to measure: the engines, each Redis master and a separate reconciler.
    pub fn processes(&self) -> anyhow::Result<Processes> {
        Ok(Processes {
            server: self
                .engines
                .iter()
                .enumerate()
                .map(|(n, e)| e.watched(n))
                .collect(),
            store: self.redis.masters()?.iter().map(|m| m.watched()).collect(),
            reconciler: self
                .reconciler
                .iter()
                .map(|child| Watched {
                    name: "reconciler".into(),
                    pid: child.id(),
                })
                .collect(),
        })
    }

    /// The first engine's base URL.
    pub fn base(&self) -> &str {
        &self.engines[0].base
    }

    /// Where each engine takes requests, in start order.
    pub fn targets(&self) -> Vec<Target> {
        self.engines.iter().map(|e| e.target.clone()).collect()
    }

    /// The topology, with the spread of `sku`'s `shards` over the masters.
    pub fn topology(&self, sku: &flashsale::ids::Sku, shards: u16) -> anyhow::Result<Topology> {
        let shards_per_master = self.redis.shards_per_master(&self.prefix, sku, shards)?;
        Ok(match self.redis.cluster() {
            None => Topology {
                redis: "single",
                masters: 1,
                replicas: 0,
                engines: self.engines.len(),
                shards_per_master,
            },
            Some(cluster) => {
                let masters = self.redis.masters()?.len();
                let nodes = cluster.nodes()?.len();
                Topology {
                    redis: "cluster",
                    masters,
                    replicas: (nodes / masters.max(1)).saturating_sub(1),
                    engines: self.engines.len(),
                    shards_per_master,
                }
            }
        })
    }
}

/// Waits until `engine` answers `GET /healthz`; fails at once, with its log, if it exits.
async fn wait_up(engine: &mut Engine, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while !healthy(&engine.target).await {
        if let Some(status) = engine.child.try_wait()? {
            anyhow::bail!(
                "flashsale serve on {} exited ({status}):\n{}",
                engine.base,
                log_tail(&engine.log)
            );
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{} did not come up within {within:?}:\n{}",
            engine.base,
            log_tail(&engine.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SIGTERM lets every engine finish what is in flight; then make sure they are gone.
        for engine in &self.engines {
            let _ = Command::new("kill")
                .args(["-TERM", &engine.pid().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for engine in &mut self.engines {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = engine.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = engine.child.kill();
            let _ = engine.child.wait();
        }
        // The reconciler stops at once: what it has not settled stays in the streams.
        if let Some(mut reconciler) = self.reconciler.take() {
            let _ = reconciler.kill();
            let _ = reconciler.wait();
        }
        // The Redis and the directory go after the engines, as the fields drop.
    }
}
