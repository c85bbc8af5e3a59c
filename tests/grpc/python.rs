//! A client from outside the project can use the gRPC face: Python's `grpcio`, with
//! `grpcio-health-checking` and `grpcio-reflection` from PyPI and no code generated from
//! `proto/` (scripts/grpc-python-client.sh, tests/grpc/python_client.py), lists the
//! services by reflection, finds every one it needs there, checks health, builds the
//! reserve's messages from the reflected descriptors alone, reserves, replays the reserve
//! with the same idempotency key and decodes the `google.rpc.Status` of a refusal. The
//! engine's state over HTTP then shows the one hold and nothing from the replay.

use std::process::Command;

use serde_json::Value;

use crate::support::GrpcApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_lists_checks_health_and_reserves() {
    let mut app = GrpcApp::spawn().await;
    app.put_sku("py-phone", 5, |_| {}).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/grpc-python-client.sh");
    let addr = app.grpc_addr.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .args([addr.as_str(), "py-phone", "py-user-1", "py-key-1"])
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client against {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        app.grpc_addr,
        output.status,
    );
    let seen: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no JSON ({e}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    });

    let services: Vec<&str> = seen["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services in {seen}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for wanted in [
        "flashsale.v1.Reservations",
        "flashsale.v1.Skus",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(&wanted),
            "reflection lists no {wanted}: {services:?}"
        );
    }
    assert!(
        services
            .iter()
            .any(|s| s.starts_with("grpc.reflection.") && s.ends_with(".ServerReflection")),
        "reflection lists no reflection service: {services:?}"
    );

    assert_eq!(seen["health"][""], "SERVING", "{seen}");
    assert_eq!(
        seen["health"]["flashsale.v1.Reservations"], "SERVING",
        "{seen}"
    );

    let reservation = &seen["reservation"];
    assert_eq!(reservation["status"], "RESERVATION_STATUS_HELD", "{seen}");
    assert_eq!(reservation["quantity"], 1, "{seen}");
    assert_eq!(reservation["sku"], "py-phone", "{seen}");
    assert_eq!(reservation["user_id"], "py-user-1", "{seen}");
    assert_eq!(reservation["replayed"], false, "{seen}");
    let id = reservation["reservation_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no reservation id in {seen}"));

    assert_eq!(seen["replay"]["reservation_id"], id, "{seen}");
    assert_eq!(seen["replay"]["replayed"], true, "{seen}");

    assert_eq!(seen["unknown_sku"]["code"], "NOT_FOUND", "{seen}");
    assert_eq!(seen["unknown_sku"]["reason"], "SKU_NOT_FOUND", "{seen}");
    assert_eq!(seen["unknown_sku"]["domain"], "flashsale", "{seen}");

    // One hold, and none more from the replay.
    let sku = app.http_sku("py-phone").await;
    assert_eq!(sku["held"], 1, "{sku}");
    assert_eq!(sku["available"], 4, "{sku}");

    app.stop().await.expect("the engine stopped cleanly");
}
