//! Carts when Redis loses everything: the SKUs are rebuilt from the ledger, then each
//! cart's record from its lines, so that carts read, replay and settle as before.

use flashsale::ids::{IdempotencyKey, Sku, UserId};
use flashsale::maintenance;
use flashsale::recovery::carts::restore_carts;
use flashsale::recovery::DriftKind;
use flashsale::store::{CartLineRequest, CartRequest, CartState, HoldState, StoreError};

use crate::support::*;

fn request(who: &str, key: &str, skus: &[&Sku]) -> CartRequest {
    CartRequest {
        caller: None,
        user: UserId::new(who).unwrap(),
        key: IdempotencyKey::new(key).unwrap(),
        lines: skus
            .iter()
            .map(|sku| CartLineRequest {
                sku: (*sku).clone(),
                quantity: 1,
            })
            .collect(),
    }
}

#[tokio::test]
async fn after_redis_lost_everything_carts_come_back_from_the_ledger() {
    let rig = Rig::start().await;
    let phone = rig.load("phone", 10, 2, 2).await;
    let case = rig.load("case", 10, 2, 2).await;
    let held = rig
        .store
        .open_cart(&request("ann", "c-1", &[&phone, &case]))
        .await
        .unwrap()
        .cart;
    let paid = rig
        .store
        .open_cart(&request("bob", "c-2", &[&phone, &case]))
        .await
        .unwrap()
        .cart;
    rig.store.confirm_cart(&paid.id, None).await.unwrap();
    let dropped = rig
        .store
        .open_cart(&request("cat", "c-3", &[&case]))
        .await
        .unwrap()
        .cart;
    rig.store.cancel_cart(&dropped.id, None).await.unwrap();
    rig.drain().await;

    rig.lose_redis_data().await;
    assert!(matches!(
        rig.store.cart(&held.id).await,
        Err(StoreError::CartNotFound)
    ));
    // The audit names each cart Redis lost; the repair rebuilds the SKUs, then the carts.
    let found = rig.audit().await;
    let missing = found.by_kind().get(&DriftKind::CartMissingInRedis).copied();
    assert_eq!(missing, Some(3), "{found}");
    let report = rig.repair().await;
    assert!(!report.drifts.is_empty(), "the loss was found: {report}");
    // Once: a second restore finds every record there.
    assert_eq!(restore_carts(&rig.store, &rig.ledger).await.unwrap(), 0);

    assert_eq!(
        rig.store.cart(&held.id).await.unwrap().state,
        CartState::Held
    );
    assert_eq!(
        rig.store.cart(&paid.id).await.unwrap().state,
        CartState::Confirmed
    );
    assert_eq!(
        rig.store.cart(&dropped.id).await.unwrap().state,
        CartState::Cancelled
    );
    // The key still names its cart: a retry gets it back, not a second one.
    let again = rig
        .store
        .open_cart(&request("ann", "c-1", &[&phone, &case]))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.cart.id, held.id);
    // And the held cart settles whole, as before the loss.
    let confirmed = rig.store.confirm_cart(&held.id, None).await.unwrap();
    assert_eq!(confirmed.state, CartState::Confirmed);
    for line in &confirmed.lines {
        let hold = rig.store.reservation(&line.reservation).await.unwrap();
        assert_eq!(hold.state, HoldState::Confirmed);
    }
    maintenance::run_once(&rig.store).await.unwrap();
    for sku in [&phone, &case] {
        let totals = rig.totals(sku).await;
        assert_conserved(&totals, 10, "after the restore");
        assert_eq!((totals.held, totals.sold), (0, 2), "{sku}");
    }
    assert_no_drift(&rig.audit().await, "after the restore");
}
