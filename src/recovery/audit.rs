//! The audit: compares Redis with the ledger, SKU by SKU and reservation by reservation,
//! reports each drift by kind, and on request has it repaired (see [`super::repair`]:
//! fenced, drained, then rebuilt from the ledger).
//!
//! Compared while the sale goes on (no repair), the figures of a SKU that is selling move
//! between the two reads; a repair compares under its fence, where nothing moves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use super::repair::{repair_sku, SkuRepair};
use super::RecoveryError;
use crate::ids::Sku;
use crate::ledger::{Ledger, LedgerRepo, LedgerReservation, LedgerSku};
use crate::reconcile::Reconciler;
use crate::store::{HoldRecord, KeyEntry, SkuConfig, Store};

/// How long an audit waits for the streams to be settled first.
const DRAIN_WITHIN: Duration = Duration::from_secs(60);

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    /// The ledger knows the SKU, Redis does not (Redis lost it).
    SkuMissingInRedis,
    /// Redis knows the SKU, the ledger does not (its load is not settled).
    SkuMissingInLedger,
    /// The ledger has the reservation, Redis does not.
    ReservationMissingInRedis,
    /// Redis has the reservation, the ledger does not.
    ReservationMissingInLedger,
    /// Both have it, in different states or with different units.
    StateMismatch,
    /// The ledger has the barrier, Redis does not.
    BarrierMissingInRedis,
    /// Redis has the barrier, the ledger does not.
    BarrierMissingInLedger,
    /// Units (stock, available, held, sold) differ.
    TotalsMismatch,
    /// The ledger has a cart (not rolled back), Redis has no record of it.
    CartMissingInRedis,
}

impl DriftKind {
    /// Every kind.
    pub const ALL: [DriftKind; 9] = [
        Self::SkuMissingInRedis,
        Self::SkuMissingInLedger,
        Self::ReservationMissingInRedis,
        Self::ReservationMissingInLedger,
        Self::StateMismatch,
        Self::BarrierMissingInRedis,
        Self::BarrierMissingInLedger,
        Self::TotalsMismatch,
        Self::CartMissingInRedis,
    ];

    /// The kind's name in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SkuMissingInRedis => "sku_missing_in_redis",
            Self::SkuMissingInLedger => "sku_missing_in_ledger",
            Self::ReservationMissingInRedis => "reservation_missing_in_redis",
            Self::ReservationMissingInLedger => "reservation_missing_in_ledger",
            Self::StateMismatch => "state_mismatch",
            Self::BarrierMissingInRedis => "barrier_missing_in_redis",
            Self::BarrierMissingInLedger => "barrier_missing_in_ledger",
            Self::TotalsMismatch => "totals_mismatch",
            Self::CartMissingInRedis => "cart_missing_in_redis",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The SKU.
    pub sku: String,
    /// What kind.
    pub kind: DriftKind,
    /// What it concerns: a reservation id, a `user:key`, a figure.
    pub subject: String,
    /// Redis's side and the ledger's.
    pub detail: String,
}

impl Drift {
    fn new(sku: &str, kind: DriftKind, subject: &str, detail: String) -> Self {
        Self {
            sku: sku.to_owned(),
            kind,
            subject: subject.to_owned(),
            detail,
        }
    }
}

/// A SKU's reservations in the ledger, by id.
pub(super) async fn settled_by_id(
    ledger: &Ledger,
    sku: &Sku,
) -> Result<HashMap<String, LedgerReservation>, RecoveryError> {
    Ok(ledger
        .reservations(sku.as_str())
        .await?
        .into_iter()
        .map(|r| (r.rid.clone(), r))
        .collect())
}

/// What an audit found and did.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// SKUs compared.
    pub skus: usize,
    /// Reservations compared.
    pub reservations: usize,
    /// Differences found (before any repair).
    pub drifts: Vec<Drift>,
    /// SKUs repaired.
    pub repaired: Vec<String>,
    /// SKUs not repaired, and why.
    pub skipped: Vec<(String, String)>,
    /// SKUs another repairer held the lease of: not looked at.
    pub busy: Vec<String>,
}

