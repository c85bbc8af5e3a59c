//! Carts: several SKUs held all together or not at all, on real Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flashsale::ids::{CartId, HoldOrigin, Sku};
use flashsale::maintenance;
use flashsale::store::{
    Cart, CartLineRequest, CartRequest, CartState, HoldState, Store, StoreError,
};
use parking_lot::Mutex;

use crate::support::*;

fn cart_request(who: &str, idem: &str, lines: &[(&Sku, u32)]) -> CartRequest {
    CartRequest {
        caller: None,
        user: user(who),
        key: key(idem),
        lines: lines
            .iter()
            .map(|(sku, quantity)| CartLineRequest {
                sku: (*sku).clone(),
                quantity: *quantity,
            })
            .collect(),
    }
}

/// Units of `sku` neither available nor held nor sold must not exist: everything loaded is
/// in exactly one of the three (nothing is in transit once the calls are done).
async fn assert_conserved(store: &Store, sku: &Sku) -> (u64, u64, u64) {
    let t = store.totals(sku).await.unwrap();
    assert_eq!(
        t.available + t.held + t.sold + t.in_transit,
        t.loaded + t.restocked,
        "{sku}: {t:?}"
    );
    (t.available, t.held, t.sold)
}

#[tokio::test]
async fn a_cart_holds_every_line_and_confirms_them_together() {
    let h = Harness::start().await;
    let phone = h.sku("phone", spec(5, 2, 2, 60_000)).await;
    let case = h.sku("case", spec(5, 2, 2, 30_000)).await;
    let request = cart_request("ann", "c-1", &[(&phone, 1), (&case, 2)]);
    let opened = h.store.open_cart(&request).await.unwrap();
    assert!(!opened.replayed);
    let cart = opened.cart;
    assert_eq!(cart.state, CartState::Held);
    // In SKU order, each line a hold that names its cart.
    let skus: Vec<&str> = cart.lines.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(skus, ["case", "phone"]);
    for line in &cart.lines {
        let hold = h.store.reservation(&line.reservation).await.unwrap();
        assert_eq!(hold.state, HoldState::Held);
        assert_eq!(hold.origin.cart(), Some(&cart.id));
        assert_eq!(
            hold.deadline_ms, cart.deadline_ms,
            "one deadline for the cart"
        );
        // A line is not confirmed or cancelled alone.
        assert!(matches!(
            h.store.confirm(&line.reservation, None).await,
            Err(StoreError::CartLine(id)) if id == cart.id
        ));
        assert!(matches!(
            h.store.cancel(&line.reservation, None).await,
            Err(StoreError::CartLine(_))
        ));
    }
    assert_eq!(assert_conserved(&h.store, &phone).await, (4, 1, 0));
    assert_eq!(assert_conserved(&h.store, &case).await, (3, 2, 0));

    // The same key again is the same cart; with other lines it is refused.
    let again = h.store.open_cart(&request).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.cart.id, cart.id);
    let other = cart_request("ann", "c-1", &[(&phone, 2), (&case, 2)]);
    assert!(matches!(
        h.store.open_cart(&other).await,
        Err(StoreError::KeyReused)
    ));

    let confirmed = h.store.confirm_cart(&cart.id, None).await.unwrap();
    assert_eq!(confirmed.state, CartState::Confirmed);
    assert_eq!(
        h.store.confirm_cart(&cart.id, None).await.unwrap().state,
        CartState::Confirmed
    );
    assert!(matches!(
        h.store.cancel_cart(&cart.id, None).await,
        Err(StoreError::CartConfirmed)
    ));
    assert_eq!(
        h.store.cart(&cart.id).await.unwrap().state,
        CartState::Confirmed
    );
    assert_eq!(assert_conserved(&h.store, &phone).await, (4, 0, 1));
    assert_eq!(assert_conserved(&h.store, &case).await, (3, 0, 2));
}

