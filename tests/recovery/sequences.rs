//! Sequences of crashes, data loss and repairs that a correct engine comes out of with its
//! invariants whole: stock conserved in Redis and in the ledger, every settled sale kept,
//! every idempotent operation applied once, the per-user limit kept. Each test asserts on
//! the end state only (units, states, ledger figures), so that it holds for any correct
//! implementation of the recovery, not for one way of writing it.

use flashsale::events::{Entry, Event};
use flashsale::ids::{IdempotencyKey, OpId, Sku, UserId};
use flashsale::ledger::LedgerRepo;
use flashsale::maintenance;
use flashsale::sharding::home_shard;
use flashsale::store::{HoldState, RestoreOutcome, ShardImage, ShardRules, StoreError};

use crate::support::*;

/// A stock move whose second half never ran, then Redis lost everything: the repair must
/// put the units in transit back exactly once, and repairing again must change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cut_in_half_does_not_inflate_stock_on_repair() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 20, 2, 1).await;
    // The mover crashed between its two scripts: 4 units left shard 1, none reached 0.
    assert_eq!(rig.move_out(&sku, 1, 0, "m1", 4).await, 4);
    rig.drain().await;

    rig.lose_redis_data().await;
    let first = rig.repair().await;
    assert_eq!(first.repaired, vec!["tv".to_owned()], "{first}");
    // Whatever completes moves, and repairs run again, must not find more units each time.
    maintenance::run_once(&rig.store)
        .await
        .expect("maintenance pass");
    for _ in 0..3 {
        rig.repair().await;
        rig.drain().await;
        maintenance::run_once(&rig.store)
            .await
            .expect("maintenance pass");
    }

    rig.drain().await;
    assert_eq!(rig.figures(&sku).await.stock, 20, "the ledger's stock");
    assert_conserved(&rig.totals(&sku).await, 20, "after the repairs");
    assert_no_drift(&rig.audit().await, "after the repairs");
}

/// A SKU replaced with fewer shards: the shards it no longer routes to were emptied, and
/// neither the ledger nor a repair from it may count their old units again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_sku_with_fewer_shards_does_not_bring_old_units_back() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 800, 8, 1).await;
    rig.drain().await;
    load_with(&rig.store, &sku, 800, 4, 1).await;
    rig.drain().await;
    assert_eq!(
        rig.figures(&sku).await.stock,
        800,
        "the ledger's stock after the replace"
    );

    rig.lose_redis_data().await;
    let repaired = rig.repair().await;
    assert_eq!(repaired.repaired, vec!["tv".to_owned()], "{repaired}");
    let totals = rig.totals(&sku).await;
    assert_eq!(stock_of(&totals), 800, "Redis's stock after the repair");
    assert_eq!(totals.available, 800, "Redis's available units, {totals:?}");
}

/// A restore prepared from a snapshot must not land once the shard has changed since: the
/// confirm made after the snapshot would be undone, a sale turned back into a hold. Nothing
/// changes a fenced shard; a restore checks the version the fence saw, and the fence's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_does_not_overwrite_a_write_made_after_its_snapshot() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 10, 1, 1).await;
    let reserved = rig
        .store
        .reserve(&one_unit(&sku, "ann", "k1"))
        .await
        .expect("reserve");
    let id = reserved.reservation.id.clone();
    rig.drain().await;

    let seen = rig
        .store
        .fence_shard(&sku, 0, "repair-a")
        .await
        .expect("fence");
    let snapshot = rig
        .store
        .shard_snapshot(&sku, 0)
        .await
        .expect("shard snapshot");
    let config = rig.store.config(&sku).await.expect("config");
    // The shard as the snapshot saw it: ann's unit held, nine available.
    let mut fields: Vec<(String, String)> = snapshot
        .holds
        .iter()
        .map(|(rid, hold, _)| (flashsale::store::hold_field(rid).to_owned(), hold.format()))
        .collect();
    fields.extend(
        snapshot
            .users
            .iter()
            .map(|(user, record)| (user.clone(), record.format())),
    );
    let stale = ShardImage {
        rules: ShardRules {
            per_user_limit: config.per_user_limit,
            hold_ms: config.hold.as_millis() as u64,
            starts_at_ms: 0,
            ends_at_ms: 0,
            shards: config.shards,
        },
        available: 9,
        held: 1,
        made: 1,
        fields,
        ..ShardImage::default()
    };
    assert!(
        stale
            .fields
            .iter()
            .any(|(f, v)| *f == flashsale::store::hold_field(id.as_str()) && v.starts_with("h|")),
        "the image holds the reservation as held: {stale:?}"
    );

    // Fenced, the shard refuses the confirm and stays as it was.
    assert!(matches!(
        rig.store.confirm(&id, None).await,
        Err(StoreError::Recovering)
    ));
    assert_eq!(
        rig.store.reservation(&id).await.unwrap().state,
        HoldState::Held
    );

    // The fence lifted and taken again, a confirm between: the restore must not land.
    assert!(rig.store.unfence_shard(&sku, 0, "repair-a").await.unwrap());
    rig.store.confirm(&id, None).await.expect("confirm");
    let now_seen = rig
        .store
        .fence_shard(&sku, 0, "repair-a")
        .await
        .expect("fence");
    assert_ne!(seen, now_seen, "a confirm moves the shard's version");
    let outcome = rig
        .store
        .restore_shard(&sku, 0, "repair-a", seen, &stale)
        .await;
    assert_eq!(outcome.unwrap(), RestoreOutcome::Changed);
    let now = rig.store.reservation(&id).await.expect("read reservation");
    assert_eq!(now.state, HoldState::Confirmed, "the confirmed sale");
    assert_eq!(rig.totals(&sku).await.sold, 1, "units sold");

    // Another repairer took the fence over: the first one's restore must not land either.
    rig.store
        .fence_shard(&sku, 0, "repair-b")
        .await
        .expect("fence");
    let outcome = rig
        .store
        .restore_shard(&sku, 0, "repair-a", now_seen, &stale)
        .await;
    assert_eq!(outcome.unwrap(), RestoreOutcome::FenceLost);
    assert!(!rig.store.unfence_shard(&sku, 0, "repair-a").await.unwrap());
    assert!(rig.store.unfence_shard(&sku, 0, "repair-b").await.unwrap());
    assert_eq!(
        rig.store.reservation(&id).await.unwrap().state,
        HoldState::Confirmed
    );
}

