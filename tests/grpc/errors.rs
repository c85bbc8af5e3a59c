//! Every error code the gRPC face can answer, provoked through a tonic client, with its
//! status code and details decoded: `ErrorInfo` (reason and domain) always, `RetryInfo`
//! exactly on the retryable codes, `BadRequest` on invalid input naming the field,
//! `PreconditionFailure` naming the violated state and its resource. The codes no call can
//! provoke on demand (a cart caught between steps, a SKU under repair, a confirm not yet
//! on its replicas, an internal error) and the HTTP-only ones are listed, and every other
//! code of the API is checked to have been provoked here.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale::api::error::CODES;
use flashsale::grpc::proto::{
    self, CancelCartRequest, CancelRequest, CartLine, ConfirmCartRequest, ConfirmRequest,
    GetCartRequest, GetReservationRequest, GetSkuRequest, OpenCartRequest, PutSkuRequest,
};
use flashsale::grpc::status::mapping;

use crate::support::{admin, keyed, refusal, reserve, with, GrpcApp, Refused};

/// Codes no call provokes on demand; their statuses are unit-tested in `grpc::status`.
const NOT_PROVOKED: &[&str] = &["cart_pending", "recovering", "not_replicated", "internal"];

/// Codes of the HTTP face alone (a body, path, query or method that cannot be read), and
/// codes of operations the gRPC face does not serve (retirement, the SKU list).
const NOT_ON_GRPC: &[&str] = &[
    "malformed_json",
    "unreadable_body",
    "invalid_path",
    "invalid_query",
    "invalid_body",
    "not_found",
    "method_not_allowed",
    "body_too_large",
    "unsupported_media_type",
    "invalid_field",
    "sku_holds_open",
    "sku_retired",
];

/// The codes seen so far, each checked against the face's mapping.
#[derive(Default)]
struct Seen(BTreeSet<String>);

