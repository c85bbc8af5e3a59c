//! A private Redis Cluster for tests, benches and the load harness: `masters * (1 +
//! replicas)` `redis-server --cluster-enabled yes` nodes on free loopback ports, one
//! temporary directory each, joined by `redis-cli --cluster create`. It can kill a node (a
//! crash: SIGKILL) and wait for its replica to take over, and move slots from one master to
//! another while clients run, as a live reshard does.
//!
//! Everything the cluster says is read from the nodes themselves (`CLUSTER NODES`,
//! `CLUSTER INFO`, `INFO replication`) over raw RESP: the helpers do not depend on the Redis
//! client the code under test uses.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::resp::{self, Reply};
use crate::{free_port, redis_cli_binary, redis_server_binary};

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// `cluster-node-timeout`: how long a node may be silent before it is failed. Short, so
/// that a failover test takes seconds; the machine is loopback, nothing is that slow.
const NODE_TIMEOUT_MS: u64 = 2000;

/// A node's cluster bus listens on its port + 10000 (the default `cluster-port`).
const BUS_OFFSET: u16 = 10000;

/// Keys moved per `MIGRATE` during a reshard.
const MIGRATE_BATCH: usize = 100;

/// How long `start` waits for the cluster to form, and a reshard for every node to agree.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const AGREE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shape of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClusterOptions {
    /// Masters, each owning an equal share of the slots; at least 3 (`redis-cli --cluster
    /// create` refuses fewer).
    pub masters: usize,
    /// Replicas per master.
    pub replicas: usize,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas: 0,
        }
    }
}

/// What a node is now, by its own `CLUSTER NODES` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Serves its slots.
    Master,
    /// Replicates the master on `master_port`.
    Replica {
        /// The port of the master it replicates.
        master_port: u16,
    },
}

/// One running node, as it describes itself now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its process id.
    pub pid: u32,
    /// Its cluster node id.
    pub id: String,
    /// Master or replica, now.
    pub role: Role,
}

impl ClusterNode {
    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it is a master now.
    pub fn is_master(&self) -> bool {
        self.role == Role::Master
    }
}

/// A node process of ours.
#[derive(Debug)]
struct Process {
    port: u16,
    /// Its node id: fixed when the node first starts (it is in its `nodes-<port>.conf`).
    id: String,
    /// `None` once killed.
    child: Option<Child>,
    /// Removed when the process is dropped, after the cluster's `Drop` killed it.
    dir: tempfile::TempDir,
}

/// What a killed master owned, to know when its slots have a new owner.
#[derive(Debug)]
struct Killed {
    id: String,
    slots: Vec<RangeInclusive<u16>>,
}

/// A running private Redis Cluster. Every node is killed, and its directory removed, when
/// this drops.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<Process>,
    /// The masters' ports at start.
    seeds: Vec<u16>,
    /// Masters killed, by port.
    killed: HashMap<u16, Killed>,
}

