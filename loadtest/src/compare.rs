//! The engine beside its alternatives, measured in one run on one machine with one load
//! generator, reported as ratios: absolute figures drift with whatever else the shared
//! machine is doing, ratios from the same run much less.
//!
//! Each server runs as its own process (the engine as `flashsale serve`, the baselines as
//! `flashsale-loadtest baseline ...`), each with its own private Redis or PostgreSQL.

use std::collections::BTreeMap;
use std::fmt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::Sku;
use flashsale::keys::KeySpace;
use flashsale_testkit::{free_port, LocalCluster, LocalClusterOptions, LocalPostgres, LocalRedis};
use serde::Serialize;
use serde_json::json;

use crate::client::{put_json, Call, Connection, Target};
use crate::cpu::{cpu_time, CpuPer, Processes, RequestCpu, RequestCpuMeter, Watched};
use crate::private_redis::{pid_of, ScriptStats};
use crate::protocol::Protocol;
use crate::run::{offer, saturate};
use crate::spawn::{wait_healthy, SpawnOptions, Spawned};
use crate::stats::{Percentiles, Recorder};

/// Masters of the cluster row.
const CLUSTER_MASTERS: usize = 3;

/// Shards of the hot SKU in the cluster row: a multiple of the masters, so that they can
/// hold three each (8, as in the single-Redis row, would leave one master a third less).
const CLUSTER_SHARDS: u16 = 9;

/// How far above its fair share (1/N of the Redis CPU) a master may go, in points of the
/// total, for the load to count as spread.
const SPREAD_SLACK: f64 = 0.10;

/// How long and how hard to measure.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Seconds per measurement.
    pub seconds: u64,
    /// Connections of the closed-loop measurements.
    pub connections: usize,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Answers per second.
    pub rps: f64,
    /// Answers by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency of all answers, ms.
    pub latency_ms: Percentiles,
    /// CPU of every process over the answers of the measured window (the warm-up left
    /// out), µs per request: the project's main figure.
    pub cpu: RequestCpu,
}

/// The overload measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Overload {
    /// Requests per second offered (open loop).
    pub offered_rps: f64,
    /// Requests per second the generator actually sent.
    pub sent_rps: f64,
    /// Reservations made per second.
    pub goodput_rps: f64,
    /// p99 latency of accepted reserves (201), ms.
    pub accepted_p99_ms: f64,
    /// p99 latency of refusals (429, 503, 409), ms.
    pub refused_p99_ms: f64,
    /// p99 of accepted reserves from their actual send (the server's part), ms.
    pub accepted_service_p99_ms: f64,
    /// p99 of refusals from their actual send (the server's part), ms.
    pub refused_service_p99_ms: f64,
    /// Answers by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// CPU of every process over the requests answered.
    pub cpu: RequestCpu,
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The target, in words.
    pub target: String,
    /// The measured value, in words.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

/// What a reserve row's scripts cost Redis, from before its warm-up to its end, over the
/// reservations made.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptCost {
    /// Reservations made (the warm-up's included).
    pub reservations: u64,
    /// Redis time inside scripts (`INFO commandstats`, summed over the masters), µs per
    /// reservation.
    pub redis_script_us: f64,
    /// Script calls (coalescing makes them fewer than the reservations).
    pub script_calls: u64,
}

/// A shard slot moved before the cluster row, as an operator would with `redis-cli
/// --cluster reshard`.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    /// The shard.
    pub shard: u16,
    /// Its hash slot.
    pub slot: u16,
    /// The master it was on, `127.0.0.1:<port>`.
    pub from: String,
    /// The master it went to.
    pub to: String,
}

/// The engine on a Redis Cluster, with the reserve load of the single-Redis row.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRow {
    /// Masters.
    pub masters: usize,
    /// Shards of the hot SKU.
    pub shards: u16,
    /// Shards per master as their hash slots put them, before any move.
    pub shards_per_master_by_hash: BTreeMap<String, u16>,
    /// Slots moved to even them out (none when the hash already did).
    pub placed: Vec<Placement>,
    /// Shards per master during the row.
    pub shards_per_master: BTreeMap<String, u16>,
    /// What the row's scripts cost.
    pub scripts: ScriptCost,
    /// Redis CPU per reservation, master by master (the row's `cpu.store`).
    pub redis_cpu: CpuPer,
    /// The largest share of the Redis CPU one master had.
    pub max_share: f64,
    /// The most a master may have for the load to count as spread: 1/N plus 10 points.
    pub share_bound: f64,
    /// No master above the bound.
    pub spread: bool,
}