#[tokio::test]
async fn a_line_refused_on_the_last_sku_returns_every_earlier_hold() {
    let h = Harness::start().await;
    let a = h.sku("a-seat", spec(1, 1, 1, 60_000)).await;
    let b = h.sku("b-seat", spec(1, 1, 1, 60_000)).await;
    let z = h.sku("z-parking", spec(1, 1, 1, 60_000)).await;
    // Someone else has the last unit of the last SKU in order.
    h.store.reserve(&request(&z, "bob", 1, "k")).await.unwrap();
    let refused = h
        .store
        .open_cart(&cart_request("ann", "c-1", &[(&z, 1), (&a, 1), (&b, 1)]))
        .await;
    let Err(StoreError::CartRefused(lines)) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (lines[0].sku.as_str(), lines[0].code),
        ("z-parking", "sold_out")
    );
    // Nothing of the cart is held: the seats are back on sale, and a single buyer gets them.
    for seat in [&a, &b] {
        assert_eq!(assert_conserved(&h.store, seat).await, (1, 0, 0));
        let bought = h
            .store
            .reserve(&request(seat, "carl", 1, "k"))
            .await
            .unwrap();
        h.store.confirm(&bought.reservation.id, None).await.unwrap();
    }
    // The key left no trace.
    let none = h
        .store
        .cart_by_key(&user("ann"), &key("c-1"))
        .await
        .unwrap();
    assert_eq!(none, None);
}

#[tokio::test]
async fn an_unconfirmed_cart_expires_whole_and_its_units_come_back() {
    let h = Harness::start().await;
    let a = h.sku("a", spec(2, 1, 1, 300)).await;
    let b = h.sku("b", spec(2, 1, 1, 60_000)).await;
    let cart = h
        .store
        .open_cart(&cart_request("ann", "c", &[(&a, 1), (&b, 1)]))
        .await
        .unwrap()
        .cart;
    // The cart's deadline is the shortest hold of its SKUs, for every line.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        h.store.cart(&cart.id).await.unwrap().state,
        CartState::Expired
    );
    // The line of the SKU with the long hold is not swept alone: only its cart expires it.
    h.store.sweep(&b, 100).await.unwrap();
    assert_eq!(assert_conserved(&h.store, &b).await, (1, 1, 0));
    maintenance::run_once(&h.store).await.unwrap();
    assert_eq!(assert_conserved(&h.store, &a).await, (2, 0, 0));
    assert_eq!(assert_conserved(&h.store, &b).await, (2, 0, 0));
    assert!(matches!(
        h.store.confirm_cart(&cart.id, None).await,
        Err(StoreError::CartExpired)
    ));
    assert_eq!(
        h.store.cancel_cart(&cart.id, None).await.unwrap().state,
        CartState::Expired
    );
}

/// Opens a cart by hand the way an engine would and stops after its first line: the
/// engine is lost there.
async fn open_and_lose(h: &Harness, cart: &Cart) {
    let scripts = flashsale::scripts::Scripts::new();
    let mut conn = h.store.connection();
    let bucket = h.store.keys().cart_bucket(cart.id.bucket());
    let lines: Vec<serde_json::Value> = cart
        .lines
        .iter()
        .map(|l| serde_json::json!({"sku": l.sku.as_str(), "qty": l.quantity, "rid": l.reservation.as_str()}))
        .collect();
    let (_, outcome, _): (u64, String, String) = scripts
        .cart
        .key(&bucket.hash)
        .key(&bucket.open)
        .arg("open")
        .arg(cart.id.as_str())
        .arg(cart.user.as_str())
        .arg(cart.key.as_str())
        .arg(60_000)
        .arg(5_000)
        .arg(serde_json::to_string(&lines).unwrap())
        .arg("")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(outcome, "opened");
    take_line(h, cart, 0).await;
}

async fn take_line(h: &Harness, cart: &Cart, index: usize) -> i64 {
    let scripts = flashsale::scripts::Scripts::new();
    let line = &cart.lines[index];
    let keys = h.store.keys().shard(&line.sku, line.reservation.shard());
    let (_, _, reply): (u64, i64, flashsale::scripts::RawHold) = scripts
        .cart_line
        .key(&keys.hash)
        .key(&keys.deadlines)
        .key(&keys.events)
        .arg(line.sku.as_str())
        .arg(line.reservation.shard())
        .arg("take")
        .arg(line.reservation.as_str())
        .arg(cart.id.as_str())
        .arg(cart.user.as_str())
        .arg(line.quantity)
        .arg(cart.deadline_ms)
        .arg(1)
        .arg(cart.key.as_str())
        .arg(cart.lines.len())
        .arg("")
        .invoke_async(&mut h.store.connection())
        .await
        .unwrap();
    reply.0
}

