//! Holds record the named caller that made them; only that caller may act on them.

use flashsale::ids::{CallerName, IdempotencyKey, UserId};
use flashsale::store::{CartLineRequest, CartRequest, HoldState};

use crate::support::{request, spec, Harness};

fn caller(name: &str) -> CallerName {
    CallerName::new(name).unwrap()
}

#[tokio::test]
async fn only_the_caller_that_made_a_reservation_confirms_or_cancels_it() {
    let h = Harness::start().await;
    let sku = h.sku("owned", spec(10, 2, 1, 600_000)).await;
    let (shop, other) = (caller("shop"), caller("other"));

    let mut ask = request(&sku, "ann", 1, "k-1");
    ask.caller = Some(shop.clone());
    let made = h.store.reserve(&ask).await.expect("reserve").reservation;
    assert_eq!(made.caller.as_ref(), Some(&shop));
    let read = h.store.reservation(&made.id).await.expect("read");
    assert_eq!(read.caller.as_ref(), Some(&shop));
    assert_eq!(read.origin.key().map(|k| k.as_str()), Some("k-1"));

    for refused in [
        h.store.confirm(&made.id, Some(&other)).await.map(drop),
        h.store.cancel(&made.id, Some(&other)).await.map(drop),
        h.store
            .cancel_by_key(
                &sku,
                &UserId::new("ann").unwrap(),
                &IdempotencyKey::new("k-1").unwrap(),
                Some(&other),
            )
            .await
            .map(drop),
    ] {
        assert_eq!(
            refused.expect_err("another caller").code(),
            "not_your_reservation"
        );
    }
    // A repeat of the reserve by another caller does not hand the reservation over.
    let mut repeat = ask.clone();
    repeat.caller = Some(other.clone());
    let err = h
        .store
        .reserve(&repeat)
        .await
        .expect_err("another caller's key");
    assert_eq!(err.code(), "not_your_reservation");
    // Nothing changed, and the caller that made it may.
    let read = h.store.reservation(&made.id).await.expect("read");
    assert_eq!(read.state, HoldState::Held);
    let done = h
        .store
        .confirm(&made.id, Some(&shop))
        .await
        .expect("own confirm");
    assert_eq!(done.state, HoldState::Confirmed);

    // A reservation made with no caller named is anyone's.
    let plain = h
        .store
        .reserve(&request(&sku, "bob", 1, "k-2"))
        .await
        .expect("reserve")
        .reservation;
    assert_eq!(plain.caller, None);
    let done = h
        .store
        .cancel(&plain.id, Some(&other))
        .await
        .expect("cancel");
    assert_eq!(done.state, HoldState::Cancelled);
}

#[tokio::test]
async fn only_the_caller_that_made_a_cart_confirms_or_cancels_it() {
    let h = Harness::start().await;
    let a = h.sku("cart-a", spec(10, 1, 1, 600_000)).await;
    let b = h.sku("cart-b", spec(10, 1, 1, 600_000)).await;
    let (shop, other) = (caller("shop"), caller("other"));
    let request = CartRequest {
        user: UserId::new("ann").unwrap(),
        key: IdempotencyKey::new("cart-1").unwrap(),
        lines: vec![
            CartLineRequest {
                sku: a.clone(),
                quantity: 1,
            },
            CartLineRequest {
                sku: b.clone(),
                quantity: 1,
            },
        ],
        caller: Some(shop.clone()),
    };
    let cart = h.store.open_cart(&request).await.expect("open").cart;
    assert_eq!(cart.caller.as_ref(), Some(&shop));
    for line in &cart.lines {
        let hold = h.store.reservation(&line.reservation).await.expect("line");
        assert_eq!(
            hold.caller.as_ref(),
            Some(&shop),
            "the line records its caller"
        );
    }
    let err = h
        .store
        .confirm_cart(&cart.id, Some(&other))
        .await
        .expect_err("other");
    assert_eq!(err.code(), "not_your_reservation");
    let err = h
        .store
        .cancel_cart(&cart.id, Some(&other))
        .await
        .expect_err("other");
    assert_eq!(err.code(), "not_your_reservation");
    let done = h
        .store
        .confirm_cart(&cart.id, Some(&shop))
        .await
        .expect("own");
    assert_eq!(done.state, flashsale::store::CartState::Confirmed);
}
