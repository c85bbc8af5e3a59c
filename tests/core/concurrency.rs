//! Many concurrent reserves: never more held than there is, never more per user than allowed.

use std::collections::HashMap;
use std::sync::Arc;

use flashsale::ids::random_token;
use flashsale::store::StoreError;
use parking_lot::Mutex;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_of_a_thousand_reserves_hold_exactly_the_stock() {
    const TASKS: usize = 64;
    const PER_TASK: usize = 1_000;
    const USERS: usize = 2_000;
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(500, 8, 2, 600_000)).await;
    let held_by_user: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, tv, held_by_user) = (h.store.clone(), tv.clone(), held_by_user.clone());
        tasks.push(tokio::spawn(async move {
            let (mut held, mut refused) = (0u64, 0u64);
            for i in 0..PER_TASK {
                let who = format!("u{}", (t * 7919 + i * 104_729) % USERS);
                let qty = 1 + (i % 2) as u32;
                match store
                    .reserve(&request(&tv, &who, qty, &random_token()))
                    .await
                {
                    Ok(r) => {
                        assert!(!r.replayed);
                        held += u64::from(qty);
                        *held_by_user.lock().entry(who).or_default() += qty;
                    }
                    Err(
                        StoreError::SoldOut
                        | StoreError::InsufficientStock
                        | StoreError::LimitExceeded,
                    ) => refused += 1,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            (held, refused)
        }));
    }
    let mut held = 0;
    for task in tasks {
        held += task.await.unwrap().0;
    }
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!(held, 500, "units granted to clients");
    assert_eq!((t.available, t.held, t.sold, t.in_transit), (0, 500, 0, 0));
    assert!(t.conserved());
    let over: Vec<_> = held_by_user
        .lock()
        .iter()
        .filter(|(_, &n)| n > 2)
        .map(|(u, n)| (u.clone(), *n))
        .collect();
    assert!(over.is_empty(), "users over the limit: {over:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_with_a_thousand_concurrent_reserves_gets_exactly_the_limit() {
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(1_000, 4, 3, 600_000)).await;
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let (store, tv) = (h.store.clone(), tv.clone());
            tokio::spawn(async move {
                store
                    .reserve(&request(&tv, "greedy", 1, &random_token()))
                    .await
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(StoreError::LimitExceeded) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(granted, 3);
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!((t.held, t.available), (3, 997));
}
