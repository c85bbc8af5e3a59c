//! A private PostgreSQL server on a free loopback port, in a directory of its own: what the
//! tests and local runs use. Never a PostgreSQL someone else started (such as the system one
//! on 5432): the cluster is created by `initdb` in a fresh temporary directory and listens
//! only on 127.0.0.1, with its unix socket inside that directory.
//!
//! The server is stopped when the handle drops, and the directory removed.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Where Debian's `postgresql` package installs each major version: `<root>/<version>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The OS user the server runs as when we are root: PostgreSQL refuses to run as root.
const OS_USER: &str = "postgres";

/// A running (or stopped, see [`LocalPostgres::stop`]) private PostgreSQL server.
///
/// Authentication is `trust` for the superuser `postgres`: anyone on this machine who can
/// reach the loopback port can connect, which is fine for throwaway test data.
#[derive(Debug)]
pub struct LocalPostgres {
    /// The directory with `initdb`, `pg_ctl` and `psql`.
    bin_dir: PathBuf,
    /// Whether `initdb` and `pg_ctl` go through `runuser -u postgres`.
    as_root: bool,
    port: u16,
    /// Whether we started the server and have not stopped it since.
    running: bool,
    /// Declared last so that it is removed after `Drop::drop` has stopped the server.
    dir: tempfile::TempDir,
}

/// The directory holding the server binaries: `$FLASHSALE_PG_BIN`, or the highest version
/// under `/usr/lib/postgresql` that has an `initdb`.
fn find_bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLASHSALE_PG_BIN") {
        let dir = PathBuf::from(dir);
        // An explicit setting that does not work is an error, not a reason to guess.
        if !dir.join("initdb").is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "FLASHSALE_PG_BIN={} has no initdb in it; point it at PostgreSQL's bin directory",
                    dir.display()
                ),
            ));
        }
        return Ok(dir);
    }
    let not_found = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no PostgreSQL found under {DEBIAN_ROOT}/<version>/bin; install it \
                 (apt-get install postgresql) or set FLASHSALE_PG_BIN to its bin directory"
            ),
        )
    };
    let entries = std::fs::read_dir(DEBIAN_ROOT).map_err(|_| not_found())?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        // Compared as numbers, so that 10 is newer than 9.6.
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
        .ok_or_else(not_found)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else (such as `"common"`) → `None`.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Whether this process runs with effective uid 0, without `libc`: the `Uid:` line of
