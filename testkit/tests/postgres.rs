//! The private PostgreSQL: it answers queries, goes away on `stop`, comes back on the same
//! port with `start_again`, and leaves nothing listening once dropped. It never uses the
//! system server (if any) on 5432.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use flashsale_testkit::LocalPostgres;

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn starts_stops_starts_again_and_cleans_up() {
    let mut pg = LocalPostgres::start().expect("start a private postgres");
    let port = pg.port();
    assert_ne!(port, 5432, "must not be the system server's port");
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert_eq!(pg.psql("select 1+1").expect("query"), "2");
    // Our own cluster, not some other server that happens to answer.
    let data_dir = pg.psql("show data_directory").expect("data_directory");
    assert!(
        data_dir.starts_with(pg.dir().to_str().unwrap()),
        "{data_dir} is not under {}",
        pg.dir().display()
    );
    let dir = pg.dir().to_owned();

    pg.stop();
    assert!(!accepts(port), "port {port} still accepts after stop");
    assert!(pg.psql("select 1+1").is_err());

    pg.start_again().expect("start again");
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("select 1+1").expect("query after start_again"), "2");

    drop(pg);
    assert!(!accepts(port), "port {port} still accepts after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
