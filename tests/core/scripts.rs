//! Every script: its success path, each of its refusals, and idempotent repeats.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale::events::Event;
use flashsale::ids::{HoldOrigin, OpId, ReservationId};
use flashsale::store::{
    HoldState, Loaded, QuantityBound, SkuSpec, Store, StoreError, StoreOptions, Totals,
};

use crate::support::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn load_creates_replaces_and_refuses_a_live_sku() {
    let h = Harness::start().await;
    let tv = sku("tv");
    assert_eq!(
        h.store.load(&tv, &spec(10, 2, 1, 60_000)).await.unwrap(),
        Loaded::Created
    );
    // Not live yet: a replace may change everything, the shard count included.
    assert_eq!(
        h.store.load(&tv, &spec(30, 3, 2, 60_000)).await.unwrap(),
        Loaded::Replaced
    );
    let config = h.store.config(&tv).await.unwrap();
    assert_eq!(
        (config.shards, config.stock, config.per_user_limit),
        (3, 30, 2)
    );
    let totals = h.store.totals(&tv).await.unwrap();
    assert_eq!((totals.available, totals.loaded), (30, 30));

    h.store
        .reserve(&request(&tv, "ann", 1, "k1"))
        .await
        .unwrap();
    let live = h.store.load(&tv, &spec(99, 3, 2, 60_000)).await;
    assert!(matches!(live, Err(StoreError::SkuLive)), "{live:?}");
    assert_eq!(
        h.store.totals(&tv).await.unwrap().loaded,
        30,
        "a refused load changes nothing"
    );

    // A barrier alone makes a SKU live too: wiping it would let a hanging Try through.
    let radio = h.sku("radio", spec(5, 1, 1, 60_000)).await;
    h.store
        .cancel_by_key(&radio, &user("bob"), &key("k"), None)
        .await
        .unwrap();
    assert!(matches!(
        h.store.load(&radio, &spec(5, 1, 1, 60_000)).await,
        Err(StoreError::SkuLive)
    ));

    for bad in [
        SkuSpec {
            shards: Some(0),
            ..SkuSpec::new(1)
        },
        SkuSpec {
            shards: Some(1025),
            ..SkuSpec::new(1)
        },
        SkuSpec {
            per_user_limit: 0,
            ..SkuSpec::new(1)
        },
        SkuSpec {
            hold: Duration::ZERO,
            ..SkuSpec::new(1)
        },
        SkuSpec {
            starts_at_ms: Some(5),
            ends_at_ms: Some(5),
            ..SkuSpec::new(1)
        },
        SkuSpec::new(u64::MAX),
    ] {
        let refused = h.store.load(&sku("bad"), &bad).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidSpec(_))),
            "{bad:?}: {refused:?}"
        );
    }
    assert!(matches!(
        h.store.config(&sku("bad")).await,
        Err(StoreError::UnknownSku)
    ));
    assert_eq!(h.store.skus().await.unwrap(), vec![radio, tv]);
}