impl Seen {
    /// Checks that `refused` is `code`, with the status and details its mapping promises.
    fn check(&mut self, refused: Refused, code: &str) -> Refused {
        let mapped = mapping(code).unwrap();
        assert_eq!(
            (
                refused.code,
                refused.reason.as_str(),
                refused.domain.as_str()
            ),
            (mapped.code, code.to_ascii_uppercase().as_str(), "flashsale"),
            "{code}: {refused:?}"
        );
        assert_eq!(
            refused.retry.is_some(),
            mapped.retryable(),
            "{code}: RetryInfo on exactly the retryable codes: {refused:?}"
        );
        assert!(!refused.message.is_empty(), "{code}: a message for people");
        match mapped.detail {
            flashsale::grpc::status::Detail::Field(_) => {
                assert!(
                    !refused.fields.is_empty(),
                    "{code}: BadRequest: {refused:?}"
                )
            }
            flashsale::grpc::status::Detail::Precondition(kind) => assert!(
                refused.preconditions.iter().any(|(t, _)| t == kind),
                "{code}: PreconditionFailure {kind}: {refused:?}"
            ),
            flashsale::grpc::status::Detail::Info => {}
        }
        self.0.insert(code.to_owned());
        refused
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn lines(skus: &[&str]) -> Vec<CartLine> {
    skus.iter()
        .map(|sku| CartLine {
            sku: (*sku).to_owned(),
            quantity: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_comes_with_its_status_and_details() {
    let mut seen = Seen::default();
    let app = GrpcApp::spawn().await;
    app.put_sku("tv", 4, |s| {
        s.per_user_limit = Some(2);
        s.shards = Some(1);
    })
    .await;
    let mut client = app.reservations();
    let mut skus = app.skus();

    // Input.
    let r = refusal(client.reserve(reserve("tv", "ann")).await);
    let r = seen.check(r, "missing_idempotency_key");
    assert_eq!(r.fields, ["idempotency-key"]);
    let r = refusal(client.reserve(keyed(reserve("tv", "ann"), "bad/key")).await);
    seen.check(r, "invalid_idempotency_key");
    let r = refusal(client.reserve(keyed(reserve("bad sku", "ann"), "k")).await);
    assert_eq!(seen.check(r, "invalid_sku").fields, ["sku"]);
    let r = refusal(client.reserve(keyed(reserve("tv", ""), "k")).await);
    assert_eq!(seen.check(r, "invalid_user_id").fields, ["user_id"]);
    let mut zero = reserve("tv", "ann");
    zero.quantity = Some(0);
    let r = refusal(client.reserve(keyed(zero, "k")).await);
    let r = seen.check(r, "invalid_quantity");
    assert!(
        r.message.contains('2'),
        "names the SKU's limit: {}",
        r.message
    );
    let spec = |tweak: fn(&mut PutSkuRequest)| {
        let mut body = PutSkuRequest {
            sku: "spec".into(),
            stock: 1,
            ..Default::default()
        };
        tweak(&mut body);
        admin(body)
    };
    let r = refusal(skus.put(spec(|s| s.hold_seconds = Some(0.0))).await);
    assert_eq!(seen.check(r, "invalid_sku_spec").fields, ["hold_seconds"]);
    let r = refusal(
        skus.put(spec(|s| {
            s.starts_at = Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            })
        }))
        .await,
    );
    assert_eq!(seen.check(r, "invalid_time").fields, ["starts_at"]);
    let empty = OpenCartRequest {
        user_id: "ann".into(),
        lines: vec![],
    };
    let r = refusal(client.open_cart(keyed(empty, "c")).await);
    assert_eq!(seen.check(r, "invalid_cart").fields, ["lines"]);

    // Not found.
    let r = refusal(client.reserve(keyed(reserve("nope", "ann"), "k")).await);
    seen.check(r, "sku_not_found");
    let r = refusal(skus.get(GetSkuRequest { sku: "nope".into() }).await);
    seen.check(r, "sku_not_found");
    let r = refusal(
        client
            .get_reservation(GetReservationRequest {
                reservation_id: "tv~0~aaaaaaaaaaaaaaaaaaaa".into(),
            })
            .await,
    );
    seen.check(r, "reservation_not_found");
    let r = refusal(
        client
            .get_cart(GetCartRequest {
                cart_id: "nonsense".into(),
            })
            .await,
    );
    seen.check(r, "cart_not_found");

    // The state forbids it.
    let held = client
        .reserve(keyed(reserve("tv", "ann"), "k1"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    let units = |user: &str, quantity| {
        let mut body = reserve("tv", user);
        body.quantity = Some(quantity);
        body
    };
    let r = refusal(client.reserve(keyed(units("ann", 2), "k1")).await);
    seen.check(r, "idempotency_key_reused");
    let r = refusal(client.reserve(keyed(units("ann", 2), "k2")).await);
    let r = seen.check(r, "limit_exceeded");
    assert_eq!(r.preconditions[0].1, "skus/tv");
    client.reserve(keyed(units("bob", 2), "k1")).await.unwrap();
    let r = refusal(client.reserve(keyed(units("cat", 2), "k1")).await);
    seen.check(r, "insufficient_stock");
    client.reserve(keyed(units("cat", 1), "k2")).await.unwrap();
    let r = refusal(client.reserve(keyed(units("dan", 1), "k1")).await);
    let r = seen.check(r, "sold_out");
    assert_eq!(
        r.preconditions,
        [("STOCK".to_owned(), "skus/tv".to_owned())]
    );
    let r = refusal(
        skus.put(admin(PutSkuRequest {
            sku: "tv".into(),
            stock: 9,
            ..Default::default()
        }))
        .await,
    );
    seen.check(r, "sku_live");

    let id = held.reservation_id.clone();
    client
        .confirm(ConfirmRequest {
            reservation_id: id.clone(),
        })
        .await
        .unwrap();
    let r = refusal(
        client
            .cancel(CancelRequest {
                reservation_id: id.clone(),
            })
            .await,
    );
    let r = seen.check(r, "reservation_confirmed");
    assert_eq!(r.preconditions[0].1, format!("reservations/{id}"));

    app.put_sku("radio", 2, |s| s.shards = Some(1)).await;
    let dan = client
        .reserve(keyed(reserve("radio", "dan"), "k"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    client
        .cancel(CancelRequest {
            reservation_id: dan.reservation_id.clone(),
        })
        .await
        .unwrap();
    let r = refusal(
        client
            .confirm(ConfirmRequest {
                reservation_id: dan.reservation_id,
            })
            .await,
    );
    seen.check(r, "reservation_cancelled");

    // Bob's hold runs out and its unit goes back; eve takes it; bob's late confirm finds
    // none left.
    app.put_sku("brief", 1, |s| {
        s.hold_seconds = Some(0.3);
        s.shards = Some(1);
    })
    .await;
    let bob = client
        .reserve(keyed(reserve("brief", "bob"), "k"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client
        .reserve(keyed(reserve("brief", "eve"), "k"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's unit never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refusal(
        client
            .confirm(ConfirmRequest {
                reservation_id: bob.reservation_id,
            })
            .await,
    );
    seen.check(r, "reservation_expired");

    // Keys per user per SKU are bounded.
    app.put_sku("keys", 100, |s| s.per_user_limit = Some(100))
        .await;
    let mut last = None;
    for n in 0..=flashsale::store::MAX_KEYS_PER_USER {
        last = Some(
            client
                .reserve(keyed(reserve("keys", "ann"), &format!("k{n}")))
                .await,
        );
    }
    seen.check(refusal(last.unwrap()), "too_many_keys");

    // Sale windows.
    app.put_sku("later", 5, |s| s.starts_at = at(now_s() + 3_600))
        .await;
    let r = refusal(client.reserve(keyed(reserve("later", "ann"), "k")).await);
    seen.check(r, "sale_not_started");
    app.put_sku("over", 5, |s| s.ends_at = at(now_s() - 60))
        .await;
    let r = refusal(client.reserve(keyed(reserve("over", "ann"), "k")).await);
    seen.check(r, "sale_ended");

    // Carts.
    for sku in ["phone", "case"] {
        app.put_sku(sku, 5, |_| {}).await;
    }
    for sku in ["brief-phone", "brief-case"] {
        app.put_sku(sku, 5, |s| s.hold_seconds = Some(0.3)).await;
    }
    let cart = |user: &str| OpenCartRequest {
        user_id: user.into(),
        lines: lines(&["phone", "case"]),
    };
    let sold_out_line = OpenCartRequest {
        user_id: "ann".into(),
        lines: lines(&["phone", "tv"]),
    };
    let r = refusal(client.open_cart(keyed(sold_out_line, "c0")).await);
    let r = seen.check(r, "sold_out");
    assert!(
        r.preconditions
            .contains(&("STOCK".into(), "skus/tv".into())),
        "the refused line is named: {r:?}"
    );
    let opened = client
        .open_cart(keyed(cart("ann"), "c1"))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    let r = refusal(
        client
            .confirm(ConfirmRequest {
                reservation_id: opened.lines[0].reservation_id.clone(),
            })
            .await,
    );
    seen.check(r, "cart_line");
    client
        .confirm_cart(ConfirmCartRequest {
            cart_id: opened.cart_id.clone(),
        })
        .await
        .unwrap();
    let r = refusal(
        client
            .cancel_cart(CancelCartRequest {
                cart_id: opened.cart_id.clone(),
            })
            .await,
    );
    seen.check(r, "cart_confirmed");
    let other = client
        .open_cart(keyed(cart("bob"), "c1"))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    client
        .cancel_cart(CancelCartRequest {
            cart_id: other.cart_id.clone(),
        })
        .await
        .unwrap();
    let r = refusal(
        client
            .confirm_cart(ConfirmCartRequest {
                cart_id: other.cart_id,
            })
            .await,
    );
    seen.check(r, "cart_cancelled");
    let brief = OpenCartRequest {
        user_id: "cat".into(),
        lines: lines(&["brief-phone", "brief-case"]),
    };
    let late = client
        .open_cart(keyed(brief, "c1"))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = refusal(
        client
            .confirm_cart(ConfirmCartRequest {
                cart_id: late.cart_id,
            })
            .await,
    );
    seen.check(r, "cart_expired");

    // Admin.
    let wrong = with(
        PutSkuRequest {
            sku: "x".into(),
            stock: 1,
            ..Default::default()
        },
        &[("authorization", "Bearer not-the-token")],
    );
    seen.check(refusal(skus.put(wrong).await), "unauthorized");
    let unsigned = tonic::Request::new(proto::RestockRequest {
        sku: "tv".into(),
        quantity: 1,
        operation_id: None,
    });
    seen.check(refusal(skus.restock(unsigned).await), "unauthorized");
    drop(app);

    let no_admin = GrpcApp::spawn_with(|c| c.admin_token = None).await;
    let r = refusal(
        no_admin
            .skus()
            .put(admin(PutSkuRequest {
                sku: "x".into(),
                stock: 1,
                ..Default::default()
            }))
            .await,
    );
    seen.check(r, "admin_disabled");
    drop(no_admin);

    // Callers.
    let tokens = GrpcApp::spawn_with(|c| {
        c.client_tokens = vec![
            "shop=shop-token-0123456789".into(),
            "other=other-token-0123456789".into(),
        ]
    })
    .await;
    tokens.put_sku("tv", 5, |_| {}).await;
    let mut client = tokens.reservations();
    let as_caller = |token: &str, key: &str| {
        with(
            reserve("tv", "ann"),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("idempotency-key", key),
            ],
        )
    };
    let r = refusal(client.reserve(keyed(reserve("tv", "ann"), "k")).await);
    seen.check(r, "unauthenticated");
    let r = refusal(
        client
            .reserve(as_caller("forged-token-0123456789", "k"))
            .await,
    );
    seen.check(r, "invalid_token");
    let shop = client
        .reserve(as_caller("shop-token-0123456789", "k"))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    let stranger = with(
        ConfirmRequest {
            reservation_id: shop.reservation_id,
        },
        &[("authorization", "Bearer other-token-0123456789")],
    );
    seen.check(
        refusal(client.confirm(stranger).await),
        "not_your_reservation",
    );
    drop(tokens);

    // Overload: the rate limit, and a Redis that stops answering.
    let mut limited = GrpcApp::spawn_with(|c| {
        c.rate_sku = 1;
        c.burst_sku = 1;
    })
    .await;
    limited.put_sku("tv", 5, |_| {}).await;
    let mut client = limited.reservations();
    client
        .reserve(keyed(reserve("tv", "ann"), "k"))
        .await
        .unwrap();
    let r = refusal(client.reserve(keyed(reserve("tv", "bob"), "k")).await);
    let r = seen.check(r, "rate_limited");
    assert!(r.retry.unwrap() > Duration::ZERO);
    limited.redis.kill();
    let r = refusal(
        client
            .get_reservation(GetReservationRequest {
                reservation_id: "tv~0~aaaaaaaaaaaaaaaaaaaa".into(),
            })
            .await,
    );
    let r = seen.check(r, "unavailable");
    assert_eq!(r.retry, Some(Duration::from_secs(1)));
    drop(limited);

    let ledger = tempfile::tempdir().unwrap();
    let behind = GrpcApp::spawn_with(|c| {
        c.no_ledger = false;
        c.ledger.database_url = Some(format!(
            "sqlite://{}?mode=rwc",
            ledger.path().join("ledger.db").display()
        ));
        c.no_reconcile = true;
        c.max_unsettled = 1;
    })
    .await;
    behind.put_sku("tv", 50, |_| {}).await;
    let mut client = behind.reservations();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut buyer = 0;
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reserves never refused for the backlog"
        );
        buyer += 1;
        match client
            .reserve(keyed(reserve("tv", &format!("u{buyer}")), "k"))
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(status) => break crate::support::refused(&status),
        }
    };
    let r = seen.check(refused, "settlement_behind");
    assert_eq!(r.retry, Some(Duration::from_secs(5)));
    drop(behind);

    let missed: Vec<_> = CODES
        .iter()
        .filter(|code| !seen.0.contains(**code))
        .filter(|code| !NOT_PROVOKED.contains(code) && !NOT_ON_GRPC.contains(code))
        .collect();
    assert!(
        missed.is_empty(),
        "codes never provoked over gRPC: {missed:?}"
    );
}
