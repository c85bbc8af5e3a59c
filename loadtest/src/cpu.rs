//! CPU time of processes, from `/proc/<pid>/stat` (user + system time, in clock ticks):
//! what a server spent, whatever it spent it on. `INFO commandstats` counts only the time
//! Redis spends inside commands; this also counts its event loop, its networking and, on a
//! cluster, its bus, and it measures an engine the same way it measures a Redis.

use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

/// `USER_HZ`, the unit of `/proc/<pid>/stat`'s times: `getconf CLK_TCK`, 100 when that
/// cannot be asked (what every Linux ABI but Alpha's uses).
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks. The command name (field 2)
/// is in parentheses and may itself hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn ticks_of_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// The parent's process id in a `/proc/<pid>/stat` line (field 4).
fn parent_of_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(4 - 3)?.parse().ok()
}

/// The processes whose parent is `pid` now (a PostgreSQL server's backends, say).
pub fn children_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(child) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: it is no child any more.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if parent_of_stat(&stat) == Some(pid) {
            children.push(child);
        }
    }
    children.sort_unstable();
    Ok(children)
}

/// The CPU time process `pid` has used so far (user + system).
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = ticks_of_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot read the CPU times in /proc/{pid}/stat"),
        )
    })?;
    Ok(Duration::from_micros(
        ticks * 1_000_000 / clock_ticks_per_second(),
    ))
}

/// A process to measure, named by what it is to the reader (`redis 127.0.0.1:7001`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// What it is.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

impl Watched {
    /// This process (the load generator), named `name`.
    pub fn this_process(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            pid: std::process::id(),
        }
    }

    /// `pid` and every child it has now, as `<name>` and `<name> <child pid>`: a server
    /// that works in child processes (PostgreSQL's backends) is all of them.
    pub fn with_children(name: &str, pid: u32) -> io::Result<Vec<Self>> {
        let mut all = vec![Self {
            name: name.to_owned(),
            pid,
        }];
        all.extend(children_of(pid)?.into_iter().map(|child| Self {
            name: format!("{name} {child}"),
            pid: child,
        }));
        Ok(all)
    }
}

/// The CPU time of some processes from a start: [`CpuMeter::start`], then
/// [`CpuMeter::used`].
#[derive(Debug, Clone)]
pub struct CpuMeter {
    start: Vec<(Watched, Duration)>,
}

impl CpuMeter {
    /// Reads the CPU time of every one of `processes` now.
    pub fn start(processes: Vec<Watched>) -> io::Result<Self> {
        let start = processes
            .into_iter()
            .map(|p| Ok((p.clone(), cpu_time(p.pid)?)))
            .collect::<io::Result<_>>()?;
        Ok(Self { start })
    }

    /// What each process used since the start, in the order given.
    pub fn used(&self) -> io::Result<Vec<(Watched, Duration)>> {
        self.start
            .iter()
            .map(|(p, before)| Ok((p.clone(), cpu_time(p.pid)?.saturating_sub(*before))))
            .collect()
    }
}

/// CPU time per unit of work (a reservation made), overall and process by process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuPer {
    /// All the processes together, µs per unit.
    pub total_us: f64,
    /// Each process, by name.
    pub by_process: BTreeMap<String, ProcessShare>,
}

/// One process's part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessShare {
    /// µs per unit.
    pub us: f64,
    /// Its share of the total, 0 to 1.
    pub share: f64,
}

impl CpuPer {
    /// `used` spread over `units` (at least one).
    pub fn of(used: &[(Watched, Duration)], units: u64) -> Self {
        let units = units.max(1) as f64;
        let total: Duration = used.iter().map(|(_, d)| *d).sum();
        let total_us = total.as_secs_f64() * 1e6 / units;
        let by_process = used
            .iter()
            .map(|(p, d)| {
                let share = if total.is_zero() {
                    0.0
                } else {
                    d.as_secs_f64() / total.as_secs_f64()
                };
                let us = d.as_secs_f64() * 1e6 / units;
                (p.name.clone(), ProcessShare { us, share })
            })
            .collect();
        Self {
            total_us,
            by_process,
        }
    }

    /// The largest share any one process had (0 with none).
    pub fn max_share(&self) -> f64 {
        self.by_process
            .values()
            .map(|p| p.share)
            .fold(0.0, f64::max)
    }
}