#[tokio::test]
async fn reserve_holds_replays_and_refuses_each_case_with_its_own_error() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(3, 1, 2, 60_000)).await;

    let first = h
        .store
        .reserve(&request(&tv, "ann", 2, "k1"))
        .await
        .unwrap();
    assert!(!first.replayed);
    let r = &first.reservation;
    assert_eq!(
        (r.state, r.quantity, r.user.as_str(), r.origin.field()),
        (HoldState::Held, 2, "ann", "k1")
    );
    assert!(
        r.deadline_ms >= now_ms() + 55_000,
        "deadline from the SKU's hold time"
    );
    assert_eq!((r.id.sku(), r.id.shard()), (&tv, 0));

    // The same key and quantity: the original reservation, nothing deducted twice.
    let again = h
        .store
        .reserve(&request(&tv, "ann", 2, "k1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.reservation, first.reservation);
    assert_eq!(h.store.totals(&tv).await.unwrap().held, 2);

    let refusal = |r: Result<_, StoreError>| r.map(|_| ()).unwrap_err().code();
    assert_eq!(
        refusal(h.store.reserve(&request(&tv, "ann", 1, "k1")).await),
        "idempotency_key_reused"
    );
    assert_eq!(
        refusal(h.store.reserve(&request(&tv, "ann", 1, "k2")).await),
        "limit_exceeded"
    );
    assert_eq!(
        refusal(h.store.reserve(&request(&tv, "bob", 0, "k1")).await),
        "invalid_quantity"
    );
    assert_eq!(
        refusal(h.store.reserve(&request(&tv, "bob", 3, "k1")).await),
        "invalid_quantity"
    );
    assert_eq!(
        h.store
            .reserve(&request(&tv, "bob", 3, "k1"))
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        "quantity must be a whole number from 1 to 2: at most 2 per user for this SKU"
    );
    assert_eq!(
        refusal(
            h.store
                .reserve(&request(&sku("nope"), "bob", 1, "k1"))
                .await
        ),
        "sku_not_found"
    );
    h.store
        .reserve(&request(&tv, "bob", 1, "k1"))
        .await
        .unwrap();
    assert_eq!(
        refusal(h.store.reserve(&request(&tv, "cat", 1, "k1")).await),
        "sold_out"
    );

    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (0, 3, 0));
    assert!(t.conserved());

    let later = now_ms() + 3_600_000;
    let scheduled = h
        .sku(
            "radio",
            SkuSpec {
                starts_at_ms: Some(later),
                ..SkuSpec::new(5)
            },
        )
        .await;
    assert_eq!(
        refusal(h.store.reserve(&request(&scheduled, "ann", 1, "k")).await),
        "sale_not_started"
    );
    let over = h
        .sku(
            "lamp",
            SkuSpec {
                starts_at_ms: Some(1),
                ends_at_ms: Some(now_ms() - 1000),
                ..SkuSpec::new(5)
            },
        )
        .await;
    assert_eq!(
        refusal(h.store.reserve(&request(&over, "ann", 1, "k")).await),
        "sale_ended"
    );
    assert_eq!(
        h.store.totals(&over).await.unwrap().available,
        5,
        "refusals deduct nothing"
    );
}

#[tokio::test]
async fn confirm_sells_once_and_refuses_cancelled_and_unknown_holds() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(4, 2, 1, 60_000)).await;
    let held = h
        .store
        .reserve(&request(&tv, "ann", 1, "k"))
        .await
        .unwrap()
        .reservation;

    let confirmed = h.store.confirm(&held.id, None).await.unwrap();
    assert_eq!(confirmed.state, HoldState::Confirmed);
    assert_eq!(
        h.store.confirm(&held.id, None).await.unwrap(),
        confirmed,
        "a repeat is the same result"
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (3, 0, 1));
    // A confirmed unit keeps counting against the user's limit.
    assert_eq!(
        h.store
            .reserve(&request(&tv, "ann", 1, "k2"))
            .await
            .unwrap_err()
            .code(),
        "limit_exceeded"
    );

    let other = h
        .store
        .reserve(&request(&tv, "bob", 1, "k"))
        .await
        .unwrap()
        .reservation;
    h.store.cancel(&other.id, None).await.unwrap();
    assert!(matches!(
        h.store.confirm(&other.id, None).await,
        Err(StoreError::Cancelled)
    ));

    assert!(matches!(
        h.store.confirm(&unknown_id(&tv, 0), None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        h.store.confirm(&unknown_id(&tv, 9), None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        h.store.confirm(&unknown_id(&sku("nope"), 0), None).await,
        Err(StoreError::NotFound)
    ));
    // The random part of a real id, moved into another shard or SKU, finds nothing.
    let random = held.id.as_str().rsplit('~').next().unwrap();
    let other_shard = (held.id.shard() + 1) % 2;
    for forged in [
        format!("tv~{other_shard}~{random}"),
        format!("radio~0~{random}"),
    ] {
        let forged = ReservationId::parse(&forged).unwrap();
        assert!(matches!(
            h.store.confirm(&forged, None).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            h.store.cancel(&forged, None).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            h.store.reservation(&forged).await,
            Err(StoreError::NotFound)
        ));
    }
    assert_eq!(h.store.totals(&tv).await.unwrap().sold, 1);
}

#[tokio::test]
async fn cancel_returns_units_once_and_refuses_a_sale() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(2, 1, 1, 60_000)).await;
    let held = h
        .store
        .reserve(&request(&tv, "ann", 1, "k"))
        .await
        .unwrap()
        .reservation;

    let cancelled = h.store.cancel(&held.id, None).await.unwrap();
    assert_eq!(cancelled.state, HoldState::Cancelled);
    assert_eq!(h.store.cancel(&held.id, None).await.unwrap(), cancelled);
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held), (2, 0), "units back once, not twice");
    // The allowance came back, but the key is barred (anti-hanging).
    assert!(matches!(
        h.store.reserve(&request(&tv, "ann", 1, "k")).await,
        Err(StoreError::KeyCancelled)
    ));
    h.store
        .reserve(&request(&tv, "ann", 1, "k-new"))
        .await
        .unwrap();

    let sold = h
        .store
        .reserve(&request(&tv, "bob", 1, "k"))
        .await
        .unwrap()
        .reservation;
    h.store.confirm(&sold.id, None).await.unwrap();
    assert!(matches!(
        h.store.cancel(&sold.id, None).await,
        Err(StoreError::Confirmed)
    ));
    assert!(matches!(
        h.store.cancel(&unknown_id(&tv, 0), None).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(h.store.totals(&tv).await.unwrap().sold, 1);
}

#[tokio::test]
async fn cancel_by_key_is_an_empty_rollback_barrier_or_a_cancel() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(3, 2, 1, 60_000)).await;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));

    // Empty rollback: no reserve ever came with this key. The barrier then stops the late Try.
    assert_eq!(
        h.store
            .cancel_by_key(&tv, &ann, &key("k"), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        h.store
            .cancel_by_key(&tv, &ann, &key("k"), None)
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        h.store.reserve(&request(&tv, "ann", 1, "k")).await,
        Err(StoreError::KeyCancelled)
    ));
    // The barrier is per (user, key): other users' keys are untouched.
    h.store.reserve(&request(&tv, "bob", 1, "k")).await.unwrap();

    let cancelled = h
        .store
        .cancel_by_key(&tv, &bob, &key("k"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.state, HoldState::Cancelled);
    assert_eq!(
        h.store
            .cancel_by_key(&tv, &bob, &key("k"), None)
            .await
            .unwrap(),
        Some(cancelled)
    );

    let sold = h
        .store
        .reserve(&request(&tv, "cat", 1, "k"))
        .await
        .unwrap()
        .reservation;
    h.store.confirm(&sold.id, None).await.unwrap();
    assert!(matches!(
        h.store.cancel_by_key(&tv, &cat, &key("k"), None).await,
        Err(StoreError::Confirmed)
    ));
    assert!(matches!(
        h.store
            .cancel_by_key(&sku("nope"), &cat, &key("k"), None)
            .await,
        Err(StoreError::UnknownSku)
    ));
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (2, 0, 1));
}