/// A restock retried after Redis was rebuilt from the ledger: the operation id was applied
/// before the loss, so the retry must add nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restock_repeated_after_a_restore_adds_nothing() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 10, 1, 1).await;
    let op = OpId::new("op1").expect("op id");
    rig.store
        .restock(&sku, 5, Some(&op))
        .await
        .expect("restock");
    rig.drain().await;

    rig.lose_redis_data().await;
    let repaired = rig.repair().await;
    assert_eq!(repaired.repaired, vec!["tv".to_owned()], "{repaired}");
    // The client never saw its answer and sends the same operation again.
    let totals = rig
        .store
        .restock(&sku, 5, Some(&op))
        .await
        .expect("restock again");
    assert_eq!(
        totals.available, 15,
        "available after the retry, {totals:?}"
    );
    assert_conserved(&rig.totals(&sku).await, 15, "after the retry");
}

/// A move's second half applied again after Redis was rebuilt from the ledger (a mover
/// retrying it, say): the move was settled before the loss, so it must add no unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_in_repeated_after_a_restore_adds_nothing() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 20, 2, 1).await;
    let taken = rig.move_out(&sku, 1, 0, "m1", 4).await;
    assert_eq!(taken, 4);
    rig.move_in(&sku, 1, 0, "m1", taken).await;
    rig.forget_pending_move(&sku, 1, "m1").await;
    rig.drain().await;

    rig.lose_redis_data().await;
    let repaired = rig.repair().await;
    assert_eq!(repaired.repaired, vec!["tv".to_owned()], "{repaired}");
    let again = rig.move_in(&sku, 1, 0, "m1", taken).await;
    let totals = rig.totals(&sku).await;
    assert_conserved(&totals, 20, &format!("after move_in again ({again:?})"));
    assert_eq!(totals.available, 20, "available units, {totals:?}");
}

/// Two engines, one of which still routes by the shard count it cached before a replace:
/// the per-user limit must hold over the whole SKU, whichever engine serves the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_with_a_stale_shard_count_keeps_the_per_user_limit() {
    let rig = Rig::start().await;
    let engine_b = rig.second_store().await;
    let sku = rig.load("tv", 80, 8, 1).await;
    // Both engines have served the SKU, so both route from memory.
    rig.store.config(&sku).await.expect("config via A");
    engine_b.config(&sku).await.expect("config via B");
    load_with(&engine_b, &sku, 80, 4, 1).await;

    let user = user_with_moved_home(8, 4);
    let via_a = rig
        .store
        .reserve(&one_unit(&sku, user.as_str(), "via-a"))
        .await;
    let via_b = engine_b
        .reserve(&one_unit(&sku, user.as_str(), "via-b"))
        .await;

    let mut held = 0;
    for shard in 0..8 {
        held += rig.allowance(&sku, shard, &user).await;
    }
    assert!(
        held <= 1,
        "{user} holds {held} units with a limit of 1 (via A: {via_a:?}, via B: {via_b:?})"
    );
}