impl LocalCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` with all 16384 slots served, knows every other node, and every
    /// replica's link to its master is up.
    pub fn start(options: LocalClusterOptions) -> io::Result<Self> {
        if options.masters < 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a Redis Cluster needs at least 3 masters, not {} (redis-cli --cluster \
                     create refuses fewer)",
                    options.masters
                ),
            ));
        }
        let total = options.masters * (1 + options.replicas);
        let mut cluster = Self {
            nodes: Vec::with_capacity(total),
            seeds: Vec::new(),
            killed: HashMap::new(),
        };
        // Should a later step fail, dropping `cluster` stops the nodes started so far.
        for _ in 0..total {
            cluster.nodes.push(Process::start()?);
        }
        cluster.create(options.replicas)?;
        cluster.wait("the cluster to form", FORM_TIMEOUT, |c| c.formed())?;
        cluster.seeds = cluster.masters()?.iter().map(|n| n.port).collect();
        Ok(cluster)
    }

    /// `redis-cli --cluster create` over every node, the slots split evenly over the
    /// masters.
    fn create(&self, replicas: usize) -> io::Result<()> {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(redis_cli_binary())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run redis-cli ({e}); install it (apt-get install redis-tools, \
                         which redis-server brings) or set FLASHSALE_REDIS_CLI"
                    ),
                )
            })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed with {}: {}",
                out.status,
                tail(
                    &String::from_utf8_lossy(&[out.stdout, out.stderr].concat()),
                    10
                )
            )));
        }
        Ok(())
    }

    /// `Ok` once the cluster is whole; else what is still missing.
    fn formed(&self) -> Result<(), String> {
        for node in self.live() {
            let port = node.port;
            let info = cluster_info(port).map_err(|e| format!("node {port}: {e}"))?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_ok", "16384"),
                ("cluster_known_nodes", &self.nodes.len().to_string()),
            ] {
                let got = info_field(&info, field);
                if got != Some(want) {
                    return Err(format!("node {port}: {field} is {got:?}, not {want}"));
                }
            }
            let view = view(port).map_err(|e| format!("node {port}: {e}"))?;
            if let Some(line) = view.iter().find(|l| l.has("handshake") || l.has("noaddr")) {
                return Err(format!("node {port} is still meeting node {}", line.id));
            }
            let me = myself(&view).map_err(|e| format!("node {port}: {e}"))?;
            if me.has("slave") {
                let replication = resp::call(port, &[b"INFO", b"replication"])
                    .and_then(|r| r.ok()?.into_string())
                    .map_err(|e| format!("node {port}: {e}"))?;
                let link = info_field(&replication, "master_link_status");
                if link != Some("up") {
                    return Err(format!(
                        "replica {port}: master_link_status is {link:?}, not up"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Calls `done` until it is `Ok` or `within` has passed; the last reason it gave is
    /// the error's.
    fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Self) -> Result<T, String>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + within;
        loop {
            match done(self) {
                Ok(value) => return Ok(value),
                Err(why) if Instant::now() > deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("waited {within:?} for {what}: {why}"),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &Process> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    fn process(&self, port: u16) -> io::Result<&Process> {
        self.live().find(|n| n.port == port).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no running node of this cluster on port {port}"),
            )
        })
    }

    /// `redis://127.0.0.1:<port>` of every master at start: the seeds a cluster client
    /// starts from (`flashsale serve --redis-url a,b,c --redis-cluster`).
    pub fn seed_urls(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Every running node (killed ones are gone), by port, with its role now.
    pub fn nodes(&self) -> io::Result<Vec<ClusterNode>> {
        self.live().map(|n| self.describe(n)).collect()
    }

    /// The nodes that are masters now.
    pub fn masters(&self) -> io::Result<Vec<ClusterNode>> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter(ClusterNode::is_master)
            .collect())
    }

    /// The running node on `port`.
    pub fn node(&self, port: u16) -> io::Result<ClusterNode> {
        self.describe(self.process(port)?)
    }

    fn describe(&self, process: &Process) -> io::Result<ClusterNode> {
        let view = view(process.port)?;
        let me = myself(&view)?;
        let role = if me.has("master") {
            Role::Master
        } else {
            let master_id = me.master_id.as_deref().unwrap_or("-");
            let master = view.iter().find(|l| l.id == master_id).ok_or_else(|| {
                io::Error::other(format!(
                    "node {} replicates {master_id}, which it does not list",
                    process.port
                ))
            })?;
            Role::Replica {
                master_port: master.port,
            }
        };
        Ok(ClusterNode {
            port: process.port,
            pid: process.child.as_ref().map_or(0, Child::id),
            id: process.id.clone(),
            role,
        })
    }

    /// Its working directory (`nodes-<port>.conf`, `redis.log`).
    pub fn dir(&self, port: u16) -> Option<&Path> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.dir.path())
    }

    /// The hash slot of `key`, as Redis computes it: CRC16 (XMODEM) of the key's hash tag
    /// (the text between the first `{` and the first `}` after it, when not empty) or of
    /// the whole key, modulo 16384.
    pub fn slot_of(key: &str) -> u16 {
        crc16_xmodem(hash_tag(key.as_bytes())) % SLOTS
    }

    /// The master that owns `key`'s slot now, as the running nodes see it.
    pub fn master_of(&self, key: &str) -> io::Result<ClusterNode> {
        self.node(self.owner_of(Self::slot_of(key))?)
    }

    /// The port of the running master that owns `slot`, by the first running node whose
    /// view names one (a view may still name a dead node until the failover completes).
    fn owner_of(&self, slot: u16) -> io::Result<u16> {
        for node in self.live() {
            let Ok(view) = view(node.port) else { continue };
            let owner = view
                .iter()
                .find(|l| l.owns(slot) && !l.failed() && self.process(l.port).is_ok());
            if let Some(owner) = owner {
                return Ok(owner.port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no running node owns slot {slot}"),
        ))
    }

    /// Runs one command given as words on the node on `port`, on a connection of its own,
    /// and returns the raw reply as [`LocalRedis::command`](crate::LocalRedis::command)
    /// does: a bulk string's contents, else the first line (`+OK`, `-MOVED 866
    /// 127.0.0.1:7001`, `:1`, `*3`). No redirection is followed.
    pub fn command(&self, port: u16, words: &[&str]) -> io::Result<String> {
        self.process(port)?;
        resp::command(port, words)
    }

    /// Runs `commands` in order on one connection to the node on `port`, and returns their
    /// replies as [`Self::command`] does: for what depends on the connection, such as
    /// `SET` then `WAIT 1 <ms>` (which counts the replicas that have this connection's
    /// writes: on a connection of its own it waits for nothing), `READONLY` before reading
    /// a replica, or `ASKING` before a command on a slot being imported.
    pub fn commands(&self, port: u16, commands: &[&[&str]]) -> io::Result<Vec<String>> {
        self.process(port)?;
        resp::commands(port, commands)
    }

    /// Kills the node on `port` with SIGKILL, as a crash would, and waits for it to be
    /// gone. Its directory stays until the cluster drops.
    pub fn kill(&mut self, port: u16) -> io::Result<()> {
        let process = self.process(port)?;
        // What it owned, from its own view while it can still tell: `wait_failover` waits
        // for these slots to have a new owner.
        let view = view(port)?;
        let me = myself(&view)?;
        let killed = Killed {
            id: process.id.clone(),
            slots: if me.has("master") {
                me.slots.clone()
            } else {
                Vec::new()
            },
        };
        let process = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("found above");
        if let Some(mut child) = process.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        self.killed.insert(port, killed);
        Ok(())
    }

    /// Waits until the slots of the master killed on `old_master_port` are served by
    /// another node, a master now (its replica, promoted), that every running node agrees
    /// on, and every running node reports `cluster_state:ok` again; returns that master.
    pub fn wait_failover(&self, old_master_port: u16, within: Duration) -> io::Result<ClusterNode> {
        let killed = self.killed.get(&old_master_port).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no node on port {old_master_port} was killed"),
            )
        })?;
        if killed.slots.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the node killed on port {old_master_port} was not a master with slots"),
            ));
        }
        let port = self.wait(
            &format!("a replica to take over from {old_master_port}"),
            within,
            |c| c.taken_over(killed),
        )?;
        self.node(port)
    }

    /// `Ok(port)` of the master every running node names for every range `killed` had,
    /// once it calls itself master and every running node says the cluster is ok.
    fn taken_over(&self, killed: &Killed) -> Result<u16, String> {
        let mut heir = None;
        for node in self.live() {
            let port = node.port;
            let info = cluster_info(port).map_err(|e| format!("node {port}: {e}"))?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("node {port}: cluster_state is not ok"));
            }
            let view = view(port).map_err(|e| format!("node {port}: {e}"))?;
            for range in &killed.slots {
                let slot = *range.start();
                let owner = view
                    .iter()
                    .find(|l| l.owns(slot))
                    .ok_or_else(|| format!("node {port}: nobody owns slot {slot}"))?;
                if owner.id == killed.id || owner.failed() {
                    return Err(format!("node {port}: slot {slot} still on the dead master"));
                }
                match heir {
                    None => heir = Some(owner.port),
                    Some(p) if p == owner.port => {}
                    Some(p) => {
                        return Err(format!(
                            "node {port} says slot {slot} is on {}, another says {p}",
                            owner.port
                        ))
                    }
                }
            }
        }
        let heir = heir.ok_or("no running node")?;
        match self.node(heir) {
            Ok(node) if node.is_master() => Ok(heir),
            Ok(_) => Err(format!("node {heir} does not call itself master yet")),
            Err(e) => Err(format!("node {heir}: {e}")),
        }
    }

    /// Moves `slots` to the master on `to_port`, keys and all, while clients run: per slot,
    /// `CLUSTER SETSLOT IMPORTING` on the target and `MIGRATING` on the owner (clients
    /// are sent `ASK` meanwhile), `CLUSTER GETKEYSINSLOT` and `MIGRATE ... KEYS` in
    /// batches, then `CLUSTER SETSLOT NODE` on the target, the owner and the other
    /// masters. Returns once every running node names the target for every slot.
    pub fn reshard(&self, slots: &[u16], to_port: u16) -> io::Result<()> {
        let target = self.node(to_port)?;
        if !target.is_master() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node {to_port} is a replica: slots move to masters"),
            ));
        }
        if let Some(slot) = slots.iter().find(|&&s| s >= SLOTS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slot {slot} is not below {SLOTS}"),
            ));
        }
        for &slot in slots {
            let from_port = self.owner_of(slot)?;
            if from_port == to_port {
                continue;
            }
            let source = self.process(from_port)?.id.clone();
            self.move_slot(slot, from_port, &source, &target)?;
        }
        self.wait("every node to agree on the move", AGREE_TIMEOUT, |c| {
            c.all_name(slots, &target.id)
        })
    }

    fn move_slot(
        &self,
        slot: u16,
        from_port: u16,
        source: &str,
        target: &ClusterNode,
    ) -> io::Result<()> {
        let slot_arg = slot.to_string();
        let slot_arg = slot_arg.as_bytes();
        let setslot = |port: u16, how: &[u8], id: &str| -> io::Result<()> {
            resp::call(
                port,
                &[b"CLUSTER", b"SETSLOT", slot_arg, how, id.as_bytes()],
            )?
            .ok()
            .map(drop)
            .map_err(|e| io::Error::other(format!("CLUSTER SETSLOT on {port}: {e}")))
        };
        setslot(target.port, b"IMPORTING", source)?;
        setslot(from_port, b"MIGRATING", &target.id)?;
        let target_port = target.port.to_string();
        let batch = MIGRATE_BATCH.to_string();
        loop {
            let keys = match resp::call(
                from_port,
                &[b"CLUSTER", b"GETKEYSINSLOT", slot_arg, batch.as_bytes()],
            )?
            .ok()?
            {
                Reply::Array(Some(keys)) => keys,
                other => return Err(resp::unexpected(&other)),
            };
            if keys.is_empty() {
                break;
            }
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .map(|k| match k {
                    Reply::Bulk(Some(key)) => Ok(key),
                    other => Err(resp::unexpected(&other)),
                })
                .collect::<io::Result<_>>()?;
            let mut migrate: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                target_port.as_bytes(),
                b"",
                b"0",
                b"10000",
                b"REPLACE",
                b"KEYS",
            ];
            migrate.extend(keys.iter().map(Vec::as_slice));
            resp::call(from_port, &migrate)?
                .ok()
                .map_err(|e| io::Error::other(format!("MIGRATE from {from_port}: {e}")))?;
        }
        // The target first, so that it serves the slot before the owner redirects to it.
        setslot(target.port, b"NODE", &target.id)?;
        setslot(from_port, b"NODE", &target.id)?;
        for master in self.masters()? {
            if master.port != target.port && master.port != from_port {
                setslot(master.port, b"NODE", &target.id)?;
            }
        }
        Ok(())
    }

    /// `Ok` once every running node names `owner` for every one of `slots`.
    fn all_name(&self, slots: &[u16], owner: &str) -> Result<(), String> {
        for node in self.live() {
            let view = view(node.port).map_err(|e| format!("node {}: {e}", node.port))?;
            for &slot in slots {
                let named = view.iter().find(|l| l.owns(slot)).map(|l| l.id.as_str());
                if named != Some(owner) {
                    return Err(format!(
                        "node {} names {named:?} for slot {slot}",
                        node.port
                    ));
                }
            }
        }
        Ok(())
    }

    /// Moves the slot holding `key` to the master on `to_port` (see [`Self::reshard`]) and
    /// returns the slot.
    pub fn move_slot_of(&self, key: &str, to_port: u16) -> io::Result<u16> {
        let slot = Self::slot_of(key);
        self.reshard(&[slot], to_port)?;
        Ok(slot)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The directories go as `self.nodes` drops, the processes that wrote them gone.
    }
}