impl AuditReport {
    /// Drifts counted by kind.
    pub fn by_kind(&self) -> BTreeMap<DriftKind, usize> {
        let mut counts = BTreeMap::new();
        for drift in &self.drifts {
            *counts.entry(drift.kind).or_default() += 1;
        }
        counts
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "audit: {} skus, {} reservations, {} drifts",
            self.skus,
            self.reservations,
            self.drifts.len()
        )?;
        for (kind, count) in self.by_kind() {
            writeln!(f, "  {:<30} {count}", kind.as_str())?;
        }
        for drift in self.drifts.iter().take(50) {
            writeln!(
                f,
                "  {} {} {}: {}",
                drift.sku,
                drift.kind.as_str(),
                drift.subject,
                drift.detail
            )?;
        }
        if self.drifts.len() > 50 {
            writeln!(f, "  ... {} more", self.drifts.len() - 50)?;
        }
        for sku in &self.repaired {
            writeln!(f, "repaired {sku}: rebuilt in Redis from the ledger")?;
        }
        for (sku, why) in &self.skipped {
            writeln!(f, "not repaired {sku}: {why}")?;
        }
        for sku in &self.busy {
            writeln!(f, "not audited {sku}: another repair holds it")?;
        }
        Ok(())
    }
}

/// The hold record's letter for a state name (see `lua/prelude.lua`).
pub(super) fn state_letter(name: &str) -> &'static str {
    match name {
        "held" => "h",
        "confirmed" => "c",
        "cancelled" => "x",
        _ => "e",
    }
}

fn state_name(letter: &str) -> &'static str {
    match letter {
        "h" => "held",
        "c" => "confirmed",
        "x" => "cancelled",
        "e" => "expired",
        _ => "unknown",
    }
}

/// A hold record from Redis, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RedisHold {
    pub shard: u16,
    pub state: &'static str,
    pub user: String,
    pub quantity: u32,
    pub deadline_ms: u64,
    /// What made it: the idempotency key, or `#<cart id>`.
    pub key: String,
    pub caller: Option<String>,
}

/// A hold record as the audit compares it; `None` for what is not a reservation: the
/// tombstone of a cart's line that was released before it was taken (no units, no event:
/// it is there only to refuse a take arriving late, see `lua/cart_line.lua`).
fn redis_hold(shard: u16, hold: &HoldRecord, origin: &str) -> Option<RedisHold> {
    let hold = RedisHold {
        shard,
        state: state_name(&hold.state),
        user: hold.user.clone(),
        quantity: u32::try_from(hold.quantity).ok()?,
        deadline_ms: hold.deadline_ms,
        key: origin.to_owned(),
        caller: hold.caller.clone(),
    };
    (hold.quantity > 0).then_some(hold)
}

/// What Redis holds of a SKU.
pub(super) struct RedisSide {
    pub config: Option<std::sync::Arc<SkuConfig>>,
    pub holds: HashMap<String, RedisHold>,
    pub barriers: BTreeSet<(String, String)>,
}

/// Reads what Redis holds of a SKU, over `shards` shards (at least every shard its routing
/// record names).
pub(super) async fn redis_side(
    store: &Store,
    sku: &Sku,
    shards: u16,
) -> Result<RedisSide, RecoveryError> {
    let config = store.reload_config(sku).await?;
    let mut side = RedisSide {
        config: config.clone(),
        holds: HashMap::new(),
        barriers: BTreeSet::new(),
    };
    let shards = shards.max(config.map_or(0, |c| c.ever_shards));
    for shard in 0..shards {
        let snapshot = store.shard_snapshot(sku, shard).await?;
        for (rid, hold, origin) in &snapshot.holds {
            if let Some(hold) = redis_hold(shard, hold, origin) {
                side.holds.insert(rid.clone(), hold);
            }
        }
        for (user, record) in &snapshot.users {
            for (key, entry) in &record.keys {
                if *entry == KeyEntry::Barrier {
                    side.barriers.insert((user.clone(), key.clone()));
                }
            }
        }
    }
    Ok(side)
}

