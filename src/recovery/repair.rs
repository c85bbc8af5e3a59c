//! One SKU through the repair protocol (see the module above): lease, fence, drain, audit,
//! restore, unfence.

use std::collections::BTreeSet;
use std::time::Duration;

use super::audit::{compare, redis_side, settled_by_id, Drift, RedisSide};
use super::{image, RecoveryError};
use crate::events::{Entry, Event};
use crate::ids::{CallerName, HoldOrigin, IdempotencyKey, ReservationId, Sku, UserId};
use crate::ledger::{state_rank, Ledger, LedgerRepo};
use crate::reconcile::Reconciler;
use crate::sharding::home_shard;
use crate::store::{RestoreOutcome, Store};

/// How long a repair holds its lease. Longer than the drain it waits for, so that a repair
/// that is making progress keeps it; a crashed repairer's lease runs out after it.
const LEASE: Duration = Duration::from_secs(60);

/// How long a repair waits for the SKU's streams to be settled under its fence.
const DRAIN_WITHIN: Duration = Duration::from_secs(20);

/// What a repair of one SKU came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuRepair {
    /// Redis equals the ledger.
    Clean,
    /// They differed; Redis was rebuilt from the ledger.
    Repaired(Vec<Drift>),
    /// They differ; not repaired, as asked.
    Found(Vec<Drift>),
    /// Not repaired, for the reason given; the drifts found, if it got that far.
    Skipped {
        /// Differences found.
        drifts: Vec<Drift>,
        /// Why it stopped.
        why: String,
    },
    /// Another repairer holds the SKU's lease: nothing done.
    Busy,
}

/// A repair's outcome and what it compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    /// Reservations compared.
    pub reservations: usize,
    /// What it came to.
    pub result: SkuRepair,
}

impl RepairOutcome {
    fn of(result: SkuRepair) -> Self {
        Self {
            reservations: 0,
            result,
        }
    }
}

/// Takes `sku` through the repair protocol: compares it with the ledger under a fence and,
/// with `repair`, rebuilds it from the ledger if they differ.
pub async fn repair_sku(
    store: &Store,
    ledger: &Ledger,
    reconciler: &Reconciler,
    sku: &Sku,
    repair: bool,
) -> Result<RepairOutcome, RecoveryError> {
    // A retired SKU is never rebuilt: what it left in Redis goes.
    if ledger.retired(sku.as_str()).await?.is_some() {
        if repair {
            let shards = image::shards_in_ledger(ledger, sku).await?;
            if store.purge_retired(sku, shards).await? {
                tracing::warn!(%sku, "deleted what a retired sku left in redis");
            }
        }
        return Ok(RepairOutcome::of(SkuRepair::Clean));
    }
    let Some(owner) = store.take_lease(sku, LEASE).await? else {
        return Ok(RepairOutcome::of(SkuRepair::Busy));
    };
    let outcome = fenced(store, ledger, reconciler, sku, &owner, repair).await;
    if let Err(error) = store.release_lease(sku, &owner).await {
        // It runs out by itself.
        tracing::warn!(%error, %sku, "repair lease not released");
    }
    outcome
}

/// Whether the fences come off when the repair ends.
enum Lift {
    /// Nothing was restored, or every shard was: the SKU may serve.
    Yes,
    /// Some shards may be rebuilt and others not: the SKU stays fenced until a repair
    /// completes.
    No,
}

async fn fenced(
    store: &Store,
    ledger: &Ledger,
    reconciler: &Reconciler,
    sku: &Sku,
    owner: &str,
    repair: bool,
) -> Result<RepairOutcome, RecoveryError> {
    let in_redis = store.reload_config(sku).await?.map_or(0, |c| c.ever_shards);
    let shards = in_redis.max(image::shards_in_ledger(ledger, sku).await?);
    let mut versions = Vec::with_capacity(usize::from(shards));
    for shard in 0..shards {
        match store.fence_shard(sku, shard, owner).await {
            Ok(version) => versions.push(version),
            Err(error) => {
                lift(store, sku, owner, shard).await;
                return Err(error.into());
            }
        }
    }

    let (outcome, verdict) =
        match under_fence(store, ledger, reconciler, sku, owner, &versions, repair).await {
            Ok(done) => done,
            // Failed before any restore is the only case `under_fence` returns an error
            // without a verdict; its restores report their own failures.
            Err(error) => (Err(error), Lift::Yes),
        };
    if matches!(verdict, Lift::Yes) {
        lift(store, sku, owner, shards).await;
    }
    outcome
}

/// Lifts `owner`'s fences from shards `0..shards`; one that stays is a stale fence, which
/// a later repair lifts.
async fn lift(store: &Store, sku: &Sku, owner: &str, shards: u16) {
    for shard in 0..shards {
        if let Err(error) = store.unfence_shard(sku, shard, owner).await {
            tracing::warn!(%error, %sku, shard, "fence not lifted; a later repair lifts it");
        }
    }
}

type Verdict = (Result<RepairOutcome, RecoveryError>, Lift);

