//! The audit: compares Redis with the ledger, SKU by SKU and reservation by reservation,
//! reports each drift by kind, and on request repairs it.
//!
//! Repair trusts the ledger for everything it has settled (it is the record of confirmed
//! sales) and Redis for what only Redis still knows: first whatever the streams still hold
//! is settled; then reservations and barriers that only Redis has (or that Redis has
//! further along) are written to the ledger; then every shard of the drifting SKU is
//! rebuilt from the ledger (`lua/restore_shard.lua`), its available units being exactly what
//! the ledger says is neither held nor sold. No confirmed sale is lost and no unit can be
//! sold twice afterwards. What Redis acknowledged and lost before its stream entry was
//! settled is lost to both (see RELIABILITY.md for the window).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use crate::events::{Entry, Event};
use crate::ids::{IdempotencyKey, ReservationId, Sku, UserId};
use crate::ledger::{state_rank, Ledger, LedgerError, LedgerRepo, LedgerReservation, LedgerSku};
use crate::reconcile::{ReconcileError, Reconciler};
use crate::sharding::{home_shard, split};
use crate::store::{ShardImage, ShardSnapshot, SkuConfig, Store, StoreError};

/// How long a repair waits for the streams to be settled first.
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
}

impl DriftKind {
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
async fn settled_by_id(
    ledger: &Ledger,
    sku: &Sku,
) -> Result<HashMap<String, LedgerReservation>, AuditError> {
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
        Ok(())
    }
}

/// Why an audit failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Settling the streams failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// The hold record's letter for a state name (see `lua/prelude.lua`).
fn state_letter(name: &str) -> &'static str {
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
struct RedisHold {
    shard: u16,
    state: &'static str,
    user: String,
    quantity: u32,
    deadline_ms: u64,
    key: String,
}

fn parse_hold(shard: u16, packed: &str) -> Option<RedisHold> {
    let mut parts = packed.splitn(5, '|');
    let state = state_name(parts.next()?);
    Some(RedisHold {
        shard,
        state,
        user: parts.next()?.to_owned(),
        quantity: parts.next()?.parse().ok()?,
        deadline_ms: parts.next()?.parse().ok()?,
        key: parts.next()?.to_owned(),
    })
}

/// What Redis holds of a SKU.
struct RedisSide {
    config: Option<std::sync::Arc<SkuConfig>>,
    snapshots: Vec<ShardSnapshot>,
    holds: HashMap<String, RedisHold>,
    barriers: BTreeSet<(String, String)>,
}

async fn redis_side(store: &Store, sku: &Sku) -> Result<RedisSide, AuditError> {
    let config = store.reload_config(sku).await?;
    let mut side = RedisSide {
        config: config.clone(),
        snapshots: Vec::new(),
        holds: HashMap::new(),
        barriers: BTreeSet::new(),
    };
    let Some(config) = config else {
        return Ok(side);
    };
    for shard in 0..config.shards {
        let snapshot = store.shard_snapshot(sku, shard).await?;
        for (rid, packed) in &snapshot.holds {
            if let Some(hold) = parse_hold(shard, packed) {
                side.holds.insert(rid.clone(), hold);
            }
        }
        for (field, value) in &snapshot.keys {
            if value == "!" {
                if let Some((user, key)) = field.split_once(':') {
                    side.barriers.insert((user.to_owned(), key.to_owned()));
                }
            }
        }
        side.snapshots.push(snapshot);
    }
    Ok(side)
}

/// Audits every SKU either side knows. With `repair`, drifting SKUs are repaired; a
/// `reconciler` settles what the streams hold first (without one, lagging events show as
/// drift).
pub async fn run(
    store: &Store,
    ledger: &Ledger,
    reconciler: Option<&Reconciler>,
    repair: bool,
) -> Result<AuditReport, AuditError> {
    if let Some(reconciler) = reconciler {
        reconciler.drain(DRAIN_WITHIN).await?;
    }
    let ledger_skus: HashMap<String, LedgerSku> = ledger
        .skus()
        .await?
        .into_iter()
        .map(|s| (s.sku.clone(), s))
        .collect();
    let mut names: BTreeSet<String> = ledger_skus.keys().cloned().collect();
    names.extend(store.skus().await?.iter().map(|s| s.to_string()));

    let mut report = AuditReport::default();
    for name in names {
        let Ok(sku) = Sku::new(name.as_str()) else {
            continue;
        };
        report.skus += 1;
        let redis = redis_side(store, &sku).await?;
        let drifts = compare(
            store,
            ledger,
            &sku,
            ledger_skus.get(&name),
            &redis,
            &mut report,
        )
        .await?;
        if drifts.is_empty() {
            continue;
        }
        report.drifts.extend(drifts);
        if !repair {
            continue;
        }
        match repair_sku(store, ledger, &sku, &redis).await? {
            Ok(()) => report.repaired.push(name),
            Err(why) => report.skipped.push((name, why)),
        }
    }
    Ok(report)
}

