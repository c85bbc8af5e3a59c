//! The private `redis-server`: it answers, keeps its data across a restart only with the
//! append-only file on, and leaves nothing running or on disk once dropped.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use flashsale_testkit::{Fsync, LocalRedis, LocalRedisOptions};

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn answers_restarts_in_place_and_cleans_up() {
    let mut redis = LocalRedis::start_with(LocalRedisOptions {
        aof: Some(Fsync::Always),
    })
    .expect("start a private redis");
    let port = redis.port();
    assert_ne!(port, 6379, "must not be the system server's port");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis.command(&["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(redis.command(&["GET", "k"]).unwrap(), "v");
    assert_eq!(redis.command(&["GET", "missing"]).unwrap(), "");
    assert_eq!(redis.command(&["INCR", "n"]).unwrap(), ":1");
    assert!(redis.command(&["NO-SUCH"]).unwrap().starts_with("-ERR"));
    // Our own server, in our own directory.
    let dir = redis.command(&["CONFIG", "GET", "dir"]).unwrap();
    assert_eq!(dir, "*2");
    assert!(redis.dir().join("redis.log").is_file());
    assert_eq!(redis.script_stats(), (0, 0));

    redis.kill();
    assert!(!accepts(port), "port {port} still accepts after kill");
    assert!(redis.command(&["PING"]).is_err());
    redis.restart().expect("restart");
    assert_eq!(redis.port(), port);
    assert_eq!(
        redis.command(&["GET", "k"]).unwrap(),
        "v",
        "the AOF kept it"
    );

    let dir = redis.dir().to_owned();
    drop(redis);
    assert!(!accepts(port), "port {port} still accepts after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn without_the_append_only_file_a_restart_starts_empty() {
    let mut redis = LocalRedis::start().expect("start a private redis");
    assert_eq!(redis.command(&["SET", "k", "v"]).unwrap(), "+OK");
    redis.restart().expect("restart");
    assert_eq!(redis.command(&["GET", "k"]).unwrap(), "");
}