/// Audits every SKU either side knows. A `reconciler` settles what the streams hold first
/// (without one, lagging events show as drift). With `repair`, each SKU goes through the
/// repair protocol instead ([`repair_sku`]: fenced, drained, compared, and rebuilt from the
/// ledger if it drifted), with `reconciler` or one of its own for the drain.
pub async fn run(
    store: &Store,
    ledger: &Ledger,
    reconciler: Option<&Reconciler>,
    repair: bool,
) -> Result<AuditReport, RecoveryError> {
    if repair {
        // Before the SKUs are listed: a batch in flight from data Redis lost must not bring
        // a SKU into the ledger after this audit passed it by.
        ledger.advance_epoch().await?;
    }
    let ledger_skus: HashMap<String, LedgerSku> = ledger
        .skus()
        .await?
        .into_iter()
        .map(|s| (s.sku.clone(), s))
        .collect();
    let mut names: BTreeSet<String> = ledger_skus.keys().cloned().collect();
    names.extend(store.skus().await?.iter().map(|s| s.to_string()));
    // A retired SKU is the ledger's alone: never compared, never rebuilt (a repair deletes
    // what it left in Redis, see `repair_sku`).
    let retired = ledger.retired_skus().await?;

    let mut report = AuditReport::default();
    if repair {
        let own;
        let reconciler = match reconciler {
            Some(reconciler) => reconciler,
            None => {
                own = Reconciler::for_store(store, ledger);
                &own
            }
        };
        for name in names {
            let Ok(sku) = Sku::new(name.as_str()) else {
                continue;
            };
            report.skus += 1;
            let outcome = repair_sku(store, ledger, reconciler, &sku, true).await?;
            report.reservations += outcome.reservations;
            match outcome.result {
                SkuRepair::Clean => {}
                SkuRepair::Repaired(drifts) => {
                    report.drifts.extend(drifts);
                    report.repaired.push(name);
                }
                SkuRepair::Found(drifts) => report.drifts.extend(drifts),
                SkuRepair::Skipped { drifts, why } => {
                    report.drifts.extend(drifts);
                    report.skipped.push((name, why));
                }
                SkuRepair::Busy => report.busy.push(name),
            }
        }
        // Every SKU's holds are back: now the records of the carts they are lines of.
        report.drifts.extend(missing_carts(store, ledger).await?);
        if report.busy.is_empty() {
            super::carts::restore_carts(store, ledger).await?;
        }
        return Ok(report);
    }
    if let Some(reconciler) = reconciler {
        reconciler.drain(DRAIN_WITHIN).await?;
    }
    for name in names {
        let Ok(sku) = Sku::new(name.as_str()) else {
            continue;
        };
        if retired.contains(&name) {
            continue;
        }
        report.skus += 1;
        let redis = redis_side(store, &sku, 0).await?;
        let audit = compare(store, ledger, &sku, ledger_skus.get(&name), &redis).await?;
        report.reservations += audit.reservations;
        report.drifts.extend(audit.drifts);
    }
    report.drifts.extend(missing_carts(store, ledger).await?);
    Ok(report)
}

/// The carts the ledger has and Redis has no record of (a cart rolled back leaves nothing
/// to look for: its key is free again).
async fn missing_carts(store: &Store, ledger: &Ledger) -> Result<Vec<Drift>, RecoveryError> {
    let mut drifts = Vec::new();
    for cart in ledger.carts().await? {
        let Some(state) = super::carts::state_from_ledger(&cart) else {
            continue;
        };
        let Ok(id) = crate::ids::CartId::parse(&cart.cart_id) else {
            continue;
        };
        if store.cart_recorded(&id).await? {
            continue;
        }
        let sku = cart.settled.first().map_or("", |line| line.sku.as_str());
        drifts.push(Drift::new(
            sku,
            DriftKind::CartMissingInRedis,
            &cart.cart_id,
            format!("redis: none; ledger: {}", state.as_str()),
        ));
    }
    Ok(drifts)
}

/// What comparing one SKU found.
pub(super) struct SkuAudit {
    /// Differences.
    pub drifts: Vec<Drift>,
    /// Reservations compared.
    pub reservations: usize,
}

