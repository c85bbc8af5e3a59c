//! Every operation of both services through a tonic client, each answer checked against
//! what the engine holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale::grpc::proto::{
    self, CancelByKeyRequest, CancelCartRequest, CancelRequest, CartLine, CartStatus,
    ConfirmCartRequest, ConfirmRequest, GetCartRequest, GetReservationRequest, GetSkuRequest,
    OpenCartRequest, ReservationStatus, RestockRequest, SkuStatus,
};
use tonic::Code;

use crate::support::{admin, keyed, refusal, reserve, GrpcApp};

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skus_are_loaded_replaced_read_and_restocked() {
    let app = GrpcApp::spawn().await;
    let put = |stock| proto::PutSkuRequest {
        sku: "tv".into(),
        stock,
        per_user_limit: Some(2),
        hold_seconds: Some(30.0),
        shards: Some(2),
        starts_at: None,
        ends_at: Some(prost_types::Timestamp {
            seconds: now_s() + 3_600,
            nanos: 0,
        }),
    };
    let loaded = app.skus().put(admin(put(10))).await.unwrap().into_inner();
    assert!(loaded.created);
    let sku = loaded.sku.unwrap();
    assert_eq!(
        (sku.stock, sku.available, sku.per_user_limit, sku.shards),
        (10, 10, 2, 2)
    );
    assert_eq!(sku.status(), SkuStatus::Live);
    assert_eq!(sku.hold_seconds, 30.0);
    assert!(sku.starts_at.is_none());
    assert!(sku.ends_at.unwrap().seconds > now_s());

    // Nothing held yet: it may be replaced.
    let replaced = app.skus().put(admin(put(12))).await.unwrap().into_inner();
    assert!(!replaced.created);
    assert_eq!(replaced.sku.unwrap().stock, 12);

    let read = app
        .skus()
        .get(GetSkuRequest { sku: "tv".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((read.stock, read.available, read.held), (12, 12, 0));

    let restock = |op: &str| RestockRequest {
        sku: "tv".into(),
        quantity: 5,
        operation_id: Some(op.to_owned()),
    };
    let restocked = app.skus().restock(admin(restock("op-1"))).await.unwrap();
    assert_eq!(restocked.into_inner().stock, 17);
    // The same operation again adds nothing more.
    let again = app.skus().restock(admin(restock("op-1"))).await.unwrap();
    assert_eq!(again.into_inner().stock, 17);
    assert_eq!(app.http_sku("tv").await["stock"], 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_made_replayed_read_confirmed_and_cancelled() {
    let app = GrpcApp::spawn().await;
    app.put_sku("tv", 5, |s| s.per_user_limit = Some(2)).await;
    let mut client = app.reservations();

    let mut two = reserve("tv", "ann");
    two.quantity = Some(2);
    let made = client.reserve(keyed(two.clone(), "k1")).await.unwrap();
    assert!(made.metadata().get("idempotent-replayed").is_none());
    let made = made.into_inner();
    assert!(!made.replayed);
    let held = made.reservation.unwrap();
    assert_eq!(
        (held.sku.as_str(), held.user_id.as_str(), held.quantity),
        ("tv", "ann", 2)
    );
    assert_eq!(held.status(), ReservationStatus::Held);
    let expires = held.expires_at.unwrap().seconds;
    assert!(expires > now_s() + 500, "a 600 s hold: {expires}");

    // The same key again: the same reservation, said to be a replay, nothing more held.
    let replay = client.reserve(keyed(two, "k1")).await.unwrap();
    assert_eq!(
        replay.metadata().get("idempotent-replayed").unwrap(),
        "true"
    );
    let replay = replay.into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.reservation.unwrap(), held);
    assert_eq!(app.http_sku("tv").await["held"], 2);

    let id = held.reservation_id.clone();
    let read = client
        .get_reservation(GetReservationRequest {
            reservation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, held);

    let confirm = || ConfirmRequest {
        reservation_id: id.clone(),
    };
    let confirmed = client.confirm(confirm()).await.unwrap().into_inner();
    assert_eq!(confirmed.status(), ReservationStatus::Confirmed);
    // Idempotent.
    assert_eq!(
        client.confirm(confirm()).await.unwrap().into_inner(),
        confirmed
    );

    let bob = client
        .reserve(keyed(reserve("tv", "bob"), "k1"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    let cancel = || CancelRequest {
        reservation_id: bob.reservation_id.clone(),
    };
    let cancelled = client.cancel(cancel()).await.unwrap().into_inner();
    assert_eq!(cancelled.status(), ReservationStatus::Cancelled);
    assert_eq!(
        client.cancel(cancel()).await.unwrap().into_inner(),
        cancelled
    );

    let sku = app.http_sku("tv").await;
    assert_eq!(
        (&sku["sold"], &sku["held"], &sku["available"]),
        (&2.into(), &0.into(), &3.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_key_cancels_what_a_key_made_and_bars_a_key_that_made_nothing() {
    let app = GrpcApp::spawn().await;
    app.put_sku("tv", 5, |_| {}).await;
    let mut client = app.reservations();
    let by_key = |user: &str, key: &str| CancelByKeyRequest {
        sku: "tv".into(),
        user_id: user.into(),
        idempotency_key: key.into(),
    };

    let held = client
        .reserve(keyed(reserve("tv", "ann"), "k1"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    let found = client
        .cancel_by_key(by_key("ann", "k1"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(found.reservation_id, held.reservation_id);
    assert_eq!(found.status(), ReservationStatus::Cancelled);

    // A key that made nothing yet is barred: the reserve arriving after is refused.
    let none = client.cancel_by_key(by_key("bob", "late")).await.unwrap();
    assert!(none.into_inner().reservation.is_none());
    let barred = refusal(client.reserve(keyed(reserve("tv", "bob"), "late")).await);
    assert_eq!(
        (barred.code, barred.reason.as_str()),
        (Code::FailedPrecondition, "RESERVATION_CANCELLED")
    );
    assert_eq!(app.http_sku("tv").await["available"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_is_opened_replayed_read_confirmed_or_cancelled_whole() {
    let app = GrpcApp::spawn().await;
    app.put_sku("phone", 4, |_| {}).await;
    app.put_sku("case", 4, |_| {}).await;
    let mut client = app.reservations();
    let cart = |user: &str| OpenCartRequest {
        user_id: user.into(),
        lines: vec![
            CartLine {
                sku: "phone".into(),
                quantity: None,
            },
            CartLine {
                sku: "case".into(),
                quantity: Some(1),
            },
        ],
    };

    let opened = client.open_cart(keyed(cart("ann"), "c1")).await.unwrap();
    let opened = opened.into_inner();
    assert!(!opened.replayed);
    let held = opened.cart.unwrap();
    assert_eq!(held.status(), CartStatus::Held);
    assert_eq!(held.lines.len(), 2);
    assert!(held.expires_at.is_some());
    let replay = client.open_cart(keyed(cart("ann"), "c1")).await.unwrap();
    assert_eq!(
        replay.metadata().get("idempotent-replayed").unwrap(),
        "true"
    );
    assert_eq!(replay.into_inner().cart.unwrap(), held);

    let id = held.cart_id.clone();
    let read = client
        .get_cart(GetCartRequest {
            cart_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, held);
    // Each line is a reservation of its own, readable by its id, marked with its cart.
    let line = client
        .get_reservation(GetReservationRequest {
            reservation_id: held.lines[0].reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(line.cart_id.as_deref(), Some(id.as_str()));

    let confirmed = client
        .confirm_cart(ConfirmCartRequest {
            cart_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.status(), CartStatus::Confirmed);

    let other = client
        .open_cart(keyed(cart("bob"), "c1"))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    let cancelled = client
        .cancel_cart(CancelCartRequest {
            cart_id: other.cart_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status(), CartStatus::Cancelled);
    for sku in ["phone", "case"] {
        let view = app.http_sku(sku).await;
        assert_eq!(
            (&view["sold"], &view["available"]),
            (&1.into(), &3.into()),
            "{sku}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_by_route_caller_and_outcome() {
    let app = GrpcApp::spawn().await;
    app.put_sku("tv", 1, |_| {}).await;
    let mut client = app.reservations();
    client
        .reserve(keyed(reserve("tv", "ann"), "k"))
        .await
        .unwrap();
    refusal(client.reserve(keyed(reserve("tv", "bob"), "k")).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let metrics = app
        .client
        .get(format!("{}/metrics", app.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["ok", "sold_out"] {
        let series = format!(
            "flashsale_grpc_requests_total{{caller=\"anonymous\",method=\"/flashsale.v1.Reservations/Reserve\",outcome=\"{outcome}\"}} 1"
        );
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
}