#[tokio::test]
async fn a_cart_its_engine_lost_mid_open_is_rolled_back_once_and_a_late_take_is_refused() {
    let h = Harness::start().await;
    let a = h.sku("a", spec(1, 1, 1, 60_000)).await;
    let b = h.sku("b", spec(1, 1, 1, 60_000)).await;
    let who = user("ann");
    let cart = Cart {
        caller: None,
        id: CartId::generate(&who),
        user: who.clone(),
        key: key("c"),
        state: CartState::Opening,
        deadline_ms: h.store.sync_clock().await.unwrap() + 60_000,
        lines: [&a, &b]
            .iter()
            .map(|sku| flashsale::store::CartLine {
                sku: (*sku).clone(),
                quantity: 1,
                reservation: flashsale::ids::ReservationId::generate(sku, 0),
            })
            .collect(),
    };
    open_and_lose(&h, &cart).await;
    assert_eq!(assert_conserved(&h.store, &a).await, (0, 1, 0));
    // A retry of the key meanwhile is told to wait, not given a second cart.
    let retry = cart_request("ann", "c", &[(&a, 1), (&b, 1)]);
    assert!(matches!(
        h.store.open_cart(&retry).await,
        Err(StoreError::CartPending)
    ));
    // Also when the retry is refused from memory (a SKU of it closed) and only its key is
    // looked up: never a cart between steps passed off as made.
    assert!(matches!(
        h.store.replay_cart(&retry).await,
        Err(StoreError::CartPending)
    ));
    assert!(matches!(h.store.cart(&cart.id).await, Ok(c) if c.state == CartState::Opening));

    // Before the lease runs out the pass leaves it alone; after, it rolls it back.
    maintenance::run_once(&h.store).await.unwrap();
    assert_eq!(assert_conserved(&h.store, &a).await, (0, 1, 0));
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    h.store.sync_clock().await.unwrap();
    maintenance::run_once(&h.store).await.unwrap();
    assert_eq!(assert_conserved(&h.store, &a).await, (1, 0, 0));
    assert_eq!(assert_conserved(&h.store, &b).await, (1, 0, 0));
    assert!(matches!(
        h.store.cart(&cart.id).await,
        Err(StoreError::CartNotFound)
    ));
    // The lost engine's second take, arriving late, finds its line rolled back.
    assert_eq!(take_line(&h, &cart, 1).await, 11, "CANCELLED");
    assert_eq!(assert_conserved(&h.store, &b).await, (1, 0, 0));
    // Once only: a second pass changes nothing, and each line was returned one time.
    maintenance::run_once(&h.store).await.unwrap();
    let returned = h
        .events(&a, 1)
        .into_iter()
        .filter(|e| matches!(e, flashsale::events::Event::Cancelled { .. }))
        .count();
    assert_eq!(returned, 1);
    assert!(matches!(h.store.replay_cart(&retry).await, Ok(None)));
    // The key is free again: the retry makes a cart of its own now.
    let fresh = h.store.open_cart(&retry).await.unwrap();
    assert_ne!(fresh.cart.id, cart.id);
    assert_eq!(fresh.cart.state, CartState::Held);
}

