//! A private `redis-server` on a free loopback port, in a directory of its own: what the
//! demo, the tests and the load harness run against. Never a Redis someone else started.
//!
//! The server is killed when the handle drops.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, redis_server_binary, resp};

/// How the append-only file is synced, when it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `appendfsync always`: at most the write in flight is lost on a crash.
    Always,
    /// `appendfsync everysec`: up to about a second of acknowledged writes may be lost.
    EverySec,
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct LocalRedisOptions {
    /// Append-only file on, with this sync policy; `None` keeps nothing on disk.
    pub aof: Option<Fsync>,
}

/// A running private `redis-server`.
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: LocalRedisOptions,
}

impl LocalRedis {
    /// Starts a server that keeps nothing on disk.
    pub fn start() -> io::Result<Self> {
        Self::start_with(LocalRedisOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: LocalRedisOptions) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("flashsale-redis-")
            .tempdir()?;
        let mut redis = Self {
            child: None,
            port: 0,
            dir,
            options,
        };
        let mut last_error = None;
        // A free port can be taken by someone else before the server binds it: try again.
        for _ in 0..5 {
            redis.port = free_port()?;
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path();
        let mut command = Command::new(redis_server_binary());
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            // DEBUG SLEEP lets tests stall this private server (loopback only).
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        match self.options.aof {
            None => command.args(["--appendonly", "no"]),
            Some(fsync) => command.args([
                "--appendonly",
                "yes",
                "--appendfsync",
                match fsync {
                    Fsync::Always => "always",
                    Fsync::EverySec => "everysec",
                },
            ]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run redis-server ({e}); install it (apt-get install redis-server) or set FLASHSALE_REDIS_SERVER"),
                )
            })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    /// Waits until the server answers `PING`, or its process has exited.
    fn wait_ready(&mut self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis-server exited with {status}: {}",
                    self.log_tail()
                )));
            }
            if ping(self.port).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server did not answer: {}", self.log_tail()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory (append-only file, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and directory: with the
    /// append-only file on, it comes back with its data; either way without its scripts.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        // The old process has released the port once `wait` returned; rebinding the same
        // port can still race with the kernel, so try a few times.
        let mut last = None;
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not restart")))
    }

    /// The `usec` and `calls` that `INFO commandstats` counts for `EVALSHA` so far: the
    /// Redis time spent in scripts, for benchmarks and reports.
    pub fn script_stats(&self) -> (u64, u64) {
        evalsha_stats(&self.command(&["INFO", "commandstats"]).unwrap_or_default())
    }

    /// Runs one command given as words and returns the raw reply (for tests and reports):
    /// a bulk string's contents (empty for nil), else the reply's first line (`+OK`,
    /// `-ERR ...`, `:1`, `*3`).
    pub fn command(&self, words: &[&str]) -> io::Result<String> {
        resp::command(self.port, words)
    }
}

fn ping(port: u16) -> io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(io::Error::other("unexpected PING reply (loading?)"))
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `usec` and `calls` of `EVALSHA` in an `INFO commandstats` answer (zeros when no
/// script ran), from any node.
pub fn evalsha_stats(info: &str) -> (u64, u64) {
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("");
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("usec="), field("calls="))
}