impl std::fmt::Display for CpuPer {
    /// `12.3 us (redis 127.0.0.1:7001 4.1 us 33%, ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} us", self.total_us)?;
        if self.by_process.len() > 1 {
            let parts: Vec<String> = self
                .by_process
                .iter()
                .map(|(name, p)| format!("{name} {:.2} us {:.0}%", p.us, p.share * 100.0))
                .collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// The processes a measurement ran, by what each is to it.
#[derive(Debug, Clone)]
pub struct Processes {
    /// The engines, or a baseline's server.
    pub server: Vec<Watched>,
    /// Their data store: every Redis master, or PostgreSQL and its backends.
    pub store: Vec<Watched>,
    /// A reconciler in a process of its own (none when it runs inside the engine).
    pub reconciler: Vec<Watched>,
}

/// CPU per request of every process a measurement ran, by role: the figure to drive, as
/// what two shared cores answer is what is left of them divided by what a request costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestCpu {
    /// The requests it is divided by (answers, or reservations made: the caller says).
    pub requests: u64,
    /// The engines or the baseline server, µs per request.
    pub server: CpuPer,
    /// Redis (every master) or PostgreSQL (every backend), µs per request.
    pub store: CpuPer,
    /// A separate reconciler, µs per request, where there is one.
    pub reconciler: Option<CpuPer>,
    /// The load generator (this process), µs per request.
    pub generator: CpuPer,
}

impl RequestCpu {
    /// Each role of a sale by its name there (`engine`, `redis`, `reconciler`,
    /// `generator`), with its figure.
    pub fn sale_parts(&self) -> Vec<(&'static str, &CpuPer)> {
        let mut parts = vec![("engine", &self.server), ("redis", &self.store)];
        if let Some(reconciler) = &self.reconciler {
            parts.push(("reconciler", reconciler));
        }
        parts.push(("generator", &self.generator));
        parts
    }
}

/// [`RequestCpu`] from a start: [`RequestCpuMeter::start`], then
/// [`RequestCpuMeter::read`].
#[derive(Debug, Clone)]
pub struct RequestCpuMeter {
    server: CpuMeter,
    store: CpuMeter,
    reconciler: Option<CpuMeter>,
    generator: CpuMeter,
}

impl RequestCpuMeter {
    /// Reads every process's CPU time now, this one's (the generator) included.
    pub fn start(processes: Processes) -> io::Result<Self> {
        Ok(Self {
            server: CpuMeter::start(processes.server)?,
            store: CpuMeter::start(processes.store)?,
            reconciler: if processes.reconciler.is_empty() {
                None
            } else {
                Some(CpuMeter::start(processes.reconciler)?)
            },
            generator: CpuMeter::start(vec![Watched::this_process("generator")])?,
        })
    }

    /// What each role used since the start, over `requests`.
    pub fn read(&self, requests: u64) -> io::Result<RequestCpu> {
        Ok(RequestCpu {
            requests,
            server: CpuPer::of(&self.server.used()?, requests),
            store: CpuPer::of(&self.store.used()?, requests),
            reconciler: match &self.reconciler {
                Some(meter) => Some(CpuPer::of(&meter.used()?, requests)),
                None => None,
            },
            generator: CpuPer::of(&self.generator.used()?, requests),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_past_a_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "4242 (redis (x) 7001) S 1 4242 4242 0 -1 4194560 300 0 0 0 125 75 0 0 20 0 \
                    5 0 12345 0 0";
        assert_eq!(ticks_of_stat(stat), Some(200));
        assert_eq!(parent_of_stat(stat), Some(1));
        assert_eq!(ticks_of_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(ticks_of_stat("no name at all"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu_and_its_meter_moves_forward() {
        let me = Watched {
            name: "me".into(),
            pid: std::process::id(),
        };
        let meter = CpuMeter::start(vec![me.clone()]).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = meter.used().unwrap();
        assert_eq!(used[0].0, me);
        assert!(used[0].1 >= Duration::from_millis(20), "{:?}", used[0].1);
        assert!(cpu_time(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn a_process_is_found_among_its_parents_children_and_measured_by_role() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let watched = Watched::with_children("tree", me).unwrap();
        assert_eq!(watched[0], Watched::this_process("tree"));
        assert!(
            watched
                .iter()
                .any(|w| w.pid == child.id() && w.name == format!("tree {}", child.id())),
            "{watched:?}"
        );
        let meter = RequestCpuMeter::start(Processes {
            server: vec![Watched::this_process("server")],
            store: vec![Watched {
                name: "sleeper".into(),
                pid: child.id(),
            }],
            reconciler: Vec::new(),
        })
        .unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = meter.read(1000).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // 20 ms at least over 1000 requests, in this process: the server and the generator
        // are both this process here.
        assert!(cpu.server.total_us >= 20.0, "{cpu:?}");
        assert!(cpu.generator.total_us >= 20.0, "{cpu:?}");
        assert!(cpu.store.total_us < 1.0, "a sleeping process: {cpu:?}");
        assert_eq!(cpu.reconciler, None);
        assert_eq!(cpu.requests, 1000);
    }

    #[test]
    fn spreads_time_over_units_with_each_process_share() {
        let used = vec![
            (
                Watched {
                    name: "a".into(),
                    pid: 1,
                },
                Duration::from_millis(30),
            ),
            (
                Watched {
                    name: "b".into(),
                    pid: 2,
                },
                Duration::from_millis(10),
            ),
        ];
        let per = CpuPer::of(&used, 1000);
        assert!((per.total_us - 40.0).abs() < 1e-9, "{per:?}");
        assert!((per.by_process["a"].us - 30.0).abs() < 1e-9);
        assert!((per.by_process["a"].share - 0.75).abs() < 1e-9);
        assert!((per.max_share() - 0.75).abs() < 1e-9);
        assert_eq!(per.to_string(), "40.00 us (a 30.00 us 75%, b 10.00 us 25%)");
        let idle = CpuPer::of(&[], 0);
        assert_eq!((idle.total_us, idle.max_share()), (0.0, 0.0));
    }
}