#[tokio::test]
async fn sweep_expires_due_holds_oldest_first_in_bounded_steps() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(10, 1, 1, 100)).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = h
            .store
            .reserve(&request(&tv, &format!("u{n}"), 1, "k"))
            .await
            .unwrap();
        ids.push(r.reservation.id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let confirmed = h.store.confirm(&ids[4], None).await.unwrap();
    assert_eq!(
        h.store.sweep(&tv, 100).await.unwrap().expired,
        0,
        "nothing due yet"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;

    let first = h.store.sweep(&tv, 2).await.unwrap();
    assert_eq!((first.expired, first.more), (2, true));
    // Oldest first: the first two holds are the ones expired and returned.
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held), (7, 2));
    let rest = h.store.sweep(&tv, 100).await.unwrap();
    assert_eq!((rest.expired, rest.more), (2, false));
    for id in &ids[..4] {
        assert_eq!(
            h.store.reservation(id).await.unwrap().state,
            HoldState::Expired
        );
    }
    assert_eq!(
        h.store.reservation(&ids[4]).await.unwrap(),
        confirmed,
        "a sale never expires"
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (9, 0, 1));
    assert_eq!(
        h.store.sweep(&tv, 100).await.unwrap(),
        Default::default(),
        "idempotent"
    );
}

#[tokio::test]
async fn restock_adds_units_once_per_operation() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(0, 4, 1, 60_000)).await;
    assert!(matches!(
        h.store.reserve(&request(&tv, "ann", 1, "k")).await,
        Err(StoreError::SoldOut)
    ));
    let op = OpId::new("restock-1").unwrap();
    let t = h.store.restock(&tv, 6, Some(&op)).await.unwrap();
    assert_eq!((t.available, t.restocked, t.loaded), (6, 6, 0));
    assert_eq!(
        h.store.restock(&tv, 6, Some(&op)).await.unwrap().available,
        6,
        "same op: once"
    );
    assert_eq!(h.store.restock(&tv, 1, None).await.unwrap().available, 7);
    assert!(matches!(
        h.store.restock(&tv, 0, None).await,
        Err(StoreError::InvalidQuantity(QuantityBound::Restock))
    ));
    assert!(matches!(
        h.store.restock(&sku("nope"), 1, None).await,
        Err(StoreError::UnknownSku)
    ));
    h.store
        .reserve(&request(&tv, "ann", 1, "k2"))
        .await
        .unwrap();
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!(
        t,
        Totals {
            available: 6,
            held: 1,
            sold: 0,
            loaded: 0,
            restocked: 7,
            in_transit: 0,
            fenced: false,
        }
    );
}

