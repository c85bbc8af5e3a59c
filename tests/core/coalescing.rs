//! Reserves of one SKU coalesce into few script calls while Redis is busy.

use flashsale::sharding::home_shard;
use flashsale_testkit::LocalRedisOptions;

use crate::support::*;

/// `users[s]` holds `per_shard` user names whose home shard is `s`.
fn users_by_shard(shards: u16, per_shard: usize) -> Vec<Vec<String>> {
    let mut users = vec![Vec::new(); usize::from(shards)];
    let mut n = 0u32;
    while users.iter().any(|u| u.len() < per_shard) {
        let name = format!("u{n}");
        let home = &mut users[usize::from(home_shard(&user(&name), shards))];
        if home.len() < per_shard {
            home.push(name);
        }
        n += 1;
    }
    users
}

/// A single Redis runs one script at a time, so reserve calls of many shards queued in it
/// buy nothing and each costs Redis its fixed part. While two are in flight, the other
/// shards' reserves wait in the engine and go together. Redis is paused for writes while a
/// first wave (one reserve per shard) is sent and a second wave queues behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_busy_the_shards_reserves_wait_and_go_together() {
    const SHARDS: u16 = 8;
    const SECOND_WAVE: usize = 6;
    let h = Harness::start_single_with(LocalRedisOptions::default()).await;
    let Servers::Single(redis) = &h.redis else {
        unreachable!("a single Redis was asked for")
    };
    let tv = h.sku("tv", spec(10_000, SHARDS, 1, 600_000)).await;
    let users = users_by_shard(SHARDS, 2 + SECOND_WAVE);
    // The script is loaded and every shard's queue is open before the count starts.
    for shard_users in &users {
        h.store
            .reserve(&request(&tv, &shard_users[0], 1, "warm"))
            .await
            .expect("warm-up reserve");
    }
    let (_, calls_before) = redis.script_stats();

    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "600", "WRITE"]).unwrap(),
        "+OK"
    );
    let reserve = |who: &String| {
        let (store, tv, who) = (h.store.clone(), tv.clone(), who.clone());
        tokio::spawn(async move { store.reserve(&request(&tv, &who, 1, "k")).await })
    };
    let mut waves: Vec<_> = users.iter().map(|u| reserve(&u[1])).collect();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    waves.extend(users.iter().flat_map(|u| u[2..].iter().map(reserve)));
    for reserved in waves {
        reserved.await.unwrap().expect("every reserve holds");
    }

    let (_, calls_after) = redis.script_stats();
    let calls = calls_after - calls_before;
    let limit = 2 + u64::from(SHARDS);
    assert!(
        calls <= limit,
        "{calls} script calls for {} reserves over {SHARDS} shards: at most two in flight, then \
         one per shard, make {limit}",
        users.len() * (1 + SECOND_WAVE)
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!(t.held, u64::from(SHARDS) * (2 + SECOND_WAVE as u64));
    assert!(t.conserved());
}

/// A dropped connection may be a Redis that restarted and lost writes, so the store turns
/// suspect and nothing may be reserved on the Redis answering after it until it is checked.
/// Reserves already queued for their turn when the connection dropped were admitted before
/// it; they are refused too, rather than sent on the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserves_queued_when_the_connection_drops_are_not_sent_on_the_next_one() {
    const SHARDS: u16 = 8;
    let h = Harness::start_single_with(LocalRedisOptions::default()).await;
    let Servers::Single(redis) = &h.redis else {
        unreachable!("a single Redis was asked for")
    };
    let tv = h.sku("tv", spec(10_000, SHARDS, 1, 600_000)).await;
    let users = users_by_shard(SHARDS, 2);
    for shard_users in &users {
        h.store
            .reserve(&request(&tv, &shard_users[0], 1, "warm"))
            .await
            .expect("warm-up reserve");
    }

    // Two calls wait in the paused Redis, the other shards' reserves for their turn; then
    // the store's connection is dropped, and Redis answers again shortly after.
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "700", "WRITE"]).unwrap(),
        "+OK"
    );
    let queued: Vec<_> = users
        .iter()
        .map(|u| {
            let (store, tv, who) = (h.store.clone(), tv.clone(), u[1].clone());
            tokio::spawn(async move { store.reserve(&request(&tv, &who, 1, "k")).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert_ne!(killed, ":0", "the store's connection was dropped");
    let mut held_after_the_drop = Vec::new();
    for (reserve, shard_users) in queued.into_iter().zip(&users) {
        if reserve.await.unwrap().is_ok() {
            held_after_the_drop.push(shard_users[1].clone());
        }
    }
    assert!(
        h.store.redis_suspect(),
        "a dropped connection makes the store suspect"
    );
    assert!(
        held_after_the_drop.is_empty(),
        "reserved on the Redis answering after the drop, before it was checked: {held_after_the_drop:?}"
    );
    let t = h.store.totals(&tv).await.unwrap();
    assert_eq!(t.held, u64::from(SHARDS), "only the warm-up holds");
}
