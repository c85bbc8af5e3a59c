//! `report.json` and the table on stdout.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::checks::Violations;
use crate::cpu::RequestCpu;
use crate::run::RunOutcome;
use crate::scenario::Scenario;
use crate::spawn::Topology;
use crate::stats::Percentiles;

/// What was measured on the servers themselves, when the harness started them (`--spawn`);
/// all of it from before the arrivals to after the closing wave, over the reservations
/// made.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    /// Redis time inside scripts (`INFO commandstats`, summed over the masters), µs per
    /// reservation.
    pub redis_us_per_reservation: Option<f64>,
    /// CPU (user + system, `/proc/<pid>/stat`) of every process over the reservations
    /// made, µs: engine by engine, master by master, a separate reconciler, the generator.
    pub cpu_per_reservation: Option<RequestCpu>,
    /// The same over the requests sent (the closing wave's included).
    pub cpu_per_request: Option<RequestCpu>,
    /// The Redis topology and the engines.
    pub topology: Option<Topology>,
}

/// Latency percentiles, overall and per outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Every answer.
    pub overall: Percentiles,
    /// By outcome.
    pub by_outcome: BTreeMap<String, Percentiles>,
}

/// One invariant's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// It held.
    pub ok: bool,
    /// How many times it was broken.
    pub violations: usize,
}

/// The report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Carts, when the scenario has a bundle.
    pub carts: Option<CartFigures>,
    /// The scenario replayed.
    pub scenario: Scenario,
    /// Answers per second over the arrival phase.
    pub throughput_rps: f64,
    /// Arrivals: first reserves, one per scheduled buyer (drawn from the pool of
    /// `scenario.users`).
    pub arrivals: u64,
    /// Requests sent (arrivals, their retries, confirms and cancels).
    pub requests: u64,
    /// Seconds the arrival phase took.
    pub duration_s: f64,
    /// Latency from the intended send time, ms.
    pub latency_ms: Latency,
    /// Answers by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Invariant -> whether it held and how many times it was broken.
    pub invariants: BTreeMap<String, Verdict>,
    /// What broke, invariant by invariant.
    pub violations: BTreeMap<String, Vec<String>>,
    /// Units bought in the closing wave.
    pub closing_wave_bought: u64,
    /// When the first `sold_out` answer was due, ms after the sale opened.
    pub sold_out_at_ms: Option<f64>,
    /// The SKU at the end, as the API showed it.
    pub sku: serde_json::Value,
    /// Redis time spent in scripts (every call of the sale: reserves, sweeps, refills,
    /// refusals) divided by the reservations made, µs, when measured; on a cluster, summed
    /// over the masters.
    pub redis_us_per_reservation: Option<f64>,
    /// CPU (user + system) over the reservations made, µs, by role (`server`: the
    /// engines, `store`: the Redis masters, `reconciler` when separate, `generator`), in
    /// all and process by process.
    pub cpu_per_reservation: Option<RequestCpu>,
    /// The same over the requests sent.
    pub cpu_per_request: Option<RequestCpu>,
    /// What ran the sale (with `--spawn`): one Redis or a cluster, how many engines, and
    /// how many of the SKU's shards each master holds.
    pub topology: Option<Topology>,
    /// Every invariant held.
    pub passed: bool,
}

impl Report {
    /// Builds the report of a run and its checks.
    pub fn new(
        scenario: &Scenario,
        run: &RunOutcome,
        violations: Violations,
        sku: serde_json::Value,
        measured: Measured,
    ) -> Self {
        let recorder = &run.recorder;
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        Self {
            carts: scenario
                .bundle
                .as_ref()
                .map(|_| CartFigures::of(&run.book, secs)),
            scenario: scenario.clone(),
            throughput_rps: recorder.overall.len() as f64 / secs,
            arrivals: run.arrivals,
            requests: run.sent,
            duration_s: secs,
            latency_ms: Latency {
                overall: Percentiles::of(&recorder.overall),
                by_outcome: recorder
                    .by_outcome
                    .iter()
                    .map(|(o, h)| (o.clone(), Percentiles::of(h)))
                    .collect(),
            },
            outcomes: recorder.outcomes(),
            invariants: violations
                .iter()
                .map(|(name, v)| {
                    let verdict = Verdict {
                        ok: v.is_empty(),
                        violations: v.len(),
                    };
                    ((*name).to_owned(), verdict)
                })
                .collect(),
            passed: violations.values().all(Vec::is_empty),
            violations: violations
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, v)| (name.to_owned(), v))
                .collect(),
            closing_wave_bought: run.closing.bought,
            sold_out_at_ms: recorder
                .first("sold_out")
                .map(|at| at.as_secs_f64() * 1000.0),
            sku,
            redis_us_per_reservation: measured.redis_us_per_reservation,
            cpu_per_reservation: measured.cpu_per_reservation,
            cpu_per_request: measured.cpu_per_request,
            topology: measured.topology,
        }
    }
}

