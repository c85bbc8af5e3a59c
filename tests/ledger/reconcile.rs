//! Settling the streams into the ledger: every event once, whatever the delivery.

use std::time::Duration;

use flashsale::ids::{random_token, HoldOrigin};
use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::recovery::audit;
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale_testkit::LocalRedis;

pub async fn sqlite_ledger(dir: &tempfile::TempDir) -> (String, Ledger) {
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let ledger = Ledger::connect(&url).await.expect("sqlite ledger");
    (url, ledger)
}

pub fn request(sku: &str, user: &str, key: &str) -> ReserveRequest {
    ReserveRequest {
        caller: None,
        sku: sku.parse().unwrap(),
        user: user.parse().unwrap(),
        quantity: 1,
        key: key.parse().unwrap(),
    }
}

#[tokio::test]
async fn events_settle_once_and_the_ledger_matches_redis() {
    let redis = LocalRedis::start().unwrap();
    let mut options = StoreOptions::new(redis.url());
    options.prefix = format!("t{}:", random_token());
    let store = Store::connect(&options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, ledger) = sqlite_ledger(&dir).await;
    let tv = "tv".parse().unwrap();
    store
        .load(
            &tv,
            &SkuSpec {
                shards: Some(4),
                hold: Duration::from_millis(200),
                ..SkuSpec::new(40)
            },
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..60 {
        if let Ok(r) = store.reserve(&request("tv", &format!("u{n}"), "k")).await {
            ids.push(r.reservation.id);
        }
    }
    for (n, id) in ids.iter().enumerate() {
        match n % 3 {
            0 => drop(store.confirm(id, None).await.unwrap()),
            1 => drop(store.cancel(id, None).await.unwrap()),
            _ => {}
        }
    }
    store
        .cancel_by_key(&tv, &"late".parse().unwrap(), &"k".parse().unwrap(), None)
        .await
        .unwrap();
    store.restock(&tv, 5, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.sweep(&tv, 1000).await.unwrap();

    let reconciler = Reconciler::new(store.clone(), ledger.clone(), ReconcileOptions::new(), None);
    assert!(reconciler.drain(Duration::from_secs(30)).await.unwrap());
    let report = audit::run(&store, &ledger, None, false).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    assert_eq!(report.reservations, ids.len());
    let figures = ledger.figures("tv").await.unwrap();
    let totals = store.totals(&tv).await.unwrap();
    assert_eq!(
        (figures.stock, figures.sold, figures.held),
        (45, totals.sold, totals.held)
    );
    assert_eq!(figures.available(), totals.available);
    assert_eq!(
        ledger.barriers("tv").await.unwrap(),
        vec![("late".to_owned(), "k".to_owned())]
    );

    // Every entry delivered again: nothing changes.
    let events = ledger.events_applied().await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for shard in 0..4 {
        let key = store.keys().shard(&tv, shard).events;
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&key)
            .arg("ledger")
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let again = Reconciler::new(store.clone(), ledger.clone(), ReconcileOptions::new(), None);
    again.discover().await.unwrap();
    let mut duplicates = 0;
    loop {
        let turn = again.turn().await.unwrap();
        assert_eq!(
            turn.applied.applied, 0,
            "a redelivered event changed the ledger"
        );
        duplicates += turn.applied.duplicates;
        if turn.entries == 0 && again.backlog().await.unwrap().is_empty() {
            break;
        }
    }
    assert_eq!(duplicates, events);
    assert_eq!(ledger.events_applied().await.unwrap(), events);
    assert!(audit::run(&store, &ledger, None, false)
        .await
        .unwrap()
        .drifts
        .is_empty());
}

/// Entries applied in any order, in one batch or several, settle to the same ledger.
#[tokio::test]
async fn the_order_of_delivery_does_not_matter() {
    use flashsale::events::{Entry, Event};
    use flashsale::ids::ReservationId;

    let tv: flashsale::ids::Sku = "tv".parse().unwrap();
    let rid = ReservationId::generate(&tv, 1);
    let (ann, key) = ("ann".parse().unwrap(), "k".parse().unwrap());
    let entry = |id: &str, shard: u16, events: Vec<Event>| Entry {
        id: id.to_owned(),
        sku: tv.clone(),
        shard,
        ts_ms: 1,
        events,
    };
    let loaded = || Event::Loaded {
        qty: 5,
        per_user_limit: 1,
        hold_ms: 10,
        starts_at_ms: 0,
        ends_at_ms: 0,
        shards: 2,
    };
    let entries = [
        entry("1-0", 0, vec![loaded()]),
        entry("1-0", 1, vec![loaded()]),
        entry(
            "2-0",
            1,
            vec![Event::Reserved {
                caller: None,
                rid: rid.clone(),
                user: ann,
                qty: 1,
                origin: HoldOrigin::Key(key),
                deadline_ms: 10,
            }],
        ),
        entry(
            "3-0",
            0,
            vec![Event::MovedOut {
                move_id: "m1".into(),
                to: 1,
                qty: 2,
            }],
        ),
        entry(
            "4-0",
            1,
            vec![Event::MovedIn {
                move_id: "m1".into(),
                from: 0,
                qty: 2,
            }],
        ),
        entry(
            "20-0",
            1,
            vec![Event::Expired {
                rid: rid.clone(),
                user: "ann".parse().unwrap(),
                qty: 1,
            }],
        ),
        entry(
            "30-0",
            1,
            vec![Event::Confirmed {
                rid: rid.clone(),
                user: "ann".parse().unwrap(),
                qty: 1,
                late: true,
            }],
        ),
    ];
    let orders: Vec<Vec<usize>> = vec![
        vec![0, 1, 2, 3, 4, 5, 6],
        vec![6, 5, 4, 3, 2, 1, 0],
        vec![4, 6, 0, 2, 5, 1, 3],
    ];
    for order in orders {
        for batch_size in [1, 3, 7] {
            let dir = tempfile::tempdir().unwrap();
            let (_, ledger) = sqlite_ledger(&dir).await;
            let shuffled: Vec<Entry> = order.iter().map(|&i| entries[i].clone()).collect();
            for batch in shuffled.chunks(batch_size) {
                ledger.apply(batch).await.unwrap();
            }
            // And everything once more: nothing changes.
            assert_eq!(ledger.apply(&shuffled).await.unwrap().applied, 0);
            let figures = ledger.figures("tv").await.unwrap();
            assert_eq!(
                (
                    figures.stock,
                    figures.in_transit,
                    figures.sold,
                    figures.held
                ),
                (10, 0, 1, 0),
                "{order:?}/{batch_size}"
            );
            let reservations = ledger.reservations("tv").await.unwrap();
            assert_eq!(reservations.len(), 1);
            assert_eq!(
                (
                    reservations[0].state.as_str(),
                    reservations[0].key.as_deref()
                ),
                ("confirmed", Some("k"))
            );
            assert_eq!(ledger.skus().await.unwrap()[0].shards, 2);
        }
    }
    // Half a move settled: its units are in transit, still part of the stock.
    let dir = tempfile::tempdir().unwrap();
    let (_, ledger) = sqlite_ledger(&dir).await;
    ledger.apply(&entries[..4]).await.unwrap();
    let figures = ledger.figures("tv").await.unwrap();
    assert_eq!(
        (figures.stock, figures.in_transit, figures.available()),
        (10, 2, 7)
    );
}

/// After a read that found less than a full batch, the reconciler waits `gather` before it
/// reads again, so that what arrives meanwhile is settled in one transaction rather than
/// one each (a turn costs a transaction, an fsync and an `XACK` whatever it carries).
#[tokio::test]
async fn after_a_short_read_the_next_one_gathers_what_arrived_meanwhile() {
    let redis = LocalRedis::start().unwrap();
    let mut options = StoreOptions::new(redis.url());
    options.prefix = format!("t{}:", random_token());
    let store = Store::connect(&options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, ledger) = sqlite_ledger(&dir).await;
    let sku = "tv".parse().unwrap();
    let spec = SkuSpec {
        shards: Some(1),
        hold: Duration::from_secs(3600),
        ..SkuSpec::new(100)
    };
    store.load(&sku, &spec).await.unwrap();

    let metrics = std::sync::Arc::new(flashsale::metrics::Metrics::new());
    let mut reconcile = ReconcileOptions::new();
    // Far longer than ten reserves take, even on a busy machine.
    reconcile.gather = Duration::from_secs(3);
    let reconciler = Reconciler::new(
        store.clone(),
        ledger.clone(),
        reconcile,
        Some(metrics.clone()),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(reconciler.run(stopped));
    let settled = |n: u64| {
        let ledger = ledger.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while ledger.events_applied().await.unwrap() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n} events not settled"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // A batch is counted once acknowledged, a moment after the ledger shows it.
    let counted = |n: u64| {
        let metrics = metrics.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while metrics.reconciler_batches.get() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{n} batches not counted"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // The load's event, read alone: a short read.
    settled(1).await;
    counted(1).await;
    let batches = metrics.reconciler_batches.get();
    for n in 0..10 {
        store
            .reserve(&request("tv", &format!("u{n}"), "k"))
            .await
            .unwrap();
    }
    settled(11).await;
    counted(batches + 1).await;
    // Had the reserves been settled in two transactions, both would be counted by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metrics.reconciler_batches.get() - batches,
        1,
        "ten reserves made while the reconciler gathered are settled in one transaction"
    );
    let _ = stop.send(true);
    running.await.unwrap();
}

/// The consumer names of the ledger's group on `stream`.
async fn consumers(store: &Store, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(flashsale::reconcile::GROUP)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    reply.consumers.into_iter().map(|c| c.name).collect()
}

/// Every process start names a consumer in each group; one that ended, with nothing
/// pending, is removed from the groups by the next reconciler's housekeeping.
#[tokio::test]
async fn a_dead_consumer_leaves_the_groups() {
    let redis = LocalRedis::start().unwrap();
    let mut options = StoreOptions::new(redis.url());
    options.prefix = format!("t{}:", random_token());
    let store = Store::connect(&options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, ledger) = sqlite_ledger(&dir).await;
    let tv = "tv".parse().unwrap();
    store
        .load(
            &tv,
            &SkuSpec {
                shards: Some(2),
                ..SkuSpec::new(10)
            },
        )
        .await
        .unwrap();
    store.reserve(&request("tv", "u1", "k")).await.unwrap();

    let quick = |name: &str| {
        let mut options = ReconcileOptions::new();
        options.consumer = name.to_owned();
        options.claim_idle = Duration::from_millis(20);
        Reconciler::new(store.clone(), ledger.clone(), options, None)
    };
    let earlier = quick("earlier-run");
    assert!(earlier.drain(Duration::from_secs(30)).await.unwrap());
    drop(earlier);
    let streams: Vec<String> = (0..2).map(|n| store.keys().shard(&tv, n).events).collect();
    for stream in &streams {
        assert!(consumers(&store, stream)
            .await
            .contains(&"earlier-run".to_owned()));
    }

    // Idle for longer than three claim periods.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = quick("this-run");
    now.discover().await.unwrap();
    now.claim_abandoned().await.unwrap();
    assert_eq!(now.remove_dead_consumers().await.unwrap(), 2);
    for stream in &streams {
        assert!(
            !consumers(&store, stream)
                .await
                .contains(&"earlier-run".to_owned()),
            "{stream}"
        );
    }
    // Nothing was lost on the way.
    assert!(now.drain(Duration::from_secs(30)).await.unwrap());
    assert_eq!(ledger.figures("tv").await.unwrap().held, 1);
}