/// Many buyers of bundles over the same scarce SKUs, more demand than supply on every one:
/// no cart is ever partly held or confirmed, units are conserved, and in the end every
/// unit is sold or back on sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_carts_over_overlapping_skus_are_never_partial() {
    const STOCK: u64 = 12;
    let h = Harness::start().await;
    let names = ["s0", "s1", "s2", "s3", "s4"];
    let mut skus = Vec::new();
    for name in names {
        skus.push(h.sku(name, spec(STOCK, 2, 2, 60_000)).await);
    }
    let skus = Arc::new(skus);
    let outcomes: Arc<Mutex<Vec<(Cart, bool)>>> = Arc::default();
    let refusals: Arc<Mutex<HashMap<&'static str, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for buyer in 0..40 {
        let (store, skus, outcomes, refusals) = (
            h.store.clone(),
            skus.clone(),
            outcomes.clone(),
            refusals.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for attempt in 0..3 {
                // Three overlapping SKUs, each wanted twice over across the buyers.
                let first = (buyer + attempt) % skus.len();
                let lines: Vec<(&Sku, u32)> = (0..3)
                    .map(|i| (&skus[(first + i * 2) % skus.len()], 1 + (buyer % 2) as u32))
                    .collect();
                let request = cart_request(&format!("u{buyer}"), &format!("k{attempt}"), &lines);
                match store.open_cart(&request).await {
                    Ok(opened) => {
                        let cart = opened.cart;
                        for line in &cart.lines {
                            let hold = store.reservation(&line.reservation).await.unwrap();
                            assert_eq!(hold.state, HoldState::Held, "a held cart's line");
                        }
                        // Half the carts are paid for, half abandoned.
                        let confirm = buyer % 2 == 0;
                        let done = if confirm {
                            store.confirm_cart(&cart.id, None).await.unwrap()
                        } else {
                            store.cancel_cart(&cart.id, None).await.unwrap()
                        };
                        outcomes.lock().push((done, confirm));
                    }
                    Err(StoreError::CartRefused(lines)) => {
                        *refusals.lock().entry(lines[0].code).or_default() += 1;
                    }
                    Err(error) => panic!("unexpected {error:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let outcomes = outcomes.lock().clone();
    let refusals = refusals.lock().clone();
    assert!(
        !refusals.is_empty(),
        "demand above supply refuses some carts"
    );
    assert!(
        refusals
            .keys()
            .all(|code| matches!(*code, "sold_out" | "insufficient_stock" | "limit_exceeded")),
        "{refusals:?}"
    );
    let mut sold: HashMap<String, u64> = HashMap::new();
    for (cart, confirmed) in &outcomes {
        let expected = if *confirmed {
            CartState::Confirmed
        } else {
            CartState::Cancelled
        };
        assert_eq!(cart.state, expected);
        for line in &cart.lines {
            let hold = h.store.reservation(&line.reservation).await.unwrap();
            let want = if *confirmed {
                HoldState::Confirmed
            } else {
                HoldState::Cancelled
            };
            assert_eq!(hold.state, want, "every line of a cart as its cart");
            if *confirmed {
                *sold.entry(line.sku.to_string()).or_default() += u64::from(line.quantity);
            }
        }
    }
    assert!(
        outcomes.iter().any(|(_, c)| *c),
        "some carts were confirmed"
    );
    for sku in skus.iter() {
        let (available, held, sold_units) = assert_conserved(&h.store, sku).await;
        assert_eq!(held, 0, "{sku}: nothing left held");
        assert_eq!(
            sold_units,
            sold.get(sku.as_str()).copied().unwrap_or(0),
            "{sku}"
        );
        assert_eq!(available + sold_units, STOCK, "{sku}: sold or back on sale");
        // No line of any cart outlived it: every reserved hold of the SKU is settled.
        for event in h.events(sku, 2) {
            if let flashsale::events::Event::Reserved { origin, .. } = event {
                assert!(matches!(origin, HoldOrigin::Cart { .. }));
            }
        }
    }
}

/// A cart admitted before the connection dropped takes no step on the Redis that answers
/// after it until that Redis was checked (it may be a restarted one that lost writes).
#[tokio::test]
async fn no_cart_step_reaches_a_redis_not_yet_checked_after_a_drop() {
    let h = Harness::start_single_with(flashsale_testkit::LocalRedisOptions::default()).await;
    let Servers::Single(redis) = &h.redis else {
        unreachable!("a single Redis was asked for")
    };
    let a = h.sku("a", spec(5, 1, 1, 60_000)).await;
    let b = h.sku("b", spec(5, 1, 1, 60_000)).await;
    let held = h
        .store
        .open_cart(&cart_request("ann", "c-1", &[(&a, 1), (&b, 1)]))
        .await
        .unwrap()
        .cart;
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert_ne!(killed, ":0", "the store's connection was dropped");
    // The next call sees the drop.
    while !h.store.redis_suspect() {
        let _ = h.store.cart(&held.id).await;
    }
    assert!(matches!(
        h.store
            .open_cart(&cart_request("bob", "c-2", &[(&a, 1), (&b, 1)]))
            .await,
        Err(StoreError::Recovering)
    ));
    assert!(matches!(
        h.store.confirm_cart(&held.id, None).await,
        Err(StoreError::Recovering)
    ));
    assert_eq!(h.store.cart(&held.id).await.unwrap().state, CartState::Held);
    assert_eq!(
        h.store
            .cart_by_key(&user("bob"), &key("c-2"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(assert_conserved(&h.store, &a).await, (4, 1, 0));
    // Checked, the engine trusts it again, and the cart settles.
    h.store.trust_redis();
    assert_eq!(
        h.store.confirm_cart(&held.id, None).await.unwrap().state,
        CartState::Confirmed
    );
}