/// The engine's gRPC Reserve beside its `POST /v1/reservations`: the same engine process,
/// SKU and closed loop, as many connections (HTTP/1.1, or HTTP/2 with one channel each),
/// one row after the other. A reserve's work in Redis is the same; what differs is the
/// face's: HTTP/2 framing and protobuf where HTTP/1.1 has its parser and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct GrpcVsHttp {
    /// The engine's CPU per reservation over HTTP/1.1, µs.
    pub http_server_us: f64,
    /// The same over gRPC, µs.
    pub grpc_server_us: f64,
    /// gRPC's engine CPU per reservation over HTTP's: above 1, a reserve costs the engine
    /// more over gRPC.
    pub server_ratio: f64,
    /// Redis CPU per reservation over HTTP/1.1, µs.
    pub http_store_us: f64,
    /// The same over gRPC, µs.
    pub grpc_store_us: f64,
    /// The generator's CPU per request over HTTP/1.1 and over gRPC, µs (its client differs
    /// too).
    pub http_generator_us: f64,
    /// The same over gRPC, µs.
    pub grpc_generator_us: f64,
    /// gRPC's answers per second over HTTP's.
    pub rps_ratio: f64,
}

impl GrpcVsHttp {
    fn of(http: &Measurement, grpc: &Measurement) -> Self {
        let (h, g) = (&http.cpu, &grpc.cpu);
        Self {
            http_server_us: h.server.total_us,
            grpc_server_us: g.server.total_us,
            server_ratio: g.server.total_us / h.server.total_us.max(1e-9),
            http_store_us: h.store.total_us,
            grpc_store_us: g.store.total_us,
            http_generator_us: h.generator.total_us,
            grpc_generator_us: g.generator.total_us,
            rps_ratio: grpc.rps / http.rps.max(1e-9),
        }
    }
}

impl fmt::Display for GrpcVsHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gRPC Reserve vs HTTP POST /v1/reservations (same engine, same load): engine CPU \
             {:.2}x ({:.1} us vs {:.1} us per reservation); Redis {:.1} us vs {:.1} us; \
             generator {:.1} us vs {:.1} us; req/s {:.2}x",
            self.server_ratio,
            self.grpc_server_us,
            self.http_server_us,
            self.grpc_store_us,
            self.http_store_us,
            self.grpc_generator_us,
            self.http_generator_us,
            self.rps_ratio
        )
    }
}

/// Everything the comparison measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The closed-loop measurements, in order.
    pub measurements: Vec<Measurement>,
    /// What the single-Redis reserve row's scripts cost.
    pub scripts: ScriptCost,
    /// The engine on a 3-master cluster (also a row of `measurements`).
    pub cluster: ClusterRow,
    /// The engine's reserve over gRPC beside the same over HTTP/1.1 (both rows of
    /// `measurements`).
    pub grpc: GrpcVsHttp,
    /// Redis script time per reservation made by the engine, µs.
    pub redis_us_per_reservation: f64,
    /// Script calls per reservation (coalescing makes it below 1).
    pub script_calls_per_reservation: f64,
    /// What settling one event into SQLite cost the reconciler in its own process (its
    /// reads, acknowledgements and trims in Redis, the decoding and the SQL), µs of its
    /// CPU per event: the reserve row with a separate reconciler, one event per
    /// reservation.
    pub settle_us_per_event: f64,
    /// The overload run.
    pub overload: Overload,
    /// The targets.
    pub verdicts: Vec<Verdict>,
}

/// A baseline server process, stopped on drop.
struct Process(Child);

