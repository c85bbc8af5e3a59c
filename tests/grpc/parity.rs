//! One sale, played once over HTTP and once over gRPC against two engines of their own:
//! every step gets the same answer (the same code, or the same success), and both end in
//! the same state, SKU by SKU and reservation by reservation.

use flashsale::grpc::proto::{self, CancelByKeyRequest, CancelRequest, ConfirmRequest};
use serde_json::{json, Value};

use crate::support::{admin, keyed, refused, GrpcApp, ADMIN_TOKEN};

/// A step of the sale.
enum Step {
    Reserve {
        user: &'static str,
        quantity: u32,
        key: &'static str,
    },
    /// Confirms the reservation `key` of `user` made.
    Confirm {
        user: &'static str,
        key: &'static str,
    },
    Cancel {
        user: &'static str,
        key: &'static str,
    },
    CancelByKey {
        user: &'static str,
        key: &'static str,
    },
    Restock {
        quantity: u64,
    },
}

const SALE: &[Step] = &[
    Step::Reserve {
        user: "ann",
        quantity: 2,
        key: "a1",
    },
    Step::Reserve {
        user: "ann",
        quantity: 2,
        key: "a1",
    },
    Step::Reserve {
        user: "ann",
        quantity: 1,
        key: "a1",
    },
    Step::Reserve {
        user: "ann",
        quantity: 1,
        key: "a2",
    },
    Step::Reserve {
        user: "bob",
        quantity: 1,
        key: "b1",
    },
    Step::Reserve {
        user: "cat",
        quantity: 2,
        key: "c1",
    },
    Step::Reserve {
        user: "dan",
        quantity: 1,
        key: "d1",
    },
    Step::Confirm {
        user: "ann",
        key: "a1",
    },
    Step::Cancel {
        user: "bob",
        key: "b1",
    },
    Step::Confirm {
        user: "bob",
        key: "b1",
    },
    Step::Reserve {
        user: "dan",
        quantity: 1,
        key: "d2",
    },
    Step::CancelByKey {
        user: "eve",
        key: "e1",
    },
    Step::Reserve {
        user: "eve",
        quantity: 1,
        key: "e1",
    },
    Step::Restock { quantity: 3 },
    Step::Reserve {
        user: "eve",
        quantity: 1,
        key: "e2",
    },
    Step::Cancel {
        user: "ann",
        key: "a1",
    },
    Step::Reserve {
        user: "fay",
        quantity: 3,
        key: "f1",
    },
];

/// What one step answered: `ok` and the reservation's status, or the code.
type Answer = String;

