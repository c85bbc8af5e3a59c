//! Demand far above supply, skewed onto a few shards: stock must move to where the buyers
//! are, so that the sale ends with every unit sold, and none twice.

use std::collections::HashSet;
use std::sync::Arc;

use flashsale::events::Event;
use flashsale::ids::UserId;
use flashsale::sharding::home_shard;
use flashsale::store::StoreError;
use parking_lot::Mutex;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_demand_ten_times_supply_sells_every_unit_once() {
    const STOCK: u64 = 800;
    const SHARDS: u16 = 16;
    let h = Harness::start().await;
    let tv = h.sku("tv", spec(STOCK, SHARDS, 1, 600_000)).await;
    // Buyers whose home is one of three shards: the other 13 shards' stock must move.
    let buyers: Vec<String> = (0..)
        .map(|n| format!("buyer{n}"))
        .filter(|name| home_shard(&UserId::new(name.as_str()).unwrap(), SHARDS) < 3)
        .take(10 * STOCK as usize)
        .collect();
    let buyers = Arc::new(Mutex::new(buyers));
    let sold_ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let (store, tv, buyers, sold_ids) = (
            h.store.clone(),
            tv.clone(),
            buyers.clone(),
            sold_ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(who) = buyers.lock().pop() else {
                    return;
                };
                match store.reserve(&request(&tv, &who, 1, "k")).await {
                    Ok(r) => {
                        let sale = store.confirm(&r.reservation.id, None).await.unwrap();
                        sold_ids.lock().push(sale.id.to_string());
                    }
                    Err(StoreError::SoldOut) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let sold_ids = sold_ids.lock().clone();
    let distinct: HashSet<_> = sold_ids.iter().collect();
    assert_eq!(sold_ids.len() as u64, STOCK, "every unit sold");
    assert_eq!(
        distinct.len(),
        sold_ids.len(),
        "no reservation confirmed twice"
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!(
        (t.available, t.held, t.sold, t.in_transit),
        (0, 0, STOCK, 0)
    );
    assert!(t.conserved());
    // The events agree: moves out of idle shards equal moves into busy ones.
    let (mut moved_out, mut moved_in) = (0, 0);
    for event in h.events(&tv, SHARDS) {
        match event {
            Event::MovedOut { qty, .. } => moved_out += qty,
            Event::MovedIn { qty, .. } => moved_in += qty,
            _ => {}
        }
    }
    assert!(moved_out > 0);
    assert_eq!(moved_out, moved_in);
}
