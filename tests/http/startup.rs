//! `flashsale serve` as a new user starts it: a Redis it cannot reach is named with what to
//! do. (Its private-Redis try-out, `flashsale-loadtest serve`, is tested in `loadtest/`.)

use std::process::Command;

fn free_port() -> u16 {
    flashsale_testkit::free_port().unwrap()
}

#[tokio::test]
async fn serve_names_the_redis_it_cannot_reach_and_what_to_do() {
    // Nothing listens on a port just freed.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let output = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_flashsale"))
                .args([
                    "serve",
                    "--redis-url",
                    &url,
                    "--listen",
                    &listen,
                    "--no-ledger",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served without a Redis: {stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Redis at {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("`flashsale-loadtest serve`"), "{stderr}");
}
