//! The `flashsale serve` process: SIGTERM lets the requests in flight finish, ends the sale
//! page's event streams, then exits.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let redis = LocalRedis::start().unwrap();
    let port = flashsale_testkit::free_port().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--redis-url",
            &redis.url(),
            "--admin-token",
            "t",
            "--redis-timeout-ms",
            "10000",
            "--no-ledger",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let put = client
        .put(format!("{base}/v1/skus/tv"))
        .bearer_auth("t")
        .json(&json!({ "stock": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);

    // Redis stalls for a second: the reserve below is in flight when SIGTERM arrives.
    let stall = {
        let redis_port = redis.port();
        std::thread::spawn(move || {
            let mut conn = redis::Client::open(format!("redis://127.0.0.1:{redis_port}"))
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(1)
                .exec(&mut conn)
                .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/v1/reservations");
        async move {
            client
                .post(url)
                .header("idempotency-key", "k")
                .json(&json!({ "sku": "tv", "user_id": "ann" }))
                .send()
                .await
        }
    });
    // A sale page is open: its event stream never ends by itself.
    let page = client
        .get(format!("{base}/ui/events?sku=tv"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/event-stream");
    tokio::time::sleep(Duration::from_millis(200)).await;
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();

    let reply = in_flight
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(reply.status(), StatusCode::CREATED);
    stall.join().unwrap();
    // The stream ends when shutdown begins, or the shutdown would wait for it for ever.
    let events = tokio::time::timeout(Duration::from_secs(20), page.text())
        .await
        .expect("the page's event stream ended")
        .unwrap_or_default();
    assert!(events.contains("event: figures"), "{events}");
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "still serving"
    );
}
