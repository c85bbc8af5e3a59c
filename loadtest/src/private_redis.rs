//! The private Redis of a run: one `redis-server` or a Redis Cluster, started for the run and
//! gone with it. What `--spawn`, `compare` and `serve` start; how the engine is told where it
//! is; and what the harness measures on it, master by master (script time, CPU, which
//! master holds which shard).

use std::collections::BTreeMap;
use std::io;

use flashsale::ids::Sku;
use flashsale::keys::KeySpace;
use flashsale::topology::RedisTarget;
use flashsale_testkit::{LocalCluster, LocalClusterOptions, LocalRedis};

use crate::cpu::Watched;

/// One Redis, or a cluster.
pub enum PrivateRedis {
    /// One `redis-server`.
    Single(LocalRedis),
    /// A Redis Cluster.
    Cluster(LocalCluster),
}

/// A master (on one Redis: the server itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its process id.
    pub pid: u32,
}

impl Master {
    /// `127.0.0.1:<port>`: how reports name it.
    pub fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process to measure.
    pub fn watched(&self) -> Watched {
        Watched {
            name: format!("redis {}", self.name()),
            pid: self.pid,
        }
    }
}

/// The process id of `redis`, as it says in `INFO server`.
pub fn pid_of(redis: &LocalRedis) -> io::Result<u32> {
    let info = redis.command(&["INFO", "server"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| io::Error::other("INFO server names no process_id"))
}

/// `EVALSHA`'s counters in `INFO commandstats`: the time Redis spent in scripts, and calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptStats {
    /// µs inside scripts.
    pub usec: u64,
    /// Script calls.
    pub calls: u64,
}

impl ScriptStats {
    /// The counters in an `INFO commandstats` answer (zero when `EVALSHA` never ran).
    fn parse(info: &str) -> Self {
        let (usec, calls) = flashsale_testkit::evalsha_stats(info);
        Self { usec, calls }
    }

    /// What was counted since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            usec: self.usec.saturating_sub(before.usec),
            calls: self.calls.saturating_sub(before.calls),
        }
    }
}

impl PrivateRedis {
    /// One Redis, or a cluster of this shape.
    pub fn start(cluster: Option<LocalClusterOptions>) -> io::Result<Self> {
        Ok(match cluster {
            None => Self::Single(LocalRedis::start()?),
            Some(options) => Self::Cluster(LocalCluster::start(options)?),
        })
    }

    /// The cluster, if this is one.
    pub fn cluster(&self) -> Option<&LocalCluster> {
        match self {
            Self::Single(_) => None,
            Self::Cluster(cluster) => Some(cluster),
        }
    }

    /// How the harness's own store reaches it.
    pub fn target(&self) -> RedisTarget {
        match self {
            Self::Single(redis) => RedisTarget::Single(redis.url()),
            Self::Cluster(cluster) => RedisTarget::Cluster(cluster.seed_urls()),
        }
    }

    /// How `flashsale serve` is told where it is.
    pub fn engine_args(&self) -> Vec<String> {
        let target = self.target();
        redis_args(target.urls(), target.is_cluster())
    }

    /// The line that tells a person where it is.
    pub fn describe(&self) -> String {
        match self {
            Self::Single(redis) => format!("redis: {}", redis.url()),
            Self::Cluster(cluster) => format!("redis cluster: {}", cluster.seed_urls().join(" ")),
        }
    }

    /// The masters now, by port.
    pub fn masters(&self) -> io::Result<Vec<Master>> {
        match self {
            Self::Single(redis) => Ok(vec![Master {
                port: redis.port(),
                pid: pid_of(redis)?,
            }]),
            Self::Cluster(cluster) => {
                let mut masters: Vec<Master> = cluster
                    .masters()?
                    .into_iter()
                    .map(|n| Master {
                        port: n.port,
                        pid: n.pid,
                    })
                    .collect();
                masters.sort_by_key(|m| m.port);
                Ok(masters)
            }
        }
    }

    /// Script time and calls so far, summed over the masters.
    pub fn script_stats(&self) -> io::Result<ScriptStats> {
        match self {
            Self::Single(redis) => Ok(ScriptStats::parse(
                &redis.command(&["INFO", "commandstats"])?,
            )),
            Self::Cluster(cluster) => {
                let mut sum = ScriptStats::default();
                for master in self.masters()? {
                    let info = cluster.command(master.port, &["INFO", "commandstats"])?;
                    let stats = ScriptStats::parse(&info);
                    sum.usec += stats.usec;
                    sum.calls += stats.calls;
                }
                Ok(sum)
            }
        }
    }

    /// How many of `sku`'s shards `0..shards` each master holds (every master listed, with
    /// 0 if it holds none), by [`Master::name`].
    pub fn shards_per_master(
        &self,
        prefix: &str,
        sku: &Sku,
        shards: u16,
    ) -> anyhow::Result<BTreeMap<String, u16>> {
        let mut held: BTreeMap<String, u16> =
            self.masters()?.iter().map(|m| (m.name(), 0)).collect();
        let keys = KeySpace::new(prefix)?;
        for shard in 0..shards {
            let port = match self {
                Self::Single(redis) => redis.port(),
                Self::Cluster(cluster) => cluster.master_of(&keys.shard(sku, shard).hash)?.port,
            };
            *held.entry(format!("127.0.0.1:{port}")).or_default() += 1;
        }
        Ok(held)
    }
}

/// `--redis-url <url>`, or for a cluster `--redis-url <seed>,<seed>,... --redis-cluster`.
pub fn redis_args(urls: &[String], cluster: bool) -> Vec<String> {
    let mut args = vec!["--redis-url".to_owned(), urls.join(",")];
    if cluster {
        args.push("--redis-cluster".to_owned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_engine_is_told_where_its_redis_is() {
        assert_eq!(
            redis_args(&args(&["redis://127.0.0.1:7001"]), false),
            args(&["--redis-url", "redis://127.0.0.1:7001"])
        );
        assert_eq!(
            redis_args(
                &args(&[
                    "redis://127.0.0.1:7001",
                    "redis://127.0.0.1:7002",
                    "redis://127.0.0.1:7003"
                ]),
                true
            ),
            args(&[
                "--redis-url",
                "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003",
                "--redis-cluster"
            ])
        );
    }

    #[test]
    fn script_counters_come_from_the_evalsha_line() {
        let info = "# Commandstats\r\ncmdstat_eval:calls=1,usec=9,usec_per_call=9.00\r\n\
                    cmdstat_evalsha:calls=120,usec=3456,usec_per_call=28.80,rejected_calls=0\r\n";
        let stats = ScriptStats::parse(info);
        assert_eq!(
            stats,
            ScriptStats {
                usec: 3456,
                calls: 120
            }
        );
        assert_eq!(
            ScriptStats::parse("# Commandstats\r\n"),
            ScriptStats::default()
        );
        assert_eq!(
            stats.since(ScriptStats {
                usec: 456,
                calls: 20
            }),
            ScriptStats {
                usec: 3000,
                calls: 100
            }
        );
    }
}
