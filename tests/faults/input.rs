//! Bad input and hostile clients: every refusal is a clear 4xx problem, no Redis key is ever
//! built from what was refused, ids cannot be forged, one user cannot hold more than the
//! limit however hard they hammer.

use std::collections::HashSet;

use flashsale::ids::random_token;
use flashsale_testkit::LocalRedis;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::engine::{Engine, ADMIN};

fn dbsize(redis: &LocalRedis) -> u64 {
    redis
        .command(&["DBSIZE"])
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_problems_and_builds_no_key() {
    let redis = LocalRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let engine = Engine::start(
        &redis.url(),
        &database_url,
        &format!("f{}:", random_token()),
        &[],
    )
    .await;
    engine
        .put_sku("tv", json!({ "stock": 10, "per_user_limit": 2 }))
        .await;
    let client = reqwest::Client::new();
    let reserve = format!("{}/v1/reservations", engine.base());
    // One real reservation first, so the shard's keys all exist, and a moment for the
    // engine's own keys (consumer groups, identity) before counting.
    let warm = client
        .post(&reserve)
        .header("idempotency-key", "warm")
        .json(&json!({ "sku": "tv", "user_id": "warm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let keys_before = dbsize(&redis);

    let hostile_ids = [
        "",
        "a{b}c",
        "{tv}",
        "tv:0",
        "*",
        "a*",
        "é",
        "日本",
        "\u{0}",
        "\u{7f}",
        "a\tb",
        "a b",
        "a\nb",
        "../../etc",
        "a|b",
        "a~b",
        "%7B",
        "x".repeat(65).leak(),
        "\u{202e}rtl",
    ];
    let mut answered = 0;
    for id in hostile_ids {
        for body in [
            json!({ "sku": id, "user_id": "ann" }),
            json!({ "sku": "tv", "user_id": id }),
        ] {
            let reply = client
                .post(&reserve)
                .header("idempotency-key", "k")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let problem: Value = reply.json().await.unwrap();
            assert!(
                problem["code"].as_str().unwrap().starts_with("invalid_"),
                "{problem}"
            );
            answered += 1;
        }
        let printable = id.bytes().all(|b| (0x20..0x7f).contains(&b)) && !id.is_empty();
        if printable && flashsale::ids::IdempotencyKey::new(id).is_err() {
            let reply = client
                .post(&reserve)
                .header("idempotency-key", id)
                .json(&json!({ "sku": "tv", "user_id": "ann" }))
                .send()
                .await
                .unwrap();
            assert_eq!(
                reply.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "key {id:?}"
            );
            answered += 1;
        }
    }
    for (content_type, body, status) in [
        ("application/json", "{\"sku\":", StatusCode::BAD_REQUEST),
        (
            "application/json",
            "[1,2,3]",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "text/plain",
            "{\"sku\":\"tv\",\"user_id\":\"a\"}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/xml",
            "<sku>tv</sku>",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/json",
            "{\"sku\":\"tv\",\"user_id\":\"a\",\"quantity\":-1}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            "{\"sku\":\"tv\",\"user_id\":\"a\",\"quantity\":1e308}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            "{\"sku\":\"tv\",\"user_id\":\"a\",\"quantity\":99999999999999999999}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            "{\"sku\":\"tv\",\"user_id\":\"a\",\"quantity\":3}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "application/json",
            "{\"sku\":\"tv\",\"user_id\":\"a\",\"quantity\":0}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let reply = client
            .post(&reserve)
            .header("idempotency-key", "k")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), status, "{content_type} {body}");
        assert_eq!(reply.headers()["content-type"], "application/problem+json");
        answered += 1;
    }
    // Over the 16 KiB limit, but small enough to be written whole before the server
    // answers 413 and closes (a megabyte races that close and can end in a broken pipe).
    let huge = format!(
        "{{\"sku\":\"tv\",\"user_id\":\"{}\"}}",
        "a".repeat(20 * 1024)
    );
    let reply = client
        .post(&reserve)
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Admin routes: no token, a wrong one, a wrong scheme.
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic Zm9vOmJhcg=="),
        Some(&*format!("Bearer {ADMIN}x")),
    ] {
        let mut request = client
            .put(format!("{}/v1/skus/evil", engine.base()))
            .json(&json!({ "stock": 1 }));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{auth:?}"
        );
    }

    // Forged and guessed reservation ids find nothing.
    let held: Value = client
        .post(&reserve)
        .header("idempotency-key", "real")
        .json(&json!({ "sku": "tv", "user_id": "ann" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rid = held["reservation_id"].as_str().unwrap();
    let random = rid.rsplit('~').next().unwrap();
    for forged in [
        format!("other~0~{random}"),
        format!("tv~1~{random}"),
        format!("tv~0~{}", "a".repeat(20)),
        format!("tv~0~{random}x"),
        "tv~0~*".to_owned(),
        "tv~0~{x}".to_owned(),
    ] {
        for path in ["", "/confirm", "/cancel"] {
            let url = format!("{}/v1/reservations/{forged}{path}", engine.base());
            let reply = if path.is_empty() {
                client.get(url).send().await
            } else {
                client.post(url).send().await
            }
            .unwrap();
            assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{forged}{path}");
        }
    }
    let keys_after = dbsize(&redis);
    // The one real reservation since lives in existing keys (the shard hash, index, stream).
    assert_eq!(
        keys_after, keys_before,
        "a refused request created a Redis key"
    );
    println!("bad input: {answered} hostile requests refused with 4xx problems, 0 keys created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_hammering_with_a_thousand_requests_gets_exactly_the_limit() {
    let redis = LocalRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let engine = Engine::start(
        &redis.url(),
        &database_url,
        &format!("f{}:", random_token()),
        &[],
    )
    .await;
    engine
        .put_sku(
            "tv",
            json!({ "stock": 1000, "per_user_limit": 3, "shards": 4 }),
        )
        .await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/v1/reservations", engine.base()));
            tokio::spawn(async move {
                let reply = client
                    .post(url)
                    .header("idempotency-key", random_token())
                    .json(&json!({ "sku": "tv", "user_id": "greedy" }))
                    .send()
                    .await
                    .unwrap();
                let status = reply.status();
                let body: Value = reply.json().await.unwrap();
                (status, body)
            })
        })
        .collect();
    let mut granted = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                granted.insert(body["reservation_id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => assert_eq!(body["code"], "limit_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(granted.len(), 3);
    let sku: Value = reqwest::get(format!("{}/v1/skus/tv", engine.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (sku["held"].as_u64(), sku["available"].as_u64()),
        (Some(3), Some(997))
    );
}