impl Process {
    /// Starts a node on free ports (its own and its bus port) in a new directory, trying
    /// other ports if someone takes the chosen ones first.
    fn start() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("flashsale-cluster-")
            .tempdir()?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_node_port()?;
            match spawn(port, dir.path()) {
                Ok(child) => {
                    let mut process = Self {
                        port,
                        id: String::new(),
                        child: Some(child),
                        dir,
                    };
                    process.id = resp::call(port, &[b"CLUSTER", b"MYID"])?
                        .ok()?
                        .into_string()?;
                    return Ok(process);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }
}

/// A port whose bus port (+10000) is free too, both within the port range.
fn free_node_port() -> io::Result<u16> {
    for _ in 0..100 {
        let port = free_port()?;
        let Some(bus) = port.checked_add(BUS_OFFSET) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no free port with a free cluster bus port",
    ))
}

/// Runs a cluster node on `port` in `dir` and waits until it answers `PING`.
fn spawn(port: u16, dir: &Path) -> io::Result<Child> {
    let mut child = Command::new(redis_server_binary())
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--daemonize", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-config-file"])
        .arg(dir.join(format!("nodes-{port}.conf")))
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        // A master waits 5 s by default for more replicas before a full sync; each has one.
        .args(["--repl-diskless-sync-delay", "0"])
        // DEBUG SLEEP lets tests stall a node (loopback only).
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot run redis-server ({e}); install it (apt-get install redis-server) \
                     or set FLASHSALE_REDIS_SERVER"
                ),
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            return Err(io::Error::other(format!(
                "redis-server on port {port} exited with {status}: {}",
                tail(&log, 5)
            )));
        }
        if resp::call(port, &[b"PING"]).is_ok_and(|r| r == Reply::Simple("PONG".into())) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("redis-server on port {port} did not answer"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" / ")
}

