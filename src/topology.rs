//! Where Redis is: one server or a Redis Cluster, behind one connection type.
//!
//! `--redis-url` names one server, or several (repeated or comma-separated) as the seeds of
//! a cluster; `--redis-cluster` makes a single seed a cluster too. The store, the reconciler
//! and the repair protocol talk through [`RedisConnection`], which is either redis-rs's
//! [`ConnectionManager`] (one multiplexed connection that reconnects by itself) or its async
//! [`ClusterConnection`], which follows `MOVED` and `ASK` and retries `TRYAGAIN`,
//! `CLUSTERDOWN` and `MASTERDOWN` during a reshard or a failover.
//!
//! A cluster serves only commands whose keys share one hash slot. Every key the engine
//! writes carries a hash tag (see [`crate::keys`]), each script touches one shard's keys,
//! and the callers read shard by shard; [`RedisConnection::on_node_of`] and
//! [`RedisConnection::on_every_master`] reach a chosen node for the few commands that have
//! no key (`WAIT`, `INFO`).

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// Why the Redis flags were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No URL at all.
    #[error("no Redis URL given: pass --redis-url redis://host:port (several, or --redis-cluster, for Redis Cluster)")]
    Empty,
    /// A URL redis-rs cannot read.
    #[error("{url:?} is not a Redis URL ({reason}): write redis://host:port[/db]")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What redis-rs said.
        reason: String,
    },
    /// A database number on a cluster, which has only database 0.
    #[error("{0:?} names a database, but Redis Cluster has only database 0: drop the /db part")]
    ClusterDatabase(String),
}

/// One Redis server, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// A single server (`redis://host:port/db`).
    Single(String),
    /// A cluster, reached through any of these nodes; the rest are discovered.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The target `urls` name: one URL is a single server unless `cluster`; several are a
    /// cluster's seeds. Each entry may itself be a comma-separated list.
    pub fn parse<S: AsRef<str>>(urls: &[S], cluster: bool) -> Result<Self, TargetError> {
        let mut all: Vec<String> = Vec::new();
        for url in urls.iter().flat_map(|u| u.as_ref().split(',')) {
            let url = url.trim();
            if url.is_empty() || all.iter().any(|known| known == url) {
                continue;
            }
            url.into_connection_info()
                .map_err(|error| TargetError::BadUrl {
                    url: url.to_owned(),
                    reason: error.to_string(),
                })?;
            all.push(url.to_owned());
        }
        match all.len() {
            0 => Err(TargetError::Empty),
            1 if !cluster => Ok(Self::Single(all.remove(0))),
            _ => {
                if let Some(url) = all.iter().find(|url| {
                    url.as_str()
                        .into_connection_info()
                        .is_ok_and(|info| info.redis_settings().db() != 0)
                }) {
                    return Err(TargetError::ClusterDatabase(url.clone()));
                }
                Ok(Self::Cluster(all))
            }
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The URLs as given.
    pub fn urls(&self) -> &[String] {
        match self {
            Self::Single(url) => std::slice::from_ref(url),
            Self::Cluster(urls) => urls,
        }
    }

    /// A multiplexed connection: concurrent calls are pipelined on it. Never block on it
    /// (`BLOCK`, `WAIT` with a long timeout): every call behind would wait too.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<RedisConnection> {
        match self {
            Self::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(RedisConnection::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Self::Cluster(urls) => {
                // Retries cover a reshard (TRYAGAIN while a slot's keys migrate, then
                // MOVED) and a failover (CLUSTERDOWN until a replica is promoted, about
                // two node timeouts); each waits a little longer than the one before.
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .response_timeout(timeout)
                    .connection_timeout(timeout)
                    .retries(12)
                    .min_retry_wait(10)
                    .max_retry_wait(1_000)
                    .build()?;
                Ok(RedisConnection::Cluster(
                    client.get_async_connection().await?,
                ))
            }
        }
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => f.write_str(url),
            Self::Cluster(urls) => write!(f, "Redis Cluster via {}", urls.join(",")),
        }
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        Self::Single(url)
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        Self::Single(url.to_owned())
    }
}