async fn under_fence(
    store: &Store,
    ledger: &Ledger,
    reconciler: &Reconciler,
    sku: &Sku,
    owner: &str,
    versions: &[i64],
    repair: bool,
) -> Result<Verdict, RecoveryError> {
    // Batches read from Redis before this point are not applied: they may come from data a
    // restarted Redis lost, which the rebuild must not count (see `Reconciler::settle`).
    ledger.advance_epoch().await?;
    let shards = u16::try_from(versions.len()).unwrap_or(u16::MAX);
    let streams: Vec<String> = (0..shards)
        .map(|shard| store.keys().shard(sku, shard).events)
        .collect();
    if !reconciler.drain_streams(&streams, DRAIN_WITHIN).await? {
        let why = format!("its streams were not settled within {DRAIN_WITHIN:?}");
        return Ok((
            Ok(RepairOutcome::of(SkuRepair::Skipped {
                drifts: Vec::new(),
                why,
            })),
            Lift::Yes,
        ));
    }
    let redis = redis_side(store, sku, shards).await?;
    let ledger_sku = ledger
        .skus()
        .await?
        .into_iter()
        .find(|s| s.sku == sku.as_str());
    let audit = compare(store, ledger, sku, ledger_sku.as_ref(), &redis).await?;
    let done = |result| {
        Ok(RepairOutcome {
            reservations: audit.reservations,
            result,
        })
    };
    if audit.drifts.is_empty() {
        return Ok((done(SkuRepair::Clean), Lift::Yes));
    }
    if !repair {
        return Ok((done(SkuRepair::Found(audit.drifts)), Lift::Yes));
    }
    settle_what_only_redis_has(store, ledger, sku, &redis).await?;
    let image = match image::build(ledger, sku, shards).await? {
        Ok(image) => image,
        Err(why) => {
            let drifts = audit.drifts.clone();
            return Ok((done(SkuRepair::Skipped { drifts, why }), Lift::Yes));
        }
    };
    for (shard, (shard_image, version)) in (0..).zip(image.shards.iter().zip(versions)) {
        let restored = store
            .restore_shard(sku, shard, owner, *version, shard_image)
            .await;
        let why = match restored {
            Ok(RestoreOutcome::Restored) => continue,
            Ok(RestoreOutcome::FenceLost) => "another repairer took the SKU over".to_owned(),
            Ok(RestoreOutcome::Changed) => format!("shard {shard} changed under the fence"),
            Err(error) => return Ok((Err(error.into()), Lift::No)),
        };
        let drifts = audit.drifts.clone();
        return Ok((done(SkuRepair::Skipped { drifts, why }), Lift::No));
    }
    if let Err(error) = store.restore_meta(&image.config).await {
        return Ok((Err(error.into()), Lift::No));
    }
    Ok((done(SkuRepair::Repaired(audit.drifts)), Lift::Yes))
}

/// SKUs with a fenced shard and no repairer: a repair that died after its first restore.
/// They stay refused until a repair completes.
pub async fn stale_fences(store: &Store) -> Result<Vec<Sku>, RecoveryError> {
    let mut stale = Vec::new();
    for sku in store.skus().await? {
        if store.totals(&sku).await?.fenced && !store.lease_held(&sku).await? {
            stale.push(sku);
        }
    }
    Ok(stale)
}

/// Writes into the ledger what only Redis has, or has further along: under the fence and
/// after the drain nothing should be (every change has its event), but an event the
/// reconciler could not read would otherwise be lost to the rebuild.
async fn settle_what_only_redis_has(
    store: &Store,
    ledger: &Ledger,
    sku: &Sku,
    redis: &RedisSide,
) -> Result<(), RecoveryError> {
    let settled = settled_by_id(ledger, sku).await?;
    let barriers: BTreeSet<(String, String)> =
        ledger.barriers(sku.as_str()).await?.into_iter().collect();
    let now = store.redis_now_ms();
    let mut entries = Vec::new();
    for (rid, hold) in &redis.holds {
        let behind = settled.get(rid).map_or(0, |r| state_rank(&r.state));
        if state_rank(hold.state) <= behind {
            continue;
        }
        let (Ok(id), Ok(user), Ok(key)) = (
            ReservationId::parse(rid),
            UserId::new(hold.user.as_str()),
            HoldOrigin::parse(hold.key.as_str()),
        ) else {
            continue;
        };
        let mut events = Vec::new();
        if !settled.contains_key(rid) {
            events.push(Event::Reserved {
                rid: id.clone(),
                user: user.clone(),
                qty: hold.quantity,
                origin: key,
                deadline_ms: hold.deadline_ms,
                caller: hold
                    .caller
                    .as_deref()
                    .and_then(|name| CallerName::new(name).ok()),
            });
        }
        let (rid, qty) = (id, hold.quantity);
        match hold.state {
            "confirmed" => events.push(Event::Confirmed {
                rid,
                user,
                qty,
                late: false,
            }),
            "cancelled" => events.push(Event::Cancelled { rid, user, qty }),
            "expired" => events.push(Event::Expired { rid, user, qty }),
            _ => {}
        }
        entries.push((hold.shard, events));
    }
    let shards = redis.config.as_ref().map_or(1, |c| c.shards);
    for (user, key) in redis.barriers.difference(&barriers) {
        if let (Ok(user), Ok(key)) = (
            UserId::new(user.as_str()),
            IdempotencyKey::new(key.as_str()),
        ) {
            let shard = home_shard(&user, shards);
            entries.push((shard, vec![Event::Barrier { user, key }]));
        }
    }
    // Repair entries sit far above any real stream sequence number at this millisecond,
    // so their ledger keys cannot collide with a real entry's.
    let repair_entries: Vec<Entry> = entries
        .into_iter()
        .enumerate()
        .map(|(n, (shard, events))| Entry {
            id: format!("{now}-{}", 1_000_000_000 + n),
            sku: sku.clone(),
            shard,
            ts_ms: now,
            events,
        })
        .collect();
    if !repair_entries.is_empty() {
        ledger.apply(&repair_entries).await?;
    }
    Ok(())
}