fn cluster_info(port: u16) -> io::Result<String> {
    resp::call(port, &[b"CLUSTER", b"INFO"])?
        .ok()?
        .into_string()
}

/// The value of `field:value` in an `INFO`-style text.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master>
/// <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// `None` for `-` (a master).
    master_id: Option<String>,
    /// Slots it serves; the `[slot->-id]` / `[slot-<-id]` migration marks are left out.
    slots: Vec<RangeInclusive<u16>>,
}

impl NodeLine {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn failed(&self) -> bool {
        self.has("fail") || self.has("fail?")
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|r| r.contains(&slot))
    }

    fn parse(line: &str) -> io::Result<Self> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad CLUSTER NODES line {line:?}"),
            )
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(bad());
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or("");
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(bad)?;
        let mut slots = Vec::new();
        for slot in fields[8..].iter().filter(|s| !s.starts_with('[')) {
            let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
            let (start, end) = (
                start.parse().map_err(|_| bad())?,
                end.parse().map_err(|_| bad())?,
            );
            slots.push(start..=end);
        }
        Ok(Self {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        })
    }
}

/// The node on `port`'s `CLUSTER NODES`, parsed.
fn view(port: u16) -> io::Result<Vec<NodeLine>> {
    let text = resp::call(port, &[b"CLUSTER", b"NODES"])?
        .ok()?
        .into_string()?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(NodeLine::parse)
        .collect()
}

