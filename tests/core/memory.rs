//! What a reservation leaves in Redis: measured with `MEMORY USAGE` (every element counted,
//! `SAMPLES 0`) of its shard's hash and deadline index before and after many reservations,
//! with the ids the load harness uses (`user-<n>`, `order-<n>`).

use flashsale::ids::CallerName;
use flashsale::store::Store;
use flashsale_testkit::LocalRedisOptions;

use crate::support::{request, spec, Harness};

/// What one reservation may leave in its shard for as long as the SKU lives.
const BYTES_PER_RESERVATION: u64 = 250;

/// Reservations measured, after enough to make the shard hash a hash table (a small hash
/// is packed and costs less per field: the figure is the sale's, not a toy's).
const MEASURED: u64 = 4_000;
const WARM_UP: u64 = 500;

fn memory_usage(h: &mut Harness, key: &str) -> u64 {
    let answer = h
        .redis
        .single()
        .command(&["MEMORY", "USAGE", key, "SAMPLES", "0"])
        .expect("MEMORY USAGE");
    integer(&answer)
}

/// An integer reply (`:<n>`, as the testkit's RESP client shows it); nil (a key that does
/// not exist) is 0.
fn integer(answer: &str) -> u64 {
    let digits = answer.trim().trim_start_matches(':');
    if digits.starts_with("$-1") || digits.starts_with("_") || digits.is_empty() {
        return 0;
    }
    digits
        .parse()
        .unwrap_or_else(|_| panic!("not an integer: {answer:?}"))
}

/// Bytes of the shard's hash and deadline index.
fn shard_bytes(h: &mut Harness, sku: &flashsale::ids::Sku) -> u64 {
    let keys = h.store.keys().shard(sku, 0);
    memory_usage(h, &keys.hash) + memory_usage(h, &keys.deadlines)
}

/// Reserves users `from..to` one unit each, then confirms them when asked.
async fn reserve(
    store: &Store,
    sku: &flashsale::ids::Sku,
    users: std::ops::Range<u64>,
    caller: Option<&CallerName>,
    confirm: bool,
) {
    for n in users {
        let mut ask = request(sku, &format!("user-{n}"), 1, &format!("order-{n}"));
        ask.caller = caller.cloned();
        let made = store.reserve(&ask).await.expect("reserve");
        if confirm {
            store
                .confirm(&made.reservation.id, caller)
                .await
                .expect("confirm");
        }
    }
}

struct Figures {
    held: u64,
    confirmed: u64,
}

async fn measure(caller: Option<CallerName>) -> Figures {
    let mut h = Harness::start_single_with(LocalRedisOptions::default()).await;
    let stock = 2 * (WARM_UP + MEASURED);
    let held_sku = h.sku("held", spec(stock, 1, 1, 600_000)).await;
    let sold_sku = h.sku("sold", spec(stock, 1, 1, 600_000)).await;
    for (sku, confirm) in [(&held_sku, false), (&sold_sku, true)] {
        reserve(&h.store, sku, 0..WARM_UP, caller.as_ref(), confirm).await;
    }
    let before = (
        shard_bytes(&mut h, &held_sku),
        shard_bytes(&mut h, &sold_sku),
    );
    for (sku, confirm) in [(&held_sku, false), (&sold_sku, true)] {
        let users = WARM_UP..WARM_UP + MEASURED;
        reserve(&h.store, sku, users, caller.as_ref(), confirm).await;
    }
    let after = (
        shard_bytes(&mut h, &held_sku),
        shard_bytes(&mut h, &sold_sku),
    );
    // A confirmed hold leaves the deadline index: nothing of it waits for its deadline.
    let deadlines = h.store.keys().shard(&sold_sku, 0).deadlines;
    let left = h.redis.single().command(&["ZCARD", &deadlines]).unwrap();
    assert_eq!(
        integer(&left),
        0,
        "confirmed holds left in the deadline index"
    );
    Figures {
        held: (after.0 - before.0) / MEASURED,
        confirmed: (after.1 - before.1) / MEASURED,
    }
}

#[tokio::test]
async fn a_reservation_leaves_at_most_250_bytes_in_redis() {
    let anonymous = measure(None).await;
    let named = measure(Some(CallerName::new("shop").unwrap())).await;
    println!(
        "bytes per reservation: held {} (with its deadline entry), confirmed {}; \
         made by a named caller: held {}, confirmed {}",
        anonymous.held, anonymous.confirmed, named.held, named.confirmed
    );
    assert!(
        anonymous.confirmed <= BYTES_PER_RESERVATION,
        "a confirmed reservation costs {} bytes",
        anonymous.confirmed
    );
    assert!(
        anonymous.held >= anonymous.confirmed,
        "a held reservation has its deadline entry too"
    );
}

#[tokio::test]
async fn a_user_records_a_bounded_number_of_keys_in_a_sku() {
    let h = Harness::start().await;
    let sku = h.sku("bounded", spec(100, 1, 1, 600_000)).await;
    let max = flashsale::store::MAX_KEYS_PER_USER;
    // Reserves and cancels by key, one key each, up to the bound: each leaves its key.
    for n in 0..max {
        if n % 2 == 0 {
            let made = h
                .store
                .reserve(&request(&sku, "ann", 1, &format!("k-{n}")))
                .await
                .expect("reserve");
            h.store
                .cancel(&made.reservation.id, None)
                .await
                .expect("cancel");
        } else {
            let key = flashsale::ids::IdempotencyKey::new(format!("k-{n}")).unwrap();
            let user = flashsale::ids::UserId::new("ann").unwrap();
            h.store
                .cancel_by_key(&sku, &user, &key, None)
                .await
                .expect("barrier");
        }
    }
    let refused = h
        .store
        .reserve(&request(&sku, "ann", 1, "one-more"))
        .await
        .expect_err("a key past the bound");
    assert_eq!(refused.code(), "too_many_keys");
    let barrier = h
        .store
        .cancel_by_key(
            &sku,
            &flashsale::ids::UserId::new("ann").unwrap(),
            &flashsale::ids::IdempotencyKey::new("one-more").unwrap(),
            None,
        )
        .await
        .expect_err("a barrier past the bound");
    assert_eq!(barrier.code(), "too_many_keys");
    // The keys recorded still answer as before, and another user is not affected.
    let again = h
        .store
        .reserve(&request(&sku, "ann", 1, "k-0"))
        .await
        .expect_err("a cancelled reservation's key");
    assert_eq!(again.code(), "reservation_cancelled");
    h.store
        .reserve(&request(&sku, "bob", 1, "one-more"))
        .await
        .expect("another user's first key");
}
