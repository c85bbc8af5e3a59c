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

use flashsale_testkit::{free_port, LocalPostgres, LocalRedis};
use serde::Serialize;
use serde_json::json;

use crate::client::{put_json, Call, Target};
use crate::run::{offer, saturate};
use crate::spawn::{wait_healthy, SpawnOptions, Spawned};
use crate::stats::{Percentiles, Recorder};

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
}

impl Measurement {
    fn new(name: &str, recorder: &Recorder, elapsed: Duration) -> Self {
        Self {
            name: name.to_owned(),
            rps: recorder.overall.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            outcomes: recorder.outcomes(),
            latency_ms: Percentiles::of(&recorder.overall),
        }
    }
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

/// Everything the comparison measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The closed-loop measurements, in order.
    pub measurements: Vec<Measurement>,
    /// Redis script time per reservation made by the engine, µs.
    pub redis_us_per_reservation: f64,
    /// Script calls per reservation (coalescing makes it below 1).
    pub script_calls_per_reservation: f64,
    /// The overload run.
    pub overload: Overload,
    /// The targets.
    pub verdicts: Vec<Verdict>,
}

/// A baseline server process, stopped on drop.
struct Process(Child);

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
    Arc::new(move |n| Call::Reserve {
        sku: sku.to_owned(),
        user: format!("u{n}"),
        quantity: 1,
        key: "k".to_owned(),
    })
}

async fn measure(
    name: &str,
    target: &Target,
    options: &CompareOptions,
    make: Arc<dyn Fn(u64) -> Call + Send + Sync>,
) -> anyhow::Result<Measurement> {
    // A short warm-up first: connections open, scripts loaded, caches warm.
    saturate(
        target,
        options.connections,
        Duration::from_millis(500),
        make.clone(),
    )
    .await?;
    let (recorder, elapsed) = saturate(
        target,
        options.connections,
        Duration::from_secs(options.seconds),
        make,
    )
    .await?;
    let measurement = Measurement::new(name, &recorder, elapsed);
    eprintln!("  {name}: {:.0}/s", measurement.rps);
    Ok(measurement)
}

fn verdict(target: &str, measured: String, met: bool) -> Verdict {
    Verdict {
        target: target.to_owned(),
        measured,
        met,
    }
}