/// `/proc/self/status` (real, effective, saved, fs), else `id -u`.
fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(2) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `runuser`, by full path when it is in the usual place: root's `PATH` may lack `/usr/sbin`.
fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Quotes `s` for the `/bin/sh` command line `pg_ctl` builds from its `-o` option.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A process's stdout and stderr, on one line, for error messages.
fn output_text(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

impl LocalPostgres {
    /// Creates a new cluster in a temporary directory and starts it on a free loopback port.
    pub fn start() -> io::Result<Self> {
        let bin_dir = find_bin_dir()?;
        let as_root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("flashsale-pg-")
            .tempdir_in(std::env::temp_dir())?;
        let mut pg = Self {
            bin_dir,
            as_root,
            port: 0,
            running: false,
            dir,
        };
        if as_root {
            pg.hand_dir_to_postgres()?;
        }
        pg.initdb()?;
        let mut last_error = None;
        // A free port can be taken by someone else before the server binds it: try again.
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// As root, the server runs as `postgres`, which must be able to enter the temporary
    /// directory (created 0700 for root) and write the cluster and log into it.
    fn hand_dir_to_postgres(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{OS_USER}:{OS_USER}"))
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run chown ({e})")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "chown {OS_USER} {} failed (does the {OS_USER} user exist? it comes with the \
                 postgresql package): {}",
                self.dir.path().display(),
                output_text(&out)
            )));
        }
        Ok(())
    }

    /// A command running `program` from the bin directory, as `postgres` when we are root.
    fn server_command(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        let mut command = if self.as_root {
            let mut c = Command::new(runuser());
            c.args(["-u", OS_USER, "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        // The caller's working directory may be closed to `postgres` (say, under /root).
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }

    /// Runs `command` to completion, turning a failure to run it into a clear error.
    fn run(&self, mut command: Command, what: &str) -> io::Result<Output> {
        command.output().map_err(|e| {
            let how = if self.as_root {
                format!("via runuser -u {OS_USER}")
            } else {
                "directly".to_owned()
            };
            io::Error::new(e.kind(), format!("cannot run {what} {how} ({e})"))
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Creates the cluster: superuser `postgres`, trust authentication, C locale. `--no-sync`
    /// because the cluster is thrown away; a crash of the machine loses nothing we keep.
    fn initdb(&self) -> io::Result<()> {
        let mut command = self.server_command("initdb");
        command.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let out = self.run(command, "initdb")?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb in {} failed with {}: {}",
                self.data_dir().display(),
                out.status,
                output_text(&out)
            )));
        }
        Ok(())
    }

    /// Starts the server on `self.port` and waits until it accepts TCP connections.
    fn pg_ctl_start(&mut self) -> io::Result<()> {
        let socket_dir = self
            .dir
            .path()
            .to_str()
            .ok_or_else(|| io::Error::other("the temporary directory's path is not UTF-8"))?;
        // Loopback only, socket in our directory (not /var/run/postgresql, which the system
        // server uses), and durability off: nothing here outlives the test.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=100 -c shared_buffers=32MB",
            self.port,
            shell_quote(socket_dir)
        );
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(options)
            .args(["-w", "-t", "60", "start"]);
        // pg_ctl sends the server's own output to the log and stdin from /dev/null, so the
        // detached server does not hold our pipes and `output` returns when pg_ctl does.
        let out = self.run(command, "pg_ctl start")?;
        if !out.status.success() {
            let error = io::Error::other(format!(
                "pg_ctl start on port {} failed with {}: {}; log: {}",
                self.port,
                out.status,
                output_text(&out),
                self.log_tail()
            ));
            // pg_ctl gives up after its timeout but the server may still be coming up: make
            // sure it is not left behind.
            self.running = true;
            self.stop_with("immediate");
            return Err(error);
        }
        self.running = true;
        // pg_ctl -w waits for the postmaster to report itself ready; make sure the port we
        // hand out answers too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts(self.port) {
            if Instant::now() > deadline {
                let log = self.log_tail();
                self.stop_with("immediate");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "postgres started but does not accept connections on 127.0.0.1:{}; log: {log}",
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops the server with `pg_ctl stop -m <mode>`, waiting for it to be gone; kills it if
    /// `pg_ctl` cannot, so that nothing is left running.
    fn stop_with(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        self.running = false;
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        let stopped = self
            .run(command, "pg_ctl stop")
            .map(|out| out.status.success())
            .unwrap_or(false);
        if !stopped {
            self.kill_postmaster();
        }
    }

    /// The postmaster's process id, from our own `postmaster.pid` (the backends serving
    /// connections are its children).
    pub fn postmaster_pid(&self) -> io::Result<u32> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))?;
        pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "postmaster.pid does not start with a process id",
                )
            })
    }

    /// Last resort: SIGKILL the postmaster whose pid is in our own `postmaster.pid`, and
    /// only that one (its children exit when they notice it is gone).
    fn kill_postmaster(&self) {
        let data_dir = self.data_dir();
        let Ok(pid) = self.postmaster_pid() else {
            return;
        };
        // The pid file may be stale and its pid reused by an unrelated process: kill only a
        // process whose command line names our data directory (pg_ctl passes `-D <data>`).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = cmdline
            .split(|&b| b == 0)
            .any(|arg| Path::new(&*String::from_utf8_lossy(arg)) == data_dir);
        if !ours {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join(" / ")
    }

    /// The port it listens on (127.0.0.1), the same after [`LocalPostgres::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: superuser, no password (trust).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory with the PostgreSQL binaries in use (`psql` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Its temporary directory: the cluster in `data`, the server log in `postgres.log`,
    /// and the unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` with `psql` over TCP as `postgres` and returns its unaligned, tuples-only
    /// output without the trailing newline (for tests and reports).
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        // psql itself does not mind root, so it runs directly; `-X` skips any ~/.psqlrc.
        let out = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run psql ({e})")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "psql on port {} failed with {}: {}",
                self.port,
                out.status,
                output_text(&out)
            )));
        }
        let stdout = String::from_utf8(out.stdout).map_err(io::Error::other)?;
        Ok(stdout.trim_end_matches('\n').to_owned())
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, data is kept) and waits
    /// for it to be gone. Does nothing if it is not running.
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Starts the same cluster again on the same port, after [`LocalPostgres::stop`]: for
    /// tests that take the database away for a while and bring it back.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.running {
            return Ok(());
        }
        // The port was ours a moment ago, but the kernel may hold it briefly after the old
        // server closed it; try a few times before giving up.
        let mut last = None;
        for _ in 0..20 {
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| io::Error::other("postgres did not start again")))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // Immediate: the data is about to be deleted, so there is nothing to shut down cleanly.
        self.stop_with("immediate");
    }
}