#[tokio::test]
async fn a_move_cut_short_is_in_transit_until_recovered_once() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(10, 2, 1, 60_000)).await;
    // The first half of a move, as an engine that crashed right after it would leave it.
    assert_eq!(h.move_out_only(&tv, "move-1", 3).await, (0, 3));
    // Repeating the first half takes nothing more.
    let (code, taken) = h.move_out_only(&tv, "move-1", 3).await;
    assert_eq!((code, taken), (1, 3));
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.in_transit), (7, 3));
    assert!(t.conserved());

    assert_eq!(h.store.recover_moves(&tv).await.unwrap(), 1);
    assert_eq!(
        h.store.recover_moves(&tv).await.unwrap(),
        0,
        "completed once"
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.in_transit), (10, 0));
    assert!(t.conserved());
}

#[tokio::test]
async fn every_state_change_appends_its_event() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(5, 1, 1, 60_000)).await;
    let a = h
        .store
        .reserve(&request(&tv, "ann", 1, "ka"))
        .await
        .unwrap()
        .reservation;
    let b = h
        .store
        .reserve(&request(&tv, "bob", 1, "kb"))
        .await
        .unwrap()
        .reservation;
    h.store
        .reserve(&request(&tv, "bob", 1, "kb"))
        .await
        .unwrap(); // a replay: no event
    h.store.confirm(&a.id, None).await.unwrap();
    h.store.confirm(&a.id, None).await.unwrap(); // a repeat: no event
    h.store.cancel(&b.id, None).await.unwrap();
    h.store
        .cancel_by_key(&tv, &user("cat"), &key("kc"), None)
        .await
        .unwrap();
    h.store.restock(&tv, 2, None).await.unwrap();

    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    let loaded = Event::Loaded {
        qty: 5,
        per_user_limit: 1,
        hold_ms: 60_000,
        starts_at_ms: 0,
        ends_at_ms: 0,
        shards: 1,
    };
    let events = h.events(&tv, 1);
    assert_eq!(events.len(), 7, "{events:#?}");
    assert_eq!(events[0], loaded);
    assert_eq!(
        events[1],
        Event::Reserved {
            caller: None,
            rid: a.id.clone(),
            user: ann.clone(),
            qty: 1,
            origin: HoldOrigin::Key(key("ka")),
            deadline_ms: a.deadline_ms
        }
    );
    assert!(
        matches!(&events[2], Event::Reserved { rid, user, .. } if *rid == b.id && *user == bob)
    );
    assert_eq!(
        events[3],
        Event::Confirmed {
            rid: a.id.clone(),
            user: ann,
            qty: 1,
            late: false
        }
    );
    assert_eq!(
        events[4],
        Event::Cancelled {
            rid: b.id.clone(),
            user: bob,
            qty: 1
        }
    );
    assert_eq!(
        events[5],
        Event::Barrier {
            user: cat,
            key: key("kc")
        }
    );
    assert!(matches!(&events[6], Event::Restocked { qty: 2, .. }));
}

#[tokio::test]
async fn scripts_are_loaded_again_after_the_cache_is_flushed() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(2, 1, 1, 60_000)).await;
    h.store.reserve(&request(&tv, "ann", 1, "k")).await.unwrap();
    // What a restart or a failover does to the script cache.
    assert_eq!(h.redis.command_everywhere(&["SCRIPT", "FLUSH"]), "+OK");
    h.store.reserve(&request(&tv, "bob", 1, "k")).await.unwrap();
    assert_eq!(h.store.totals(&tv).await.unwrap().held, 2);
}

#[tokio::test]
async fn a_quantity_over_a_limit_changed_by_another_engine_names_the_new_limit() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(10, 1, 3, 60_000)).await;
    // Another engine (a second store on the same Redis and prefix) cuts the limit to 1;
    // this one still has 3 cached, so the script is the one to refuse.
    let mut options = StoreOptions::new(h.redis.target());
    options.prefix = h.store.keys().prefix().to_owned();
    let other = Store::connect(&options).await.unwrap();
    other.load(&tv, &spec(10, 1, 1, 60_000)).await.unwrap();
    let refused = h.store.reserve(&request(&tv, "ann", 2, "k")).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::InvalidQuantity(QuantityBound::PerUser(1)))
        ),
        "{refused:?}"
    );
    assert_eq!(h.store.totals(&tv).await.unwrap().held, 0);
}