fn myself(view: &[NodeLine]) -> io::Result<&NodeLine> {
    view.iter().find(|l| l.has("myself")).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "CLUSTER NODES has no myself line",
        )
    })
}

/// The key's hash tag, or the whole key when it has none.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// CRC16 (XMODEM: polynomial 0x1021, initial value 0, no reflection), the one Redis Cluster
/// hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM, and the one the Redis Cluster spec gives.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b""), 0);
    }

    #[test]
    fn hash_tags_follow_the_cluster_spec() {
        // The spec's examples.
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no{close"), b"no{close");
        assert_eq!(LocalCluster::slot_of("123456789"), 0x31C3 % SLOTS);
        assert_eq!(
            LocalCluster::slot_of("fs:{phone:3}:events"),
            LocalCluster::slot_of("phone:3")
        );
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let master = NodeLine::parse(
            "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004,host-a master - 0 \
             1426238317239 4 connected 0-5460 5462 [5463->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]",
        )
        .unwrap();
        assert_eq!(master.port, 30004);
        assert!(master.has("master") && !master.failed());
        assert_eq!(master.master_id, None);
        assert_eq!(master.slots, vec![0..=5460, 5462..=5462]);
        assert!(master.owns(5460) && !master.owns(5461) && master.owns(5462) && !master.owns(5463));
        let replica = NodeLine::parse(
            "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30002@40002 myself,slave,fail? \
             07c37dfeb235213a872192d90877d0cd55635b91 0 0 2 connected",
        )
        .unwrap();
        assert!(replica.has("myself") && replica.has("slave") && replica.failed());
        assert_eq!(
            replica.master_id.as_deref(),
            Some("07c37dfeb235213a872192d90877d0cd55635b91")
        );
        assert!(replica.slots.is_empty());
        assert!(NodeLine::parse("short line").is_err());
    }

    #[test]
    fn info_fields_are_found_by_whole_name() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_slots_ok"), Some("16384"));
        assert_eq!(info_field(info, "cluster_slots"), None);
    }

    #[test]
    fn fewer_than_three_masters_is_refused_before_anything_starts() {
        let error = LocalCluster::start(LocalClusterOptions {
            masters: 2,
            replicas: 1,
        })
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("at least 3 masters"), "{error}");
    }
}
