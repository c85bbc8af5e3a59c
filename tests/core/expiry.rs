//! Expiry by deadline (Redis time), late confirms, and the TCC barrier over time.

use std::time::Duration;

use flashsale::ids::UserId;
use flashsale::sharding::home_shard;
use flashsale::store::{ExpiredBecause, HoldState, StoreError};

use crate::support::*;

const HOLD_MS: u64 = 100;

async fn past_deadline() {
    tokio::time::sleep(Duration::from_millis(HOLD_MS + 50)).await;
}

#[tokio::test]
async fn a_late_confirm_retakes_units_that_are_still_free() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(2, 1, 1, HOLD_MS)).await;
    let ann = h
        .store
        .reserve(&request(&tv, "ann", 1, "k"))
        .await
        .unwrap()
        .reservation;
    past_deadline().await;
    assert_eq!(
        h.store.reservation(&ann.id).await.unwrap().state,
        HoldState::Expired
    );
    assert_eq!(h.store.sweep(&tv, 100).await.unwrap().expired, 1);
    assert_eq!(
        h.store.totals(&tv).await.unwrap().available,
        2,
        "the units went back"
    );

    let late = h.store.confirm(&ann.id, None).await.unwrap();
    assert_eq!(late.state, HoldState::Confirmed);
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (1, 0, 1));
    assert_eq!(
        h.store.confirm(&ann.id, None).await.unwrap(),
        late,
        "idempotent after a late confirm"
    );
}

#[tokio::test]
async fn a_late_confirm_before_the_sweep_keeps_its_units() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(1, 1, 1, HOLD_MS)).await;
    let ann = h
        .store
        .reserve(&request(&tv, "ann", 1, "k"))
        .await
        .unwrap()
        .reservation;
    past_deadline().await;
    assert_eq!(
        h.store.confirm(&ann.id, None).await.unwrap().state,
        HoldState::Confirmed
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (0, 0, 1));
    assert_eq!(
        h.store.sweep(&tv, 100).await.unwrap().expired,
        0,
        "a sale never expires"
    );
}

#[tokio::test]
async fn a_late_confirm_whose_units_were_sold_again_fails_and_sells_nothing_twice() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(1, 1, 1, HOLD_MS)).await;
    let ann = h
        .store
        .reserve(&request(&tv, "ann", 1, "k"))
        .await
        .unwrap()
        .reservation;
    past_deadline().await;
    // No sweeper ran: bob's reserve meets the expired hold, returns its unit and takes it.
    let bob = h
        .store
        .reserve(&request(&tv, "bob", 1, "k"))
        .await
        .unwrap()
        .reservation;
    assert_eq!(
        h.store.reservation(&ann.id).await.unwrap().state,
        HoldState::Expired
    );
    assert!(matches!(
        h.store.confirm(&ann.id, None).await,
        Err(StoreError::Expired(ExpiredBecause::Stock))
    ));
    h.store.confirm(&bob.id, None).await.unwrap();
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (0, 0, 1));
    // Cancelling the expired hold reports it expired and returns nothing a second time.
    assert_eq!(
        h.store.cancel(&ann.id, None).await.unwrap().state,
        HoldState::Expired
    );
    assert_eq!(h.store.totals(&tv).await.unwrap().available, 0);
}

#[tokio::test]
async fn a_late_confirm_over_the_limit_fails() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(5, 1, 1, HOLD_MS)).await;
    let first = h
        .store
        .reserve(&request(&tv, "ann", 1, "k1"))
        .await
        .unwrap()
        .reservation;
    past_deadline().await;
    // The expiry gave ann's allowance back, and she used it on a new hold.
    h.store
        .reserve(&request(&tv, "ann", 1, "k2"))
        .await
        .unwrap();
    assert!(matches!(
        h.store.confirm(&first.id, None).await,
        Err(StoreError::Expired(ExpiredBecause::Limit))
    ));
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold), (4, 1, 0));
}

#[tokio::test]
async fn a_late_confirm_takes_units_from_another_shard() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(2, 2, 1, HOLD_MS)).await;
    let in_shard = |shard: u16| {
        (0..)
            .map(|n| format!("user{n}"))
            .filter(move |u| home_shard(&UserId::new(u.as_str()).unwrap(), 2) == shard)
    };
    let mut zero = in_shard(0);
    let (ann, bob) = (zero.next().unwrap(), zero.next().unwrap());
    let held = h
        .store
        .reserve(&request(&tv, &ann, 1, "k"))
        .await
        .unwrap()
        .reservation;
    past_deadline().await;
    // bob, in the same shard, takes the unit ann's hold gave back.
    h.store.reserve(&request(&tv, &bob, 1, "k")).await.unwrap();
    // Shard 1 still has its unit: it moves to shard 0 for ann's late confirm.
    assert_eq!(
        h.store.confirm(&held.id, None).await.unwrap().state,
        HoldState::Confirmed
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held, t.sold, t.in_transit), (0, 1, 1, 0));
    assert!(t.conserved());
}

#[tokio::test]
async fn expired_holds_free_the_stock_and_the_allowance_without_a_sweeper() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(3, 1, 3, HOLD_MS)).await;
    h.store
        .reserve(&request(&tv, "ann", 3, "k1"))
        .await
        .unwrap();
    assert!(matches!(
        h.store.reserve(&request(&tv, "bob", 1, "k")).await,
        Err(StoreError::SoldOut)
    ));
    past_deadline().await;
    // The shortage makes the script return the expired hold's units first.
    h.store.reserve(&request(&tv, "bob", 1, "k")).await.unwrap();
    h.store
        .reserve(&request(&tv, "ann", 2, "k2"))
        .await
        .unwrap();
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held), (0, 3));
}

#[tokio::test]
async fn an_empty_rollback_bars_a_reserve_that_arrives_much_later() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(5, 2, 1, HOLD_MS)).await;
    assert_eq!(
        h.store
            .cancel_by_key(&tv, &user("ann"), &key("order-7"), None)
            .await
            .unwrap(),
        None
    );
    // Holds come and go and the sweeper runs; the barrier stays for the whole sale.
    h.store.reserve(&request(&tv, "bob", 1, "x")).await.unwrap();
    past_deadline().await;
    h.store.sweep(&tv, 100).await.unwrap();
    assert!(matches!(
        h.store.reserve(&request(&tv, "ann", 1, "order-7")).await,
        Err(StoreError::KeyCancelled)
    ));
    h.store
        .reserve(&request(&tv, "ann", 1, "order-8"))
        .await
        .unwrap();
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.available, t.held), (4, 1));
}