/// What the carts of a bundle scenario did.
#[derive(Debug, Clone, Serialize)]
pub struct CartFigures {
    /// Carts held (every line).
    pub held: u64,
    /// Of those, confirmed by their buyer.
    pub confirmed: u64,
    /// Of those, cancelled by their buyer.
    pub cancelled: u64,
    /// Carts refused (nothing held).
    pub refused: u64,
    /// Carts held per second of the arrival phase.
    pub held_per_second: f64,
    /// A refused cart, from its send to its answer, ms: the lines it took were returned
    /// before the answer, so this bounds how long its units were away from other buyers.
    pub refusal_ms: Percentiles,
}

impl CartFigures {
    fn of(book: &crate::run::Book, secs: f64) -> Self {
        let mut refusals = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits");
        for us in &book.cart_refusals_us {
            let _ = refusals.record((*us).max(1));
        }
        Self {
            held: book.carts.len() as u64,
            confirmed: book.carts_confirmed.len() as u64,
            cancelled: book.carts_cancelled.len() as u64,
            refused: book.cart_refusals_us.len() as u64,
            held_per_second: book.carts.len() as f64 / secs,
            refusal_ms: Percentiles::of(&refusals),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} arrivals from a pool of {} buyers; {} requests over {} in {:.2} s with the \
             buyers' confirms, cancels and retries: {:.0} req/s",
            self.arrivals,
            self.scenario.users,
            self.requests,
            self.scenario.protocol,
            self.duration_s,
            self.throughput_rps
        )?;
        writeln!(
            f,
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "outcome", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, count: u64, p: &Percentiles| {
            writeln!(
                f,
                "{name:<22} {count:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                p.p50, p.p90, p.p99, p.p999, p.max
            )
        };
        for (outcome, p) in &self.latency_ms.by_outcome {
            row(
                f,
                outcome,
                self.outcomes.get(outcome).copied().unwrap_or(0),
                p,
            )?;
        }
        row(
            f,
            "all",
            self.outcomes.values().sum(),
            &self.latency_ms.overall,
        )?;
        let sku = &self.sku;
        writeln!(
            f,
            "sku {}: stock {} sold {} held {} available {} (closing wave bought {})",
            self.scenario.sku,
            sku["stock"],
            sku["sold"],
            sku["held"],
            sku["available"],
            self.closing_wave_bought
        )?;
        if let Some(carts) = &self.carts {
            writeln!(
                f,
                "carts: {} held ({:.0}/s), {} confirmed, {} cancelled, {} refused; a refused \
                 cart's units were away at most its answer's time: p50 {:.2} ms, p99 {:.2} ms, \
                 max {:.2} ms",
                carts.held,
                carts.held_per_second,
                carts.confirmed,
                carts.cancelled,
                carts.refused,
                carts.refusal_ms.p50,
                carts.refusal_ms.p99,
                carts.refusal_ms.max
            )?;
        }
        if let Some(topology) = &self.topology {
            writeln!(f, "topology: {topology}")?;
        }
        if let Some(us) = self.redis_us_per_reservation {
            writeln!(
                f,
                "redis script time over reservations made: {us:.2} us each (every script \
                 call of the sale counted: sweeps, refills, refusals)"
            )?;
        }
        for (over, cpu) in [
            ("reservations made", &self.cpu_per_reservation),
            ("requests sent", &self.cpu_per_request),
        ] {
            for (process, figure) in cpu.iter().flat_map(|c| c.sale_parts()) {
                writeln!(f, "{process} cpu over {over}: {figure}")?;
            }
        }
        for (name, verdict) in &self.invariants {
            let verdict = if verdict.ok { "ok" } else { "VIOLATED" };
            writeln!(f, "invariant {name:<34} {verdict}")?;
            for what in self.violations.get(name).into_iter().flatten() {
                writeln!(f, "    {what}")?;
            }
        }
        write!(f, "{}", if self.passed { "PASSED" } else { "FAILED" })
    }
}