/// Runs every measurement.
pub async fn compare(options: &CompareOptions) -> anyhow::Result<Comparison> {
    let mut measurements = Vec::new();
    let huge = json!({ "stock": 1_000_000_000u64, "shards": 8, "hold_seconds": 3600 });
    let no_limits: Vec<String> = [
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
    .collect();

    eprintln!("engine (flashsale serve, private Redis, SQLite ledger)");
    let engine = Spawned::start(&SpawnOptions::single(&no_limits)).await?;
    let target = engine.engines[0].target.clone();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge).await?;
    put_json(
        &target,
        "/v1/skus/gone",
        &engine.admin_token,
        &json!({ "stock": 1 }),
    )
    .await?;
    let before = engine.redis.script_stats()?;
    let reserve = measure(
        "engine POST /v1/reservations",
        &target,
        options,
        reserve_call("bench"),
    )
    .await?;
    let scripts = engine.redis.script_stats()?.since(before);
    let made = reserve.outcomes.get("held").copied().unwrap_or(0).max(1) as f64;
    // The warm-up made reservations too: count them by the SKU's own figures.
    let sku_view = crate::client::Connection::open(&target)
        .await?
        .json(&Call::Get {
            path: "/v1/skus/bench".into(),
        })
        .await?;
    let reservations = sku_view["held"].as_f64().unwrap_or(made).max(1.0);
    let redis_us = scripts.usec as f64 / reservations;
    let calls_per = scripts.calls as f64 / reservations;
    measurements.push(reserve);
    measurements.push(
        measure(
            "same server GET /healthz (ceiling)",
            &target,
            options,
            Arc::new(|_| Call::Get {
                path: "/healthz".into(),
            }),
        )
        .await?,
    );
    // Sell the one unit, let the flag and the recorded keys settle, then measure.
    saturate(&target, 4, Duration::from_millis(500), reserve_call("gone")).await?;
    measurements.push(
        measure(
            "engine reserve of a sold-out SKU",
            &target,
            options,
            reserve_call("gone"),
        )
        .await?,
    );
    let peak = measurements[0].rps;
    drop(engine);

    eprintln!("engine with its reconciler paused (events wait in the streams; settled after)");
    let mut paused_args = no_limits.clone();
    paused_args.push("--no-reconcile".into());
    let engine = Spawned::start(&SpawnOptions::single(&paused_args)).await?;
    let target = engine.engines[0].target.clone();
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge).await?;
    measurements.push(
        measure(
            "engine POST /v1/reservations, reconciler paused",
            &target,
            options,
            reserve_call("bench"),
        )
        .await?,
    );
    drop(engine);

    eprintln!("naive baseline (pooled checkout per request, one unsharded DECRBY script)");
    let naive_redis = LocalRedis::start()?;
    let (naive, naive_target) = baseline_process(&["naive", "--redis-url", &naive_redis.url()])?;
    wait_healthy(&naive_target, Duration::from_secs(30)).await?;
    put_json(&naive_target, "/v1/skus/bench", "", &huge).await?;
    measurements.push(
        measure(
            "naive baseline POST /v1/reservations",
            &naive_target,
            options,
            reserve_call("bench"),
        )
        .await?,
    );
    drop(naive);
    drop(naive_redis);

    eprintln!("PostgreSQL hot-row baseline (UPDATE ... WHERE qty >= 1 + order insert)");
    let postgres = LocalPostgres::start()?;
    let (pg, pg_target) = baseline_process(&["pg-hotrow", "--database-url", &postgres.url()])?;
    wait_healthy(&pg_target, Duration::from_secs(30)).await?;
    put_json(&pg_target, "/v1/skus/bench", "", &huge).await?;
    measurements.push(
        measure(
            "PostgreSQL hot-row baseline POST /v1/reservations",
            &pg_target,
            options,
            reserve_call("bench"),
        )
        .await?,
    );
    drop(pg);
    drop(postgres);

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
    put_json(&target, "/v1/skus/bench", &engine.admin_token, &huge).await?;
    let offered = peak * 5.0;
    let (recorder, service, elapsed) = offer(
        &target,
        offered,
        Duration::from_secs(options.seconds),
        options.connections * 4,
        Duration::from_secs(5),
        reserve_call("bench"),
    )
    .await?;
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
    let overload = Overload {
        offered_rps: offered,
        sent_rps: recorder.overall.len() as f64 / secs,
        goodput_rps: recorder.by_outcome.get("held").map_or(0, |h| h.len()) as f64 / secs,
        accepted_p99_ms: p99_of(&recorder, true),
        refused_p99_ms: p99_of(&recorder, false),
        accepted_service_p99_ms: p99_of(&service, true),
        refused_service_p99_ms: p99_of(&service, false),
        outcomes: recorder.outcomes(),
    };

    // Rows: engine, ceiling, sold-out SKU, engine with its reconciler paused, naive, pg.
    let (engine_rps, ceiling, sold_out) = (
        measurements[0].rps,
        measurements[1].rps,
        measurements[2].rps,
    );
    let (naive_rps, pg_rps) = (measurements[4].rps, measurements[5].rps);
    let verdicts = vec![
        verdict(
            "reserve >= 2x the naive baseline",
            format!("{:.2}x", engine_rps / naive_rps),
            engine_rps >= 2.0 * naive_rps,
        ),
        verdict(
            "reserve >= 0.5x the ceiling",
            format!("{:.2}x", engine_rps / ceiling),
            engine_rps >= 0.5 * ceiling,
        ),
        verdict(
            "Redis time <= 6 us per reservation",
            format!("{redis_us:.1} us"),
            redis_us <= 6.0,
        ),
        verdict(
            "reserve >= 30x the PostgreSQL hot row",
            format!("{:.1}x", engine_rps / pg_rps),
            engine_rps >= 30.0 * pg_rps,
        ),
        verdict(
            "sold-out path >= 0.9x the ceiling",
            format!("{:.2}x", sold_out / ceiling),
            sold_out >= 0.9 * ceiling,
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
    ];
    Ok(Comparison {
        measurements,
        redis_us_per_reservation: redis_us,
        script_calls_per_reservation: calls_per,
        overload,
        verdicts,
    })
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ceiling = self.measurements.get(1).map_or(1.0, |m| m.rps);
        let engine = self.measurements.first().map_or(1.0, |m| m.rps);
        writeln!(
            f,
            "| {:<50} | {:>9} | {:>8} | {:>9} | {:>8} | {:>8} |",
            "measurement", "req/s", "p50 ms", "p99 ms", "x ceiling", "engine x"
        )?;
        writeln!(
            f,
            "|{:-<52}|{:->11}|{:->10}|{:->11}|{:->10}|{:->10}|",
            "", "", "", "", "", ""
        )?;
        for m in &self.measurements {
            writeln!(
                f,
                "| {:<50} | {:>9.0} | {:>8.2} | {:>9.2} | {:>8.2} | {:>8.2} |",
                m.name,
                m.rps,
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.rps / ceiling,
                engine / m.rps
            )?;
        }
        let o = &self.overload;
        writeln!(
            f,
            "\noverload: offered {:.0}/s (generator sent {:.0}/s), goodput {:.0}/s, accepted p99 {:.2} ms, refusals p99 {:.2} ms \
             (from the actual send: accepted p99 {:.2} ms, refusals p99 {:.2} ms)",
            o.offered_rps,
            o.sent_rps,
            o.goodput_rps,
            o.accepted_p99_ms,
            o.refused_p99_ms,
            o.accepted_service_p99_ms,
            o.refused_service_p99_ms
        )?;
        writeln!(f, "  outcomes: {:?}", o.outcomes)?;
        writeln!(
            f,
            "Redis script time per reservation: {:.2} us ({:.2} script calls per reservation)\n",
            self.redis_us_per_reservation, self.script_calls_per_reservation
        )?;
        for v in &self.verdicts {
            writeln!(
                f,
                "[{}] {:<42} {}",
                if v.met { "met" } else { "MISSED" },
                v.target,
                v.measured
            )?;
        }
        Ok(())
    }
}