/// Compares one SKU's two sides.
pub(super) async fn compare(
    store: &Store,
    ledger: &Ledger,
    sku: &Sku,
    ledger_sku: Option<&LedgerSku>,
    redis: &RedisSide,
) -> Result<SkuAudit, RecoveryError> {
    let name = sku.to_string();
    let drift = |kind, subject: &str, detail: String| Drift::new(&name, kind, subject, detail);
    let mut drifts = Vec::new();
    match (ledger_sku.is_some(), redis.config.is_some()) {
        (true, false) => drifts.push(drift(
            DriftKind::SkuMissingInRedis,
            "sku",
            "redis: none".into(),
        )),
        (false, true) => drifts.push(drift(
            DriftKind::SkuMissingInLedger,
            "sku",
            "ledger: none".into(),
        )),
        _ => {}
    }
    let settled = settled_by_id(ledger, sku).await?;
    let reservations = settled.len().max(redis.holds.len());
    for (rid, mine) in &settled {
        match redis.holds.get(rid) {
            None => drifts.push(drift(
                DriftKind::ReservationMissingInRedis,
                rid,
                format!("ledger: {} x{}", mine.state, mine.quantity),
            )),
            Some(theirs)
                if theirs.state != mine.state
                    || theirs.quantity != mine.quantity
                    || theirs.user != mine.user =>
            {
                drifts.push(drift(
                    DriftKind::StateMismatch,
                    rid,
                    format!(
                        "redis: {} x{} for {}, ledger: {} x{} for {}",
                        theirs.state,
                        theirs.quantity,
                        theirs.user,
                        mine.state,
                        mine.quantity,
                        mine.user
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    for (rid, theirs) in &redis.holds {
        if !settled.contains_key(rid) {
            drifts.push(drift(
                DriftKind::ReservationMissingInLedger,
                rid,
                format!("redis: {} x{}", theirs.state, theirs.quantity),
            ));
        }
    }
    let barriers: BTreeSet<(String, String)> =
        ledger.barriers(sku.as_str()).await?.into_iter().collect();
    for (user, key) in barriers.difference(&redis.barriers) {
        drifts.push(drift(
            DriftKind::BarrierMissingInRedis,
            &format!("{user}:{key}"),
            String::new(),
        ));
    }
    for (user, key) in redis.barriers.difference(&barriers) {
        drifts.push(drift(
            DriftKind::BarrierMissingInLedger,
            &format!("{user}:{key}"),
            String::new(),
        ));
    }
    if redis.config.is_some() && ledger_sku.is_some() {
        let figures = ledger.figures(sku.as_str()).await?;
        let totals = store.totals(sku).await?;
        let pairs = [
            ("stock", totals.loaded + totals.restocked, figures.stock),
            ("available", totals.available, figures.available()),
            ("in_transit", totals.in_transit, figures.in_transit),
            ("held", totals.held, figures.held),
            ("sold", totals.sold, figures.sold),
        ];
        for (what, in_redis, in_ledger) in pairs {
            if in_redis != in_ledger {
                drifts.push(drift(
                    DriftKind::TotalsMismatch,
                    what,
                    format!("redis: {in_redis}, ledger: {in_ledger}"),
                ));
            }
        }
    }
    Ok(SkuAudit {
        drifts,
        reservations,
    })
}

/// A cheap check for serve to run often, sound while the ledger lags: the ledger only ever
/// trails Redis, so a SKU Redis lost, or fewer units sold or put on sale in Redis than the
/// ledger settled, can only mean Redis lost data.
pub async fn quick_check(store: &Store, ledger: &Ledger) -> Result<Vec<Drift>, RecoveryError> {
    let mut drifts = Vec::new();
    let retired = ledger.retired_skus().await?;
    for sku_rules in ledger.skus().await? {
        let Ok(sku) = Sku::new(sku_rules.sku.as_str()) else {
            continue;
        };
        // Retired: gone from Redis by design.
        if retired.contains(&sku_rules.sku) {
            continue;
        }
        let drift =
            |kind, subject: &str, detail: String| Drift::new(&sku_rules.sku, kind, subject, detail);
        if store.reload_config(&sku).await?.is_none() {
            drifts.push(drift(
                DriftKind::SkuMissingInRedis,
                "sku",
                "redis: none".into(),
            ));
            continue;
        }
        let figures = ledger.figures(sku.as_str()).await?;
        let totals = store.totals(&sku).await?;
        if totals.sold < figures.sold {
            drifts.push(drift(
                DriftKind::TotalsMismatch,
                "sold",
                format!("redis: {}, ledger: {}", totals.sold, figures.sold),
            ));
        }
        if totals.loaded + totals.restocked < figures.stock {
            drifts.push(drift(
                DriftKind::TotalsMismatch,
                "stock",
                format!(
                    "redis: {}, ledger: {}",
                    totals.loaded + totals.restocked,
                    figures.stock
                ),
            ));
        }
    }
    Ok(drifts)
}
