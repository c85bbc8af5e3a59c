//! `--spawn`: a private Redis and the engine itself (`flashsale serve` with an SQLite ledger
//! in a temporary directory), so that one command shows a whole sale on a fresh machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale::ids::random_token;
use flashsale_testkit::{free_port, LocalRedis};

use crate::client::{Call, Connection, Target};

/// A running engine and its private Redis; both stop when this drops.
pub struct Spawned {
    /// The engine's Redis.
    pub redis: LocalRedis,
    /// The engine's base URL.
    pub base: String,
    /// Its admin token.
    pub admin_token: String,
    /// Its key prefix.
    pub prefix: String,
    /// Its ledger.
    pub database_url: String,
    child: Child,
    _dir: tempfile::TempDir,
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

/// Waits until `target` answers `GET /healthz`.
pub async fn wait_healthy(target: &Target, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = Connection::open(target).await {
            if let Ok(answer) = conn
                .send(&Call::Get {
                    path: "/healthz".into(),
                })
                .await
            {
                if answer.status == 200 {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{} did not come up",
            target.base()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Spawned {
    /// Starts a private Redis and the engine on it; `extra` goes to `flashsale serve`.
    pub async fn start(extra: &[String]) -> anyhow::Result<Self> {
        let redis = LocalRedis::start()?;
        let dir = tempfile::Builder::new()
            .prefix("flashsale-loadtest-")
            .tempdir()?;
        let port = free_port()?;
        let admin_token = random_token();
        let prefix = format!("lt{}:", random_token());
        let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
        let log = std::fs::File::create(dir.path().join("engine.log"))?;
        let child = Command::new(engine_binary()?)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis-url", &redis.url(), "--key-prefix", &prefix])
            .args([
                "--admin-token",
                &admin_token,
                "--database-url",
                &database_url,
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let spawned = Self {
            redis,
            base: format!("http://127.0.0.1:{port}"),
            admin_token,
            prefix,
            database_url,
            child,
            _dir: dir,
        };
        wait_healthy(&Target::parse(&spawned.base)?, Duration::from_secs(30)).await?;
        Ok(spawned)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SIGTERM lets the engine finish what is in flight; then make sure it is gone.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