async fn compare(
    store: &Store,
    ledger: &Ledger,
    sku: &Sku,
    ledger_sku: Option<&LedgerSku>,
    redis: &RedisSide,
    report: &mut AuditReport,
) -> Result<Vec<Drift>, AuditError> {
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
    report.reservations += settled.len().max(redis.holds.len());
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
            (
                "available",
                totals.available + totals.in_transit,
                figures.available() + figures.in_transit,
            ),
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
    Ok(drifts)
}

/// Writes what only Redis knows into the ledger, then rebuilds the SKU in Redis from the
/// ledger. `Err(why)` when it cannot (nothing to rebuild from, or the SKU kept changing).
async fn repair_sku(
    store: &Store,
    ledger: &Ledger,
    sku: &Sku,
    redis: &RedisSide,
) -> Result<Result<(), String>, AuditError> {
    // 1. What only Redis has, or has further along, goes to the ledger as repair events.
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
            IdempotencyKey::new(hold.key.as_str()),
        ) else {
            continue;
        };
        let mut events = Vec::new();
        if !settled.contains_key(rid) {
            events.push(Event::Reserved {
                rid: id.clone(),
                user: user.clone(),
                qty: hold.quantity,
                key,
                deadline_ms: hold.deadline_ms,
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

    // 2. Rebuild every shard from the ledger.
    let Some(rules) = ledger
        .skus()
        .await?
        .into_iter()
        .find(|s| s.sku == sku.as_str())
    else {
        return Ok(Err(
            "the ledger has no load of this SKU to rebuild from".into()
        ));
    };
    let reservations = ledger.reservations(sku.as_str()).await?;
    let barriers = ledger.barriers(sku.as_str()).await?;
    let figures = ledger.figures(sku.as_str()).await?;
    let mut images: Vec<ShardImage> = (0..rules.shards)
        .map(|_| ShardImage {
            rules: (
                rules.per_user_limit,
                rules.hold_ms,
                rules.starts_at_ms,
                rules.ends_at_ms,
                rules.shards,
            ),
            ..ShardImage::default()
        })
        .collect();
    let mut allowances: Vec<BTreeMap<String, u64>> =
        vec![BTreeMap::new(); usize::from(rules.shards)];
    for r in &reservations {
        let Some(image) = images.get_mut(usize::from(r.shard)) else {
            return Ok(Err(format!(
                "reservation {} names shard {} of {}",
                r.rid, r.shard, rules.shards
            )));
        };
        let letter = state_letter(&r.state);
        let quantity = u64::from(r.quantity);
        match letter {
            "h" => image.units.1 += quantity,
            "c" => image.units.2 += quantity,
            _ => {}
        }
        if matches!(letter, "h" | "c") {
            *allowances[usize::from(r.shard)]
                .entry(r.user.clone())
                .or_default() += quantity;
        }
        let key = r.key.clone().unwrap_or_default();
        image.fields.push((
            r.rid.clone(),
            format!(
                "{letter}|{}|{}|{}|{key}",
                r.user,
                r.quantity,
                r.deadline_ms.unwrap_or(0)
            ),
        ));
        if !key.is_empty() {
            image
                .fields
                .push((format!("{}:{key}", r.user), r.rid.clone()));
        }
        image.made += 1;
    }
    for (user, key) in &barriers {
        let Ok(id) = UserId::new(user.as_str()) else {
            continue;
        };
        let image = &mut images[usize::from(home_shard(&id, rules.shards))];
        image.fields.push((format!("{user}:{key}"), "!".to_owned()));
        image.made += 1;
    }
    let available = figures.stock.saturating_sub(figures.held + figures.sold);
    for ((image, users), units) in images
        .iter_mut()
        .zip(allowances)
        .zip(split(available, rules.shards))
    {
        image.units.0 = units;
        image.fields.extend(
            users
                .into_iter()
                .map(|(user, units)| (user, units.to_string())),
        );
    }
    for (shard, image) in (0..rules.shards).zip(&images) {
        let expected = redis.snapshots.get(usize::from(shard)).and_then(|s| s.made);
        if !store.restore_shard(sku, shard, expected, image).await? {
            return Ok(Err(format!(
                "shard {shard} changed while it was audited; run the audit again"
            )));
        }
    }
    let config = SkuConfig {
        sku: sku.clone(),
        shards: rules.shards,
        stock: figures.stock,
        per_user_limit: rules.per_user_limit,
        hold: Duration::from_millis(rules.hold_ms),
        starts_at_ms: (rules.starts_at_ms > 0).then_some(rules.starts_at_ms),
        ends_at_ms: (rules.ends_at_ms > 0).then_some(rules.ends_at_ms),
    };
    store.restore_meta(&config).await?;
    Ok(Ok(()))
}

/// A cheap check for serve to run often, sound while the ledger lags: the ledger only ever
/// trails Redis, so a SKU Redis lost, or fewer units sold or put on sale in Redis than the
/// ledger settled, can only mean Redis lost data.
pub async fn quick_check(store: &Store, ledger: &Ledger) -> Result<Vec<Drift>, AuditError> {
    let mut drifts = Vec::new();
    for sku_rules in ledger.skus().await? {
        let Ok(sku) = Sku::new(sku_rules.sku.as_str()) else {
            continue;
        };
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