/// A connection to either topology. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server.
    Single(ConnectionManager),
    /// A cluster: one connection per node, commands routed by their keys' slot.
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs `cmd` on the master that owns `key`'s slot (on a single server: on it). For
    /// keyless commands about one key's node, such as `WAIT` after a write to that key.
    pub async fn on_node_of(&mut self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd).await,
            Self::Cluster(conn) => {
                let node = Route::new(slot_of(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(node));
                conn.route_command(cmd.clone(), routing).await
            }
        }
    }

    /// Runs `cmd` on every master and returns each one's answer, by node address (on a
    /// single server: its one answer, under its URL's host).
    pub async fn on_every_master(&mut self, cmd: &Cmd) -> RedisResult<Vec<(String, Value)>> {
        match self {
            Self::Single(conn) => Ok(vec![(String::new(), conn.req_packed_command(cmd).await?)]),
            Self::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::Special),
                ));
                match conn.route_command(cmd.clone(), routing).await? {
                    Value::Map(answers) => answers
                        .into_iter()
                        .map(|(node, answer)| Ok((redis::from_redis_value(node)?, answer)))
                        .collect(),
                    other => Ok(vec![(String::new(), other)]),
                }
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// A connection that sends a command again, once, when the connection was lost under it:
/// for callers every one of whose commands may be sent twice (the reconciler's reads,
/// acknowledgements, claims and trims). A connection manager reconnects after a drop, but
/// the call that met the drop fails; this one then goes to the new connection.
#[derive(Clone)]
pub struct Resending(pub RedisConnection);

impl ConnectionLike for Resending {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(error) if connection_lost(&error) => self.0.req_packed_command(cmd).await,
                other => other,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(error) if connection_lost(&error) => {
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of the hash tag,
/// the part between the first `{` and the next `}` when that part is not empty, or else of
/// the whole key, modulo 16384.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Whether `error` means the connection (or a cluster node) went away, as opposed to a
/// refusal or a timeout: the server answering next may be a restarted or promoted one.
pub fn connection_lost(error: &RedisError) -> bool {
    if error.is_timeout() {
        return false;
    }
    error.is_connection_dropped()
        || error.is_io_error()
        || matches!(
            error.code(),
            Some("CLUSTERDOWN") | Some("MASTERDOWN") | Some("READONLY")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        // CRC16 XMODEM of "123456789" is 0x31C3, below 16384.
        assert_eq!(slot_of("123456789"), 0x31C3);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("fs:{tv:3}:events"), slot_of("tv:3"));
        assert_eq!(slot_of("a{}b"), slot_of("a{}b"));
        assert_ne!(slot_of("a{}b"), slot_of(""));
    }

    #[test]
    fn one_url_is_a_single_server_and_several_a_cluster() {
        assert_eq!(
            RedisTarget::parse(&["redis://127.0.0.1:7000/2"], false),
            Ok(RedisTarget::Single("redis://127.0.0.1:7000/2".into()))
        );
        assert_eq!(
            RedisTarget::parse(&["redis://a:1,redis://b:2", "redis://a:1"], false),
            Ok(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert!(RedisTarget::parse(&["redis://a:1"], true)
            .unwrap()
            .is_cluster());
        assert_eq!(
            RedisTarget::parse::<&str>(&[], false),
            Err(TargetError::Empty)
        );
        assert!(matches!(
            RedisTarget::parse(&["redis://a:1/3"], true),
            Err(TargetError::ClusterDatabase(_))
        ));
        assert!(matches!(
            RedisTarget::parse(&["redis://a:1", "redis://b:2/1"], false),
            Err(TargetError::ClusterDatabase(_))
        ));
        assert!(matches!(
            RedisTarget::parse(&["http://a:1"], false),
            Err(TargetError::BadUrl { .. })
        ));
    }
}