/// A user whose home shard differs between `old` and `new` shard counts.
fn user_with_moved_home(old: u16, new: u16) -> UserId {
    (0..1000)
        .map(|n| UserId::new(format!("buyer-{n}")).expect("user"))
        .find(|u| home_shard(u, old) != home_shard(u, new))
        .expect("some user changes home shard")
}

/// How far ahead of the restarted Redis's clock the lost one had written.
const CLOCK_AHEAD_MS: u64 = 10_000;

/// Entries a Redis whose clock ran `CLOCK_AHEAD_MS` ahead could have written and the
/// ledger settled: 4 per millisecond from `from_ms`, each a barrier of a made-up user, so
/// that the only figure they touch is one barrier the repair then writes back.
fn entries_from_a_clock_ahead(sku: &Sku, from_ms: u64) -> Vec<Entry> {
    let user = UserId::new("ghost").expect("user");
    let key = IdempotencyKey::new("clock-ahead").expect("key");
    (from_ms..from_ms + CLOCK_AHEAD_MS)
        .flat_map(|ms| (0..4).map(move |seq| (ms, seq)))
        .map(|(ms, seq)| Entry {
            id: format!("{ms}-{seq}"),
            sku: sku.clone(),
            shard: 0,
            ts_ms: ms,
            events: vec![Event::Barrier {
                user: user.clone(),
                key: key.clone(),
            }],
        })
        .collect()
}

/// After a data loss, a new Redis starts its streams afresh and may hand out stream ids
/// the ledger settled from the old one: a new event must still be settled, not dropped as
/// a duplicate of an old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_ids_reused_after_data_loss_are_not_taken_for_settled_events() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 10, 1, 1).await;
    rig.drain().await;
    let from_ms = rig.store.sync_clock().await.expect("Redis time");
    rig.ledger
        .apply(&entries_from_a_clock_ahead(&sku, from_ms))
        .await
        .expect("settle the old Redis's entries");

    rig.lose_redis_data().await;
    let repaired = rig.repair().await;
    assert_eq!(repaired.repaired, vec!["tv".to_owned()], "{repaired}");
    let reserved = rig
        .store
        .reserve(&one_unit(&sku, "newcomer", "k1"))
        .await
        .expect("reserve after the repair");
    // The premise: the reserve's stream id falls in the range the old Redis used.
    let reserved_at = reserved.reservation.deadline_ms - HOLD.as_millis() as u64;
    assert!(
        reserved_at < from_ms + CLOCK_AHEAD_MS,
        "the test ran too slowly: reserved at {reserved_at}, past the old ids' range"
    );
    rig.drain().await;

    let settled = rig
        .ledger
        .reservations(sku.as_str())
        .await
        .expect("ledger reservations");
    assert!(
        settled
            .iter()
            .any(|r| r.rid == reserved.reservation.id.as_str()),
        "the new reservation {} is not in the ledger: {settled:?}",
        reserved.reservation.id
    );
}

/// A completed move whose pending record the mover never dropped, then Redis lost
/// everything: completing moves after (or during) the repair must not add the units twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completing_moves_after_a_restore_does_not_double_a_move() {
    let rig = Rig::start().await;
    let sku = rig.load("tv", 20, 2, 1).await;
    let taken = rig.move_out(&sku, 1, 0, "m1", 4).await;
    rig.move_in(&sku, 1, 0, "m1", taken).await;
    // The mover crashed before its HDEL: shard 1 still lists m1 as pending.
    rig.drain().await;

    rig.lose_redis_data().await;
    let repaired = rig.repair().await;
    assert_eq!(repaired.repaired, vec!["tv".to_owned()], "{repaired}");
    maintenance::run_once(&rig.store)
        .await
        .expect("maintenance pass");
    assert_stock_whole(&rig, &sku, 20, "after the repair and a maintenance pass").await;

    for round in 0..3 {
        let (report, pass) = tokio::join!(rig.repair(), maintenance::run_once(&rig.store));
        pass.expect("maintenance pass");
        assert!(report.skipped.is_empty(), "{report}");
        assert_stock_whole(&rig, &sku, 20, &format!("concurrent round {round}")).await;
    }
    rig.drain().await;
    assert_eq!(rig.figures(&sku).await.stock, 20, "the ledger's stock");
    assert_no_drift(&rig.audit().await, "at the end");
}

/// Fails unless Redis conserves `stock` units and makes available exactly what is neither
/// held nor sold (nothing is in transit once moves are complete).
async fn assert_stock_whole(rig: &Rig, sku: &Sku, stock: u64, when: &str) {
    let totals = rig.totals(sku).await;
    assert_conserved(&totals, stock, when);
    assert_eq!(
        totals.available,
        stock - totals.held - totals.sold,
        "{when}: available units, {totals:?}"
    );
}
