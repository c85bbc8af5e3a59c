//! `flashsale-loadtest serve`, as `scripts/serve.sh` runs it: the engine (the `flashsale`
//! binary next to it, built by `cargo build --workspace`) over a private Redis; try-outs
//! start clean with a ledger of their own, a signal stops the engine and then its Redis,
//! and the engine's own exit is passed on.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flashsale_loadtest::client::{put_json, Call, Connection, Target};
use serde_json::{json, Value};

fn free_port() -> u16 {
    flashsale_testkit::free_port().unwrap()
}

/// Waits for `child` to exit; kills it and fails if it has not within 30 s.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flashsale-loadtest serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The ports of the private Redis (or the cluster's masters) in the line the command prints
/// first: `redis: <url>` or `redis cluster: <url> <url> ...`.
fn redis_ports(line: &str) -> Vec<u16> {
    let urls = line
        .strip_prefix("redis: ")
        .or_else(|| line.strip_prefix("redis cluster: "))
        .unwrap_or_else(|| panic!("first line: {line:?}"));
    urls.split(' ')
        .map(|url| {
            url.strip_prefix("redis://127.0.0.1:")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("first line: {line:?}"))
        })
        .collect()
}

/// `flashsale-loadtest serve [<args> --] <engine args>` in `dir`, its output read line by
/// line.
struct TryOut {
    child: Child,
    lines: mpsc::Receiver<String>,
    target: Target,
    /// The private Redis's port (the masters' for a cluster), from the line it prints.
    redis_ports: Vec<u16>,
}

impl TryOut {
    fn spawn(dir: &Path, args: &[&str], engine_args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale-loadtest"))
            .arg("serve")
            .args(args)
            // Without its own arguments, as scripts/serve.sh passes them: no `--`.
            .args((!args.is_empty()).then_some("--"))
            .args(engine_args)
            .current_dir(dir)
            .env_remove("FLASHSALE_DATABASE_URL")
            .env_remove("FLASHSALE_NO_LEDGER")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        (child, lines)
    }

    async fn start(dir: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let (child, lines) = Self::spawn(dir, args, &["--admin-token", "t", "--listen", &listen]);
        let redis = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        let redis_ports = redis_ports(&redis);
        let ledger = lines.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            ledger.starts_with("ledger: sqlite://") && ledger.ends_with("/ledger.db"),
            "{ledger}"
        );
        let target = Target::parse(&format!("http://{listen}")).unwrap();
        let started = Instant::now();
        loop {
            let ready = match Connection::open(&target).await {
                Ok(mut conn) => conn
                    .send(&Call::Get {
                        path: "/readyz".into(),
                    })
                    .await
                    .is_ok_and(|a| a.status == 200),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            lines,
            target,
            redis_ports,
        }
    }

    async fn put_phone(&self) -> u16 {
        put_json(
            &self.target,
            "/v1/skus/phone-x",
            "t",
            &json!({ "stock": 2 }),
        )
        .await
        .unwrap()
    }

    async fn sku(&self) -> Value {
        let mut conn = Connection::open(&self.target).await.unwrap();
        conn.json(&Call::Get {
            path: "/v1/skus/phone-x".into(),
        })
        .await
        .unwrap()
    }

    /// Sends `signal` to the command (not to the engine), waits for it to exit, and checks
    /// that it exited cleanly and took its Redis with it.
    async fn stop(mut self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut self.child))
            .await
            .unwrap();
        assert!(status.success(), "{status}");
        let said: Vec<String> = self.lines.try_iter().collect();
        assert!(
            said.iter().any(|l| l.starts_with("flashsale listening on")),
            "{said:?}"
        );
        for port in self.redis_ports {
            assert!(!accepts(port), "its Redis on {port} outlived it");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_outs_start_clean_with_a_ledger_of_their_own_and_stop_on_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let first = TryOut::start(dir.path(), &[]).await;
    assert_eq!(first.redis_ports.len(), 1);
    assert_eq!(first.put_phone().await, 201);
    let mut conn = Connection::open(&first.target).await.unwrap();
    let held = conn
        .send(&Call::Reserve {
            sku: "phone-x".into(),
            user: "ann".into(),
            quantity: 1,
            key: "order-1001".into(),
        })
        .await
        .unwrap();
    assert_eq!(held.status, 201, "{held:?}");
    // The try-out has a ledger: the hold reaches it.
    let started = Instant::now();
    loop {
        let view = first.sku().await;
        if view["settled"]["held"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never settled: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop("-TERM").await;

    // A second try-out knows nothing of the first: the README's first PUT creates the SKU.
    let second = TryOut::start(dir.path(), &[]).await;
    assert_eq!(second.put_phone().await, 201);
    assert_eq!(second.sku().await["held"], 0);
    // ctrl-c as a terminal sends it.
    second.stop("-INT").await;
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the try-outs wrote into their directory: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_try_out_sells_over_its_private_cluster_and_settles() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TryOut::start(dir.path(), &["--cluster-masters", "3"]).await;
    assert_eq!(cluster.redis_ports.len(), 3, "every master is a seed");
    // Every master is a cluster node of the engine's.
    for &port in &cluster.redis_ports {
        let mut node = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut node, b"CLUSTER INFO\r\n").unwrap();
        let mut reply = [0u8; 64];
        let read = std::io::Read::read(&mut node, &mut reply).unwrap();
        let reply = String::from_utf8_lossy(&reply[..read]);
        assert!(reply.contains("cluster_state:ok"), "{port}: {reply}");
    }
    assert_eq!(
        put_json(
            &cluster.target,
            "/v1/skus/phone-x",
            "t",
            &json!({ "stock": 8, "shards": 4 })
        )
        .await
        .unwrap(),
        201
    );
    let mut conn = Connection::open(&cluster.target).await.unwrap();
    for n in 0..4 {
        let held = conn
            .send(&Call::Reserve {
                sku: "phone-x".into(),
                user: format!("buyer-{n}"),
                quantity: 1,
                key: format!("order-{n}"),
            })
            .await
            .unwrap();
        assert_eq!(held.status, 201, "{held:?}");
    }
    let started = Instant::now();
    loop {
        let view = cluster.sku().await;
        if view["held"] == 4 && view["settled"]["held"] == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never settled: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop("-TERM").await;
}

#[test]
fn the_engines_own_exit_is_passed_on_and_its_redis_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // Not an argument of flashsale serve: the engine refuses it (a usage error, 2).
    let (mut child, lines) = TryOut::spawn(dir.path(), &[], &["--no-such-flag"]);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(2), "{status}");
    let said: Vec<String> = lines.iter().collect();
    for port in redis_ports(&said[0]) {
        assert!(!accepts(port), "its Redis on {port} outlived the engine");
    }
}

#[test]
fn another_redis_url_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale-loadtest"))
        .args(["serve", "--", "--redis-url", &url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "started something");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("drop --redis-url"), "{stderr}");
}