impl Process {
    fn watched(&self) -> Watched {
        Watched {
            name: "server".into(),
            pid: self.0.id(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn baseline_process(args: &[&str]) -> anyhow::Result<(Process, Target)> {
    let port = free_port()?;
    let child = Command::new(std::env::current_exe()?)
        .arg("baseline")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((
        Process(child),
        Target::parse(&format!("http://127.0.0.1:{port}"))?,
    ))
}

fn reserve_call(sku: &'static str) -> Arc<dyn Fn(u64) -> Call + Send + Sync> {
    reserve_call_by(sku, "u")
}

/// Reserves of one unit of `sku` by buyers `<buyers>0`, `<buyers>1`, ...: a row on an
/// engine another row has loaded takes buyers of its own, or its reserves would be the
/// other row's replays (or over the per-user limit).
fn reserve_call_by(
    sku: &'static str,
    buyers: &'static str,
) -> Arc<dyn Fn(u64) -> Call + Send + Sync> {
    Arc::new(move |n| Call::Reserve {
        sku: sku.to_owned(),
        user: format!("{buyers}{n}"),
        quantity: 1,
        key: "k".to_owned(),
    })
}

/// The processes of a row, listed after its warm-up (when every connection is open, and
/// PostgreSQL has a backend for each).
type ProcessesOf<'a> = &'a (dyn Fn() -> anyhow::Result<Processes> + Sync);

/// A closed-loop row: `make(n)` over `protocol` on `options.connections` connections, after
/// a warm-up, with the CPU of `processes` over its answers.
async fn measure(
    name: &str,
    target: &Target,
    protocol: Protocol,
    options: &CompareOptions,
    make: Arc<dyn Fn(u64) -> Call + Send + Sync>,
    processes: ProcessesOf<'_>,
) -> anyhow::Result<Measurement> {
    // A short warm-up first: connections open, scripts loaded, caches warm.
    saturate(
        target,
        protocol,
        options.connections,
        Duration::from_millis(500),
        make.clone(),
    )
    .await?;
    let meter = RequestCpuMeter::start(processes()?)?;
    let (recorder, elapsed) = saturate(
        target,
        protocol,
        options.connections,
        Duration::from_secs(options.seconds),
        make,
    )
    .await?;
    let cpu = meter.read(recorder.overall.len())?;
    let measurement = Measurement {
        name: name.to_owned(),
        rps: recorder.overall.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        outcomes: recorder.outcomes(),
        latency_ms: Percentiles::of(&recorder.overall),
        cpu,
    };
    eprintln!(
        "  {name}: {:.0}/s, server {:.1} us, store {:.1} us per request",
        measurement.rps, measurement.cpu.server.total_us, measurement.cpu.store.total_us
    );
    Ok(measurement)
}

fn verdict(target: &str, measured: String, met: bool) -> Verdict {
    Verdict {
        target: target.to_owned(),
        measured,
        met,
    }
}

/// The engine's reserve row, over HTTP/1.1.
const HTTP_RESERVE_ROW: &str = "engine POST /v1/reservations";

/// The same engine's reserve over its gRPC face.
const GRPC_RESERVE_ROW: &str = "engine gRPC Reserve";

/// The SKU every reserve row sells.
const BENCH_SKU: &str = "bench";

/// A SKU that never runs out (1e9 units, holds of an hour) over `shards`.
fn huge_sku(shards: u16) -> serde_json::Value {
    json!({ "stock": 1_000_000_000u64, "shards": shards, "hold_seconds": 3600 })
}

/// The script counters of a reserve row, read before its warm-up.
struct ScriptMeter(ScriptStats);

impl ScriptMeter {
    fn start(engine: &Spawned) -> anyhow::Result<Self> {
        Ok(Self(engine.redis.script_stats()?))
    }

    /// What the row's scripts cost since the start, over `reservations`.
    fn cost(&self, engine: &Spawned, reservations: u64) -> anyhow::Result<ScriptCost> {
        let scripts = engine.redis.script_stats()?.since(self.0);
        Ok(ScriptCost {
            reservations,
            redis_script_us: scripts.usec as f64 / reservations as f64,
            script_calls: scripts.calls,
        })
    }
}

/// `GET /v1/skus/{sku}`: the SKU as the engine shows it, with the ledger's `settled`.
async fn sku_view(target: &Target, sku: &str) -> anyhow::Result<serde_json::Value> {
    Connection::open(target)
        .await?
        .json(&Call::Get {
            path: format!("/v1/skus/{sku}"),
        })
        .await
}

/// Reserves made of `sku` so far, by the SKU's own figures (the warm-up made some too).
async fn reservations_of(target: &Target, sku: &str) -> anyhow::Result<u64> {
    let view = sku_view(target, sku).await?;
    Ok(view["held"].as_u64().unwrap_or(0).max(1))
}

/// Shards of `sku` per master, by `127.0.0.1:<port>` (every master listed).
pub fn shards_by_master(
    cluster: &LocalCluster,
    keys: &KeySpace,
    sku: &Sku,
    shards: u16,
) -> anyhow::Result<BTreeMap<String, Vec<u16>>> {
    let mut by_master: BTreeMap<String, Vec<u16>> = cluster
        .masters()?
        .iter()
        .map(|m| (format!("127.0.0.1:{}", m.port), Vec::new()))
        .collect();
    for shard in 0..shards {
        let owner = cluster.master_of(&keys.shard(sku, shard).hash)?;
        by_master
            .entry(format!("127.0.0.1:{}", owner.port))
            .or_default()
            .push(shard);
    }
    Ok(by_master)
}

fn counts(by_master: &BTreeMap<String, Vec<u16>>) -> BTreeMap<String, u16> {
    by_master
        .iter()
        .map(|(m, shards)| (m.clone(), shards.len() as u16))
        .collect()
}

/// Moves shard slots from the master with the most shards to the one with the fewest until
/// no two differ by more than one, as an operator would before a sale; returns the moves.
pub fn place_evenly(
    cluster: &LocalCluster,
    keys: &KeySpace,
    sku: &Sku,
    shards: u16,
) -> anyhow::Result<Vec<Placement>> {
    let mut placed = Vec::new();
    // Each move takes one shard off the fullest master; two shards sharing a slot move
    // together, so the bound only stops a loop that could not converge.
    for _ in 0..2 * usize::from(shards) {
        let by_master = shards_by_master(cluster, keys, sku, shards)?;
        let fullest = by_master.iter().max_by_key(|(_, s)| s.len());
        let emptiest = by_master.iter().min_by_key(|(_, s)| s.len());
        let (Some((from, moving)), Some((to, have))) = (fullest, emptiest) else {
            break;
        };
        if moving.len() <= have.len() + 1 {
            break;
        }
        let shard = moving[0];
        let port: u16 = to.rsplit(':').next().unwrap_or_default().parse()?;
        let slot = cluster.move_slot_of(&keys.shard(sku, shard).hash, port)?;
        placed.push(Placement {
            shard,
            slot,
            from: from.clone(),
            to: to.clone(),
        });
    }
    Ok(placed)
}

/// The engine on a 3-master cluster, with the reserve load of the single-Redis row.
async fn cluster_row(
    options: &CompareOptions,
    engine_args: &[String],
) -> anyhow::Result<(Measurement, ClusterRow)> {
    eprintln!(
        "engine on a {CLUSTER_MASTERS}-master Redis Cluster ({CLUSTER_SHARDS} shards, the same \
         reserve load)"
    );
    let engine = Spawned::start(&SpawnOptions {
        cluster: Some(LocalClusterOptions {
            masters: CLUSTER_MASTERS,
            replicas: 0,
        }),
        engines: 1,
        engine_args: engine_args.to_vec(),
        separate_reconciler: false,
        grpc: false,
    })
    .await?;
    let cluster = engine
        .redis
        .cluster()
        .ok_or_else(|| anyhow::anyhow!("the cluster row started no cluster"))?;
    let keys = KeySpace::new(&engine.prefix)?;
    let sku: Sku = BENCH_SKU.parse()?;
    let by_hash = counts(&shards_by_master(cluster, &keys, &sku, CLUSTER_SHARDS)?);
    let placed = place_evenly(cluster, &keys, &sku, CLUSTER_SHARDS)?;
    for p in &placed {
        eprintln!(
            "  placed shard {} (slot {}) from {} on {}",
            p.shard, p.slot, p.from, p.to
        );
    }
    let shards_per_master = counts(&shards_by_master(cluster, &keys, &sku, CLUSTER_SHARDS)?);
    let target = engine.engines[0].target.clone();
    put_json(
        &target,
        &format!("/v1/skus/{BENCH_SKU}"),
        &engine.admin_token,
        &huge_sku(CLUSTER_SHARDS),
    )
    .await?;
    let meter = ScriptMeter::start(&engine)?;
    let measurement = measure(
        &format!("engine POST /v1/reservations, {CLUSTER_MASTERS}-master cluster"),
        &target,
        Protocol::Http,
        options,
        reserve_call(BENCH_SKU),
        &|| engine.processes(),
    )
    .await?;
    let reservations = reservations_of(&target, BENCH_SKU).await?;
    let scripts = meter.cost(&engine, reservations)?;
    let redis_cpu = measurement.cpu.store.clone();
    let max_share = redis_cpu.max_share();
    let share_bound = 1.0 / CLUSTER_MASTERS as f64 + SPREAD_SLACK;
    let row = ClusterRow {
        masters: CLUSTER_MASTERS,
        shards: CLUSTER_SHARDS,
        shards_per_master_by_hash: by_hash,
        placed,
        shards_per_master,
        max_share,
        share_bound,
        spread: max_share <= share_bound,
        scripts,
        redis_cpu,
    };
    Ok((measurement, row))
}

/// The engine's flags of the closed-loop rows: no rate limit, no in-flight bound, no
/// periodic audit: the engine's own cost per request, nothing refused.
fn no_limits() -> Vec<String> {
    [
        "--rate-global",
        "0",
        "--rate-sku",
        "0",
        "--max-in-flight",
        "100000",
        "--audit-interval-s",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The rows of one engine on a private Redis: reserve (reconciler in-process), the
/// ceiling, reserve over gRPC, a sold-out SKU and refusals by the rate limit; with the
/// script cost of the reserve row.
async fn engine_rows(options: &CompareOptions) -> anyhow::Result<(Vec<Measurement>, ScriptCost)> {
    eprintln!(
        "engine (flashsale serve, private Redis, SQLite ledger, reconciler in-process, gRPC face \
         on)"
    );
    // The gRPC face is served from the start, so that the HTTP rows run on the very process
    // the gRPC row measures.
    let engine = Spawned::start(&SpawnOptions {
        grpc: true,
        ..SpawnOptions::single(&no_limits())
    })
    .await?;
    let target = engine.engines[0].target.clone();
    let processes = || engine.processes();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge_sku(8)).await?;
    put_json(
        &target,
        "/v1/skus/gone",
        &engine.admin_token,
        &json!({ "stock": 1 }),
    )
    .await?;
    let meter = ScriptMeter::start(&engine)?;
    let mut rows = vec![
        measure(
            HTTP_RESERVE_ROW,
            &target,
            Protocol::Http,
            options,
            reserve_call(BENCH_SKU),
            &processes,
        )
        .await?,
    ];
    // The warm-up made reservations too: count them by the SKU's own figures.
    let scripts = meter.cost(&engine, reservations_of(&target, BENCH_SKU).await?)?;
    rows.push(
        measure(
            "same server GET /healthz (ceiling)",
            &target,
            Protocol::Http,
            options,
            Arc::new(|_| Call::Get {
                path: "/healthz".into(),
            }),
            &processes,
        )
        .await?,
    );
    // The same reserve over the gRPC face: same process, SKU, loop and connections (one
    // HTTP/2 connection each), buyers of its own.
    rows.push(
        measure(
            GRPC_RESERVE_ROW,
            &target,
            Protocol::Grpc,
            options,
            reserve_call_by(BENCH_SKU, "g"),
            &processes,
        )
        .await?,
    );
    // Sell the one unit, let the flag and the recorded keys settle, then measure.
    saturate(
        &target,
        Protocol::Http,
        4,
        Duration::from_millis(500),
        reserve_call("gone"),
    )
    .await?;
    rows.push(
        measure(
            "engine reserve of a sold-out SKU",
            &target,
            Protocol::Http,
            options,
            reserve_call("gone"),
            &processes,
        )
        .await?,
    );
    drop(engine);

    // Refused by admission before any Redis call: what a refusal costs under overload,
    // whatever rate the generator manages to offer.
    eprintln!("engine refusing by its per-SKU rate limit (1 reserve/s)");
    let mut limited = no_limits();
    if let Some(rate) = limited.iter().position(|a| a == "--rate-sku") {
        limited[rate + 1] = "1".into();
    }
    limited.extend(["--burst-sku", "1"].map(String::from));
    let engine = Spawned::start(&SpawnOptions::single(&limited)).await?;
    let target = engine.engines[0].target.clone();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge_sku(8)).await?;
    rows.push(
        measure(
            "engine reserve refused by the rate limit (429)",
            &target,
            Protocol::Http,
            options,
            reserve_call(BENCH_SKU),
            &|| engine.processes(),
        )
        .await?,
    );
    Ok((rows, scripts))
}

/// One engine on a private Redis with the reserve load, started with `spawn`.
async fn reserve_row(
    name: &str,
    options: &CompareOptions,
    spawn: &SpawnOptions,
) -> anyhow::Result<Measurement> {
    let engine = Spawned::start(spawn).await?;
    let target = engine.engines[0].target.clone();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge_sku(8)).await?;
    measure(
        name,
        &target,
        Protocol::Http,
        options,
        reserve_call(BENCH_SKU),
        &|| engine.processes(),
    )
    .await
}

/// The reserve row with the reconciler in a `flashsale reconcile` process of its own, and
/// what settling costs it: its whole CPU time, from its start until the ledger holds every
/// reservation made, over those reservations (one event each), µs.
async fn settle_row(options: &CompareOptions) -> anyhow::Result<(Measurement, f64)> {
    eprintln!("engine with its reconciler in a process of its own (flashsale reconcile)");
    let engine = Spawned::start(&SpawnOptions {
        separate_reconciler: true,
        ..SpawnOptions::single(&no_limits())
    })
    .await?;
    let target = engine.engines[0].target.clone();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge_sku(8)).await?;
    let row = measure(
        "engine POST /v1/reservations, reconciler apart",
        &target,
        Protocol::Http,
        options,
        reserve_call(BENCH_SKU),
        &|| engine.processes(),
    )
    .await?;
    let made = reservations_of(&target, BENCH_SKU).await?;
    let started = std::time::Instant::now();
    loop {
        let view = sku_view(&target, BENCH_SKU).await?;
        if view["settled"]["reservations"].as_u64() >= Some(made) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the reconciler settled {} of {made} reservations in a minute",
            view["settled"]["reservations"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reconciler = engine.processes()?.reconciler;
    let used: Duration = reconciler
        .iter()
        .map(|p| cpu_time(p.pid))
        .sum::<std::io::Result<Duration>>()?;
    Ok((row, used.as_secs_f64() * 1e6 / made as f64))
}

/// A baseline server on its private store, with the reserve load.
async fn baseline_row(
    name: &str,
    options: &CompareOptions,
    args: &[&str],
    store: &(dyn Fn() -> anyhow::Result<Vec<Watched>> + Sync),
) -> anyhow::Result<Measurement> {
    let (server, target) = baseline_process(args)?;
    wait_healthy(&target, Duration::from_secs(30)).await?;
    put_json(&target, "/v1/skus/bench", "", &huge_sku(8)).await?;
    measure(
        name,
        &target,
        Protocol::Http,
        options,
        reserve_call(BENCH_SKU),
        &|| {
            Ok(Processes {
                server: vec![server.watched()],
                store: store()?,
                reconciler: Vec::new(),
            })
        },
    )
    .await
}

/// 5x `peak`, open loop, against an engine whose per-SKU rate limit is the peak.
async fn overload(options: &CompareOptions, peak: f64) -> anyhow::Result<Overload> {
    eprintln!("overload: 5x the measured peak, open loop");
    let limits: Vec<String> = vec![
        "--rate-sku".into(),
        format!("{}", peak.round() as u64),
        "--burst-sku".into(),
        format!("{}", (peak / 20.0).round().max(1.0) as u64),
        "--audit-interval-s".into(),
        "0".into(),
    ];
    let engine = Spawned::start(&SpawnOptions::single(&limits)).await?;
    let target = engine.engines[0].target.clone();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge_sku(8)).await?;
    let offered = peak * 5.0;
    let meter = RequestCpuMeter::start(engine.processes()?)?;
    let (recorder, service, elapsed) = offer(
        &target,
        Protocol::Http,
        offered,
        Duration::from_secs(options.seconds),
        options.connections * 4,
        Duration::from_secs(5),
        reserve_call(BENCH_SKU),
    )
    .await?;
    let cpu = meter.read(recorder.overall.len())?;
    drop(engine);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let p99_of = |r: &Recorder, accepted: bool| {
        let mut merged = Recorder::default();
        for (outcome, h) in &r.by_outcome {
            if (outcome == "held") == accepted {
                let _ = merged.overall.add(h);
            }
        }
        Percentiles::of(&merged.overall).p99
    };
    Ok(Overload {
        offered_rps: offered,
        sent_rps: recorder.overall.len() as f64 / secs,
        goodput_rps: recorder.by_outcome.get("held").map_or(0, |h| h.len()) as f64 / secs,
        accepted_p99_ms: p99_of(&recorder, true),
        refused_p99_ms: p99_of(&recorder, false),
        accepted_service_p99_ms: p99_of(&service, true),
        refused_service_p99_ms: p99_of(&service, false),
        outcomes: recorder.outcomes(),
        cpu,
    })
}

/// Runs every measurement.
pub async fn compare(options: &CompareOptions) -> anyhow::Result<Comparison> {
    let (mut measurements, scripts) = engine_rows(options).await?;

    eprintln!("engine with its reconciler paused (events wait in the streams; settled after)");
    let mut paused = no_limits();
    paused.push("--no-reconcile".into());
    measurements.push(
        reserve_row(
            "engine POST /v1/reservations, reconciler paused",
            options,
            &SpawnOptions::single(&paused),
        )
        .await?,
    );

    let (apart, settle_us_per_event) = settle_row(options).await?;
    measurements.push(apart);

    let (cluster_measurement, cluster) = cluster_row(options, &no_limits()).await?;
    measurements.push(cluster_measurement);

    eprintln!("naive baseline (pooled checkout per request, one unsharded DECRBY script)");
    let naive_redis = LocalRedis::start()?;
    measurements.push(
        baseline_row(
            "naive baseline POST /v1/reservations",
            options,
            &["naive", "--redis-url", &naive_redis.url()],
            &|| {
                Ok(vec![Watched {
                    name: "redis".into(),
                    pid: pid_of(&naive_redis)?,
                }])
            },
        )
        .await?,
    );
    drop(naive_redis);

    eprintln!("PostgreSQL hot-row baseline (UPDATE ... WHERE qty >= 1 + order insert)");
    let postgres = LocalPostgres::start()?;
    measurements.push(
        baseline_row(
            "PostgreSQL hot-row baseline POST /v1/reservations",
            options,
            &["pg-hotrow", "--database-url", &postgres.url()],
            &|| {
                Ok(Watched::with_children(
                    "postgres",
                    postgres.postmaster_pid()?,
                )?)
            },
        )
        .await?,
    );
    drop(postgres);

    let row = |name: &str| -> anyhow::Result<&Measurement> {
        measurements
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow::anyhow!("no row {name:?}"))
    };
    let reserve = row(HTTP_RESERVE_ROW)?;
    let grpc = GrpcVsHttp::of(reserve, row(GRPC_RESERVE_ROW)?);
    let overload = overload(options, reserve.rps).await?;
    let verdicts = verdicts(
        &Rows {
            reserve,
            ceiling: row("same server GET /healthz (ceiling)")?,
            sold_out: row("engine reserve of a sold-out SKU")?,
            naive: row("naive baseline POST /v1/reservations")?,
            pg: row("PostgreSQL hot-row baseline POST /v1/reservations")?,
        },
        settle_us_per_event,
        &overload,
        &cluster,
    );
    Ok(Comparison {
        redis_us_per_reservation: scripts.redis_script_us,
        script_calls_per_reservation: scripts.script_calls as f64 / scripts.reservations as f64,
        scripts,
        measurements,
        cluster,
        grpc,
        settle_us_per_event,
        overload,
        verdicts,
    })
}

/// The rows the targets speak of.
struct Rows<'a> {
    reserve: &'a Measurement,
    ceiling: &'a Measurement,
    sold_out: &'a Measurement,
    naive: &'a Measurement,
    pg: &'a Measurement,
}

fn verdicts(
    rows: &Rows<'_>,
    settle_us_per_event: f64,
    overload: &Overload,
    cluster: &ClusterRow,
) -> Vec<Verdict> {
    let Rows {
        reserve,
        ceiling,
        sold_out,
        naive,
        pg,
    } = rows;
    let peak = reserve.rps;
    let engine_us = reserve.cpu.server.total_us;
    let redis_us = reserve.cpu.store.total_us;
    let refusal_ratio = sold_out.cpu.server.total_us / ceiling.cpu.server.total_us.max(1e-9);
    vec![
        verdict(
            "engine CPU <= 20 us per reservation (reconciler in-process)",
            format!("{engine_us:.1} us"),
            engine_us <= 20.0,
        ),
        verdict(
            "Redis CPU <= 6 us per reservation (reconciler's reads included)",
            format!("{redis_us:.1} us"),
            redis_us <= 6.0,
        ),
        verdict(
            "settling into SQLite <= 5 us CPU per event",
            format!("{settle_us_per_event:.1} us"),
            settle_us_per_event <= 5.0,
        ),
        verdict(
            "sold-out refusal CPU <= 1.2x /healthz",
            format!("{refusal_ratio:.2}x"),
            refusal_ratio <= 1.2,
        ),
        verdict(
            "reserve >= 2x the naive baseline",
            format!("{:.2}x", reserve.rps / naive.rps),
            reserve.rps >= 2.0 * naive.rps,
        ),
        verdict(
            "reserve >= 0.5x the ceiling",
            format!("{:.2}x", reserve.rps / ceiling.rps),
            reserve.rps >= 0.5 * ceiling.rps,
        ),
        verdict(
            "reserve >= 30x the PostgreSQL hot row",
            format!("{:.1}x", reserve.rps / pg.rps),
            reserve.rps >= 30.0 * pg.rps,
        ),
        verdict(
            "sold-out path >= 0.9x the ceiling",
            format!("{:.2}x", sold_out.rps / ceiling.rps),
            sold_out.rps >= 0.9 * ceiling.rps,
        ),
        verdict(
            "5x overload: goodput >= 0.9x the peak",
            format!("{:.2}x", overload.goodput_rps / peak),
            overload.goodput_rps >= 0.9 * peak,
        ),
        verdict(
            "5x overload: accepted p99 <= 10 ms",
            format!("{:.1} ms", overload.accepted_p99_ms),
            overload.accepted_p99_ms <= 10.0,
        ),
        verdict(
            "5x overload: refusals p99 <= 1 ms",
            format!("{:.2} ms", overload.refused_p99_ms),
            overload.refused_p99_ms <= 1.0,
        ),
        verdict(
            &format!(
                "{CLUSTER_MASTERS}-master cluster: no master above 1/{CLUSTER_MASTERS} + 10% of \
                 Redis CPU"
            ),
            format!(
                "{:.0}% at most (bound {:.0}%)",
                cluster.max_share * 100.0,
                cluster.share_bound * 100.0
            ),
            cluster.spread,
        ),
    ]
}

/// A role's µs per request, or `-` where the row has no such process.
fn us(cpu: Option<&CpuPer>) -> String {
    cpu.map_or_else(|| "-".to_owned(), |c| format!("{:.1}", c.total_us))
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ceiling = self.measurements.get(1).map_or(1.0, |m| m.rps);
        let engine = self.measurements.first().map_or(1.0, |m| m.rps);
        writeln!(
            f,
            "CPU: utime + stime of each process (/proc/<pid>/stat) over the row's answers, us \
             per request; server is the engine or the baseline, store its Redis (every master) \
             or PostgreSQL (every backend)"
        )?;
        writeln!(
            f,
            "| {:<50} | {:>9} | {:>8} | {:>9} | {:>9} | {:>8} | {:>7} | {:>7} | {:>7} | {:>9} |",
            "measurement",
            "req/s",
            "p50 ms",
            "p99 ms",
            "x ceiling",
            "engine x",
            "server",
            "store",
            "reconc.",
            "generator"
        )?;
        writeln!(
            f,
            "|{:-<52}|{:->11}|{:->10}|{:->11}|{:->11}|{:->10}|{:->9}|{:->9}|{:->9}|{:->11}|",
            "", "", "", "", "", "", "", "", "", ""
        )?;
        for m in &self.measurements {
            writeln!(
                f,
                "| {:<50} | {:>9.0} | {:>8.2} | {:>9.2} | {:>9.2} | {:>8.2} | {:>7} | {:>7} | {:>7} | {:>9} |",
                m.name,
                m.rps,
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.rps / ceiling,
                engine / m.rps,
                us(Some(&m.cpu.server)),
                us(Some(&m.cpu.store)),
                us(m.cpu.reconciler.as_ref()),
                us(Some(&m.cpu.generator)),
            )?;
        }
        let o = &self.overload;
        writeln!(
            f,
            "\noverload: offered {:.0}/s (generator sent {:.0}/s, {:.2}x of it), goodput {:.0}/s, \
             accepted p99 {:.2} ms, refusals p99 {:.2} ms (from the actual send: accepted p99 \
             {:.2} ms, refusals p99 {:.2} ms); CPU per request sent: engine {:.1} us, Redis \
             {:.1} us, generator {:.1} us",
            o.offered_rps,
            o.sent_rps,
            o.sent_rps / o.offered_rps.max(1e-9),
            o.goodput_rps,
            o.accepted_p99_ms,
            o.refused_p99_ms,
            o.accepted_service_p99_ms,
            o.refused_service_p99_ms,
            o.cpu.server.total_us,
            o.cpu.store.total_us,
            o.cpu.generator.total_us
        )?;
        writeln!(f, "  outcomes: {:?}", o.outcomes)?;
        writeln!(f, "{}", self.grpc)?;
        writeln!(
            f,
            "Redis script time per reservation: {:.2} us ({:.2} script calls per reservation)",
            self.redis_us_per_reservation, self.script_calls_per_reservation
        )?;
        writeln!(
            f,
            "settling into SQLite: {:.2} us of the separate reconciler's CPU per event",
            self.settle_us_per_event
        )?;
        writeln!(f, "{}", self.cluster)?;
        for v in &self.verdicts {
            writeln!(
                f,
                "[{}] {:<64} {}",
                if v.met { "met" } else { "MISSED" },
                v.target,
                v.measured
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for ClusterRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spread = |by: &BTreeMap<String, u16>| {
            by.iter()
                .map(|(m, n)| format!("{m} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "{}-master cluster, {} shards: by hash {}",
            self.masters,
            self.shards,
            spread(&self.shards_per_master_by_hash)
        )?;
        if self.placed.is_empty() {
            writeln!(f, "  no slot moved: the hash spread them evenly")?;
        } else {
            for p in &self.placed {
                writeln!(
                    f,
                    "  placed before the row: shard {} (slot {}) from {} to {}",
                    p.shard, p.slot, p.from, p.to
                )?;
            }
            writeln!(f, "  during the row: {}", spread(&self.shards_per_master))?;
        }
        writeln!(
            f,
            "  Redis CPU {:.2} us per reservation, script time {:.2} us ({} reservations)",
            self.redis_cpu.total_us, self.scripts.redis_script_us, self.scripts.reservations
        )?;
        for (master, share) in &self.redis_cpu.by_process {
            writeln!(
                f,
                "  {master}: {:.2} us per reservation, {:.1}% of the Redis CPU",
                share.us,
                share.share * 100.0
            )?;
        }
        write!(
            f,
            "  spread: the busiest master had {:.1}% (bound {:.1}%): {}",
            self.max_share * 100.0,
            self.share_bound * 100.0,
            if self.spread { "spread" } else { "NOT spread" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(counts: &BTreeMap<String, u16>) -> u16 {
        let most = counts.values().max().copied().unwrap_or(0);
        let least = counts.values().min().copied().unwrap_or(0);
        most - least
    }

    #[test]
    fn shards_the_hash_spreads_unevenly_are_placed_until_the_masters_hold_as_many() {
        let cluster = LocalCluster::start(LocalClusterOptions::default()).unwrap();
        let keys = KeySpace::new("t:").unwrap();
        // By hash, ci-sale's 6 shards land 2, 3 and 1 on three masters.
        let sku: Sku = "ci-sale".parse().unwrap();
        let before = counts(&shards_by_master(&cluster, &keys, &sku, 6).unwrap());
        assert_eq!(before.len(), 3, "{before:?}");
        assert_eq!(spread(&before), 2, "{before:?}");
        let placed = place_evenly(&cluster, &keys, &sku, 6).unwrap();
        assert_eq!(placed.len(), 1, "{placed:?}");
        let after = counts(&shards_by_master(&cluster, &keys, &sku, 6).unwrap());
        assert_eq!(
            after.values().collect::<Vec<_>>(),
            [&2, &2, &2],
            "{after:?}"
        );
        let moved = &placed[0];
        let owner = cluster
            .master_of(&keys.shard(&sku, moved.shard).hash)
            .unwrap();
        assert_eq!(format!("127.0.0.1:{}", owner.port), moved.to);
        assert_eq!(before[&moved.from], 3);
        assert_eq!(before[&moved.to], 1);
        // The cluster row's SKU: 9 shards the hash already puts 3 on each master.
        let bench: Sku = BENCH_SKU.parse().unwrap();
        let even = counts(&shards_by_master(&cluster, &keys, &bench, CLUSTER_SHARDS).unwrap());
        assert_eq!(spread(&even), 0, "{even:?}");
        assert!(place_evenly(&cluster, &keys, &bench, CLUSTER_SHARDS)
            .unwrap()
            .is_empty());
    }
}