/// Plays the sale over HTTP; the reservation ids it made, by (user, key).
async fn over_http(app: &GrpcApp) -> (Vec<Answer>, Vec<(String, String)>) {
    let http = &app.http;
    let client = &app.client;
    let put = client
        .put(format!("{http}/v1/skus/tv"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "stock": 5, "per_user_limit": 2, "shards": 2 }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let mut ids: Vec<((&str, &str), String)> = Vec::new();
    let mut answers = Vec::new();
    let id_of = |ids: &Vec<((&str, &str), String)>, user, key| {
        ids.iter()
            .find(|(k, _)| *k == (user, key))
            .map(|(_, id)| id.clone())
            .unwrap()
    };
    for step in SALE {
        let response = match step {
            Step::Reserve {
                user,
                quantity,
                key,
            } => {
                client
                    .post(format!("{http}/v1/reservations"))
                    .header("idempotency-key", *key)
                    .json(&json!({ "sku": "tv", "user_id": user, "quantity": quantity }))
                    .send()
                    .await
            }
            Step::Confirm { user, key } => {
                let id = id_of(&ids, *user, *key);
                client
                    .post(format!("{http}/v1/reservations/{id}/confirm"))
                    .send()
                    .await
            }
            Step::Cancel { user, key } => {
                let id = id_of(&ids, *user, *key);
                client
                    .post(format!("{http}/v1/reservations/{id}/cancel"))
                    .send()
                    .await
            }
            Step::CancelByKey { user, key } => {
                client
                    .post(format!("{http}/v1/reservations/cancel-by-key"))
                    .json(&json!({ "sku": "tv", "user_id": user, "idempotency_key": key }))
                    .send()
                    .await
            }
            Step::Restock { quantity } => {
                client
                    .post(format!("{http}/v1/skus/tv/restock"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({ "quantity": quantity }))
                    .send()
                    .await
            }
        };
        let response = response.unwrap();
        let ok = response.status().is_success();
        let body: Value = response.json().await.unwrap();
        if !ok {
            answers.push(body["code"].as_str().unwrap().to_owned());
            continue;
        }
        if let Step::Reserve { user, key, .. } = step {
            if !ids.iter().any(|(k, _)| *k == (*user, *key)) {
                let id = body["reservation_id"].as_str().unwrap().to_owned();
                ids.push(((*user, *key), id));
            }
        }
        let status = match step {
            // Its own status is always `cancelled`: what agrees is the reservation's.
            Step::CancelByKey { .. } => body["reservation"]["status"].as_str().unwrap_or("none"),
            _ => body["status"].as_str().unwrap(),
        };
        answers.push(format!("ok {status}"));
    }
    let ids = ids
        .into_iter()
        .map(|((user, key), id)| (format!("{user}/{key}"), id))
        .collect();
    (answers, ids)
}

fn status_name(status: proto::ReservationStatus) -> &'static str {
    match status {
        proto::ReservationStatus::Held => "held",
        proto::ReservationStatus::Confirmed => "confirmed",
        proto::ReservationStatus::Cancelled => "cancelled",
        proto::ReservationStatus::Expired => "expired",
        proto::ReservationStatus::Unspecified => "unspecified",
    }
}

/// Plays the sale over gRPC; the reservation ids it made, by (user, key).
async fn over_grpc(app: &GrpcApp) -> (Vec<Answer>, Vec<(String, String)>) {
    let mut reservations = app.reservations();
    let mut skus = app.skus();
    skus.put(admin(proto::PutSkuRequest {
        sku: "tv".into(),
        stock: 5,
        per_user_limit: Some(2),
        shards: Some(2),
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut answers = Vec::new();
    let id_of = |ids: &Vec<(String, String)>, user: &str, key: &str| {
        let name = format!("{user}/{key}");
        ids.iter().find(|(k, _)| *k == name).unwrap().1.clone()
    };
    for step in SALE {
        let answer: Result<String, tonic::Status> = match step {
            Step::Reserve {
                user,
                quantity,
                key,
            } => reservations
                .reserve(keyed(
                    proto::ReserveRequest {
                        sku: "tv".into(),
                        user_id: (*user).into(),
                        quantity: Some(*quantity),
                    },
                    key,
                ))
                .await
                .map(|r| {
                    let r = r.into_inner().reservation.unwrap();
                    let name = format!("{user}/{key}");
                    if !ids.iter().any(|(k, _)| *k == name) {
                        ids.push((name, r.reservation_id.clone()));
                    }
                    status_name(r.status()).to_owned()
                }),
            Step::Confirm { user, key } => reservations
                .confirm(ConfirmRequest {
                    reservation_id: id_of(&ids, user, key),
                })
                .await
                .map(|r| status_name(r.into_inner().status()).to_owned()),
            Step::Cancel { user, key } => reservations
                .cancel(CancelRequest {
                    reservation_id: id_of(&ids, user, key),
                })
                .await
                .map(|r| status_name(r.into_inner().status()).to_owned()),
            Step::CancelByKey { user, key } => reservations
                .cancel_by_key(CancelByKeyRequest {
                    sku: "tv".into(),
                    user_id: (*user).into(),
                    idempotency_key: (*key).into(),
                })
                .await
                .map(|r| {
                    r.into_inner()
                        .reservation
                        .map_or("none", |r| status_name(r.status()))
                        .to_owned()
                }),
            Step::Restock { quantity } => skus
                .restock(admin(proto::RestockRequest {
                    sku: "tv".into(),
                    quantity: *quantity,
                    operation_id: None,
                }))
                .await
                // A SKU's status is no reservation's: as HTTP, the SKU view says `live`.
                .map(|r| {
                    let sku = r.into_inner();
                    assert_eq!(sku.status(), proto::SkuStatus::Live);
                    "live".to_owned()
                }),
        };
        answers.push(match answer {
            Ok(status) => format!("ok {status}"),
            Err(status) => refused(&status).reason.to_ascii_lowercase(),
        });
    }
    (answers, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sale_over_http_and_grpc_ends_in_the_same_state() {
    let by_http = GrpcApp::spawn().await;
    let by_grpc = GrpcApp::spawn().await;
    let (http_answers, http_ids) = over_http(&by_http).await;
    let (grpc_answers, grpc_ids) = over_grpc(&by_grpc).await;
    assert_eq!(http_answers, grpc_answers, "step by step");
    // The sale exercised refusals as well as successes.
    for code in [
        "idempotency_key_reused",
        "limit_exceeded",
        "reservation_cancelled",
    ] {
        assert!(
            http_answers.iter().any(|a| a == code),
            "{code}: {http_answers:?}"
        );
    }

    let mut http_sku = by_http.http_sku("tv").await;
    let mut grpc_sku = by_grpc.http_sku("tv").await;
    for view in [&mut http_sku, &mut grpc_sku] {
        view.as_object_mut().unwrap().remove("ends_at");
    }
    assert_eq!(http_sku, grpc_sku, "the SKU");

    assert_eq!(
        http_ids.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        grpc_ids.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for ((name, http_id), (_, grpc_id)) in http_ids.iter().zip(&grpc_ids) {
        let read = |app: &GrpcApp, id: &str| {
            let url = format!("{}/v1/reservations/{id}", app.http);
            let client = app.client.clone();
            async move {
                let mut view: Value = client.get(url).send().await.unwrap().json().await.unwrap();
                let object = view.as_object_mut().unwrap();
                // Ids are random and deadlines follow the clock: what must agree is the rest.
                object.remove("reservation_id");
                object.remove("expires_at");
                view
            }
        };
        assert_eq!(
            read(&by_http, http_id).await,
            read(&by_grpc, grpc_id).await,
            "reservation {name}"
        );
    }
}
