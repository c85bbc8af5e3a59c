//! The engine registry: several `flashsale serve` engines on one Redis, each told by a
//! heartbeat which others are alive, and each applying its share of the configured rates.
//!
//! Every heartbeat (`--heartbeat-ms`, 1 s by default) an engine runs `lua/heartbeat.lua`,
//! which renews its entry for [`TTL_BEATS`] heartbeats (Redis's clock), drops the entries
//! that expired, grants the engine's claims (below), and returns every live entry. An entry
//! carries the engine's recent demand: the reserves that reached its token buckets over the
//! last heartbeat, in all and per SKU. A graceful shutdown removes the entry at once
//! (`lua/leave.lua`); a crashed engine's entry goes when it expires. The keys all carry the
//! hash tag `{engines}` (see [`crate::keys::KeySpace::engines`]): one hash slot per call.
//!
//! # Shares
//!
//! An engine's bucket for a rate `R` (global, or one SKU's) is
//! `floor(base * R / N) + claim`, where `N` is the number of live entries it last saw
//! (itself included), and its burst is the configured burst scaled by the same fraction.
//!
//! - `--rate-split even`: `base` is 1 and there are no claims: `R / N` each.
//! - `--rate-split demand` (as Doorman does): `base` is [`DEMAND_FLOOR`], so an engine
//!   with no demand yet still admits, and the rest, `(1 - base) * R`, is handed out in
//!   claims in proportion to the demand the entries report. An engine asks for its claim
//!   from the demand it saw at its previous heartbeat, and the script grants it up to what
//!   the other live engines do not hold: the claims on a rate never add up to more than
//!   `(1 - base) * R`. A claim that shrinks is put in force before it is given up, so
//!   another engine never holds it while this one still uses it.
//!
//! # The bound
//!
//! Over any interval of `T` seconds, the reserves all engines admit together stay within
//! `R * T + B` (`B` the configured burst), plus, for each engine that joined during the
//! interval, `base * (R * (h + t) + B) / N` (`h` the heartbeat, `t` the Redis timeout,
//! `N` the count after the join):
//!
//! - The claims never exceed their cap, as the script grants them atomically and an engine
//!   lowers its limiter before it lowers its claim.
//! - The even part `base * R / N` only grows when `N` falls, that is after the leaver
//!   stopped admitting (it leaves once its last request is answered) or after a crashed
//!   engine's entry expired. It is too high only in an engine that has not yet seen a join:
//!   for at most one heartbeat and one call, by `base * R / N`.
//! - A limiter replaced for a new share starts as full, in proportion, as the one it
//!   replaces ([`crate::admission::Admission::apply`]), so a change hands out no fresh
//!   burst; the buckets' fills add up to at most `B` save for the joiner's first burst.
//! - An engine whose last successful heartbeat was sent longer ago than its entry lives
//!   may have been dropped by the others, who then share its part: it refuses every reserve
//!   (503, retry with the same key) until a heartbeat succeeds again, judged on every
//!   reserve ([`Admission::hold_until`]), so a starved engine whose heartbeat task is late
//!   stops in time as well; failed heartbeats are retried every 100 ms meanwhile.
//!
//! Rounding down keeps the sum at or below `R`, except that every engine admits at least 1/s.
//!
//! # Sweep ownership
//!
//! [`Registry::owns`] names, by rendezvous hashing of (engine id, SKU) over the live
//! entries, the one engine that sweeps a SKU at full frequency; the others sweep it at a low
//! backup frequency (`maintenance.rs`), so a crashed owner's SKUs are still swept until its
//! entry expires and another engine owns them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::admission::{Admission, Bucket, Demand, LimitPlan};
use crate::ids::{random_token, Sku};
use crate::keys::EngineKeys;
use crate::metrics::Metrics;
use crate::scripts::Scripts;
use crate::store::{Store, StoreError};

/// An entry lives this many heartbeats after it was written.
pub const TTL_BEATS: u32 = 3;

/// With `--rate-split demand`, the part of each rate split evenly whatever the demand.
pub const DEMAND_FLOOR: f64 = 0.1;

/// With `--rate-split demand`, the most SKUs an engine claims a share of (by demand; the
/// others get the even part only).
pub const MAX_CLAIMED_SKUS: usize = 64;

/// While cut off, the heartbeat is retried this often (or every heartbeat, if shorter), so
/// that the share comes back soon after Redis does.
const CUT_OFF_RETRY: Duration = Duration::from_millis(100);

/// The name of the global rate in claims (SKU ids have no `*`).
const GLOBAL: &str = "*";

/// How the configured rates are split among live engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RateSplit {
    /// Each live engine gets `rate / N`.
    #[default]
    Even,
    /// A small equal part each, the rest in proportion to recent demand.
    Demand,
}

impl RateSplit {
    /// The part of every rate split evenly.
    fn base(self) -> f64 {
        match self {
            Self::Even => 1.0,
            Self::Demand => DEMAND_FLOOR,
        }
    }
}

/// What the registry shares and how often it beats.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Between two heartbeats.
    pub heartbeat: Duration,
    /// How the rates are split.
    pub split: RateSplit,
    /// The configured global bucket, to split; `None` for no limit.
    pub global: Option<Bucket>,
    /// The configured per-SKU bucket, to split; `None` for no limit.
    pub per_sku: Option<Bucket>,
}

impl RegistryOptions {
    /// How long an entry lives after its heartbeat.
    pub fn ttl(&self) -> Duration {
        self.heartbeat * TTL_BEATS
    }
}

/// What an engine tells the others, stored as JSON in its entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineEntry {
    /// For humans: where it runs.
    pub host: String,
    /// For humans: its process id.
    pub pid: u32,
    /// Reserves per second that reached its buckets over its last heartbeat.
    pub demand: f64,
    /// The same by SKU (SKUs with none left out).
    pub skus: BTreeMap<String, f64>,
}

impl EngineEntry {
    fn with_demand(host: &str, demand: &Demand) -> Self {
        let seconds = demand.over.as_secs_f64().max(1e-3);
        Self {
            host: host.to_owned(),
            pid: std::process::id(),
            demand: demand.total as f64 / seconds,
            skus: demand
                .per_sku
                .iter()
                .map(|(sku, &n)| (sku.as_str().to_owned(), n as f64 / seconds))
                .collect(),
        }
    }
}

/// One live entry as the last heartbeat read it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEngine {
    /// The engine's id.
    pub id: String,
    /// When its entry expires, ms since the epoch (Redis's clock).
    pub expires_at_ms: u64,
    /// What it told (default if unreadable).
    pub entry: EngineEntry,
}

/// Claims on the rates, requests per second: the part of each handed out by demand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// On the global rate.
    pub global: u32,
    /// On SKUs' rates.
    pub skus: BTreeMap<Sku, u32>,
}

impl Claims {
    /// `"*=<rate>,<sku>=<rate>,..."`, as the script keeps them (zeros left out).
    fn pack(&self) -> String {
        let global = (self.global > 0).then(|| format!("{GLOBAL}={}", self.global));
        global
            .into_iter()
            .chain(
                self.skus
                    .iter()
                    .filter(|(_, &rate)| rate > 0)
                    .map(|(sku, rate)| format!("{sku}={rate}")),
            )
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads what [`Claims::pack`] wrote; names that are not SKUs are dropped.
    fn parse(text: &str) -> Self {
        let mut claims = Self::default();
        for (name, rate) in text.split(',').filter_map(|pair| pair.split_once('=')) {
            let Ok(rate) = rate.parse::<u32>() else {
                continue;
            };
            if name == GLOBAL {
                claims.global = rate;
            } else if let Ok(sku) = Sku::new(name) {
                claims.skus.insert(sku, rate);
            }
        }
        claims
    }

    /// Each claim the lower of the two (absent is zero).
    fn min(&self, other: &Claims) -> Claims {
        Claims {
            global: self.global.min(other.global),
            skus: self
                .skus
                .iter()
                .filter_map(|(sku, &rate)| {
                    let lower = rate.min(other.skus.get(sku).copied().unwrap_or(0));
                    (lower > 0).then(|| (sku.clone(), lower))
                })
                .collect(),
        }
    }
}

/// This engine's shares, as fractions of the configured rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shares {
    /// Of the global rate; `None` without a global limit.
    pub global: Option<f64>,
    /// Of a SKU's rate, for SKUs without a share of their own; `None` without a per-SKU
    /// limit.
    pub per_sku: Option<f64>,
    /// SKUs with a share of their own (a claim, with `--rate-split demand`).
    pub own: BTreeMap<Sku, f64>,
}

/// What the last heartbeat saw.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Every live entry, this engine's included, by id.
    pub engines: Vec<LiveEngine>,
    /// This engine's shares.
    pub shares: Shares,
}

/// The buckets of an engine that sees `live` engines and holds `claims`.
fn plan(options: &RegistryOptions, live: usize, claims: &Claims) -> LimitPlan {
    let live = live.max(1) as f64;
    let base = options.split.base();
    let even = |bucket: Bucket| (base * f64::from(bucket.rate.get()) / live).floor() as u32;
    let per_sku = options.per_sku.map(|bucket| bucket.at_rate(even(bucket)));
    LimitPlan {
        global: options
            .global
            .map(|bucket| bucket.at_rate(even(bucket).saturating_add(claims.global))),
        per_sku,
        own: match options.per_sku {
            Some(bucket) => claims
                .skus
                .iter()
                .map(|(sku, &claim)| {
                    (
                        sku.clone(),
                        bucket.at_rate(even(bucket).saturating_add(claim)),
                    )
                })
                .collect(),
            None => BTreeMap::new(),
        },
    }
}

/// What a plan is, as fractions of the configured rates.
fn shares(options: &RegistryOptions, plan: &LimitPlan) -> Shares {
    let fraction = |held: Option<Bucket>, configured: Option<Bucket>| {
        Some(f64::from(held?.rate.get()) / f64::from(configured?.rate.get()))
    };
    Shares {
        global: fraction(plan.global, options.global),
        per_sku: fraction(plan.per_sku, options.per_sku),
        own: plan
            .own
            .iter()
            .filter_map(|(sku, &bucket)| {
                Some((sku.clone(), fraction(Some(bucket), options.per_sku)?))
            })
            .collect(),
    }
}

/// The part of `pool` that `mine` of the demand earns among `live` engines: in proportion
/// to the demand, or evenly when nobody has any.
fn proportional(pool: f64, mine: f64, others: f64, live: usize) -> u32 {
    let share = if mine + others > 0.0 {
        mine / (mine + others)
    } else {
        1.0 / live.max(1) as f64
    };
    (pool * share).floor() as u32
}

/// The claims engine `me`, whose demand is `mine`, asks for, given the entries of the
/// others it last saw and the SKUs it knows.
fn wants(
    options: &RegistryOptions,
    engines: &[LiveEngine],
    me: &str,
    mine: &EngineEntry,
    known: &[Sku],
) -> Claims {
    if options.split == RateSplit::Even {
        return Claims::default();
    }
    let others: Vec<&EngineEntry> = engines
        .iter()
        .filter(|engine| engine.id != me)
        .map(|engine| &engine.entry)
        .collect();
    let live = others.len() + 1;
    let spare = 1.0 - DEMAND_FLOOR;
    let global = options.global.map_or(0, |bucket| {
        let others: f64 = others.iter().map(|entry| entry.demand).sum();
        proportional(
            spare * f64::from(bucket.rate.get()),
            mine.demand,
            others,
            live,
        )
    });
    let Some(bucket) = options.per_sku else {
        return Claims {
            global,
            skus: BTreeMap::new(),
        };
    };
    // Every SKU known here or in demand anywhere, the most demanded first.
    let mut demand: BTreeMap<Sku, f64> = known.iter().map(|sku| (sku.clone(), 0.0)).collect();
    for entry in others.iter().copied().chain([mine]) {
        for (sku, &rate) in &entry.skus {
            if let Ok(sku) = Sku::new(sku.as_str()) {
                *demand.entry(sku).or_default() += rate;
            }
        }
    }
    let mut ranked: Vec<(Sku, f64)> = demand.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(MAX_CLAIMED_SKUS);
    let pool = spare * f64::from(bucket.rate.get());
    let skus = ranked
        .into_iter()
        .filter_map(|(sku, total)| {
            let own = mine.skus.get(sku.as_str()).copied().unwrap_or(0.0);
            let claim = proportional(pool, own, total - own, live);
            (claim > 0).then_some((sku, claim))
        })
        .collect();
    Claims { global, skus }
}

/// A 64-bit mix of `id` and `sku` (FNV-1a, then SplitMix64's finaliser for spread).
fn weight(id: &str, sku: &Sku) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes().chain([0xff]).chain(sku.as_str().bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The engine, of `ids`, that owns `sku` by rendezvous hashing: the highest weight. Every
/// engine that sees the same live set names the same owner, and an engine's leaving moves
/// only the SKUs it owned.
pub fn owner<'a>(ids: impl IntoIterator<Item = &'a str>, sku: &Sku) -> Option<&'a str> {
    ids.into_iter().max_by_key(|id| (weight(id, sku), *id))
}

/// What the heartbeat task keeps between beats.
struct Beating {
    /// The claims granted at the last heartbeat (and in force).
    claims: Claims,
    /// When the last heartbeat that succeeded was sent.
    last_ok: Instant,
    /// Set once heartbeats failed for longer than the entry lives.
    cut_off: bool,
    /// Set from a failed heartbeat to the next one that succeeds (one warning per outage).
    failing: bool,
    /// SKUs whose share gauge is set.
    gauged: BTreeSet<Sku>,
}

/// This engine's membership of the registry. Cheap to share.
pub struct Registry {
    id: String,
    host: String,
    options: RegistryOptions,
    store: Store,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    keys: EngineKeys,
    heartbeat: Script,
    leave: Script,
    view: ArcSwap<View>,
    beating: Mutex<Beating>,
}

impl Registry {
    /// Joins: writes this engine's entry (the first heartbeat) and puts its shares in force.
    pub async fn join(
        store: Store,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        options: RegistryOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".to_owned());
        let Scripts {
            heartbeat, leave, ..
        } = Scripts::new();
        let registry = Arc::new(Self {
            id: format!("{host}/{}/{}", std::process::id(), random_token()),
            host,
            keys: store.keys().engines(),
            options,
            store,
            admission,
            metrics,
            heartbeat,
            leave,
            view: ArcSwap::default(),
            beating: Mutex::new(Beating {
                claims: Claims::default(),
                last_ok: Instant::now(),
                cut_off: false,
                failing: false,
                gauged: BTreeSet::new(),
            }),
        });
        registry.beat().await?;
        Ok(registry)
    }

    /// This engine's id: host, pid and a random token.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the last heartbeat saw.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// This engine's shares of the configured rates.
    pub fn shares(&self) -> Shares {
        self.view.load().shares.clone()
    }

    /// Live engines seen at the last heartbeat, this one included.
    pub fn live(&self) -> usize {
        self.view.load().engines.len().max(1)
    }

    /// Whether this engine owns `sku` (sweeps it at full frequency): the rendezvous owner
    /// over the live engines it last saw. Alone, or with no view yet, it owns everything.
    pub fn owns(&self, sku: &Sku) -> bool {
        let view = self.view.load();
        owner(view.engines.iter().map(|e| e.id.as_str()), sku).is_none_or(|id| id == self.id)
    }

    /// One heartbeat: publish the demand since the last one, renew the entry, put the new
    /// shares in force.
    pub async fn beat(&self) -> Result<(), StoreError> {
        let demand = self.admission.take_demand();
        let entry = EngineEntry::with_demand(&self.host, &demand);
        let view = self.view.load_full();
        let known: Vec<Sku> = self
            .admission
            .gates()
            .into_iter()
            .map(|(sku, _)| sku)
            .collect();
        let wanted = wants(&self.options, &view.engines, &self.id, &entry, &known);
        // A claim that shrinks goes into force before the script gives it up to others.
        let held = self.beating.lock().claims.clone();
        let lowered = held.min(&wanted);
        if lowered != held {
            self.admission
                .apply(&plan(&self.options, view.engines.len(), &lowered));
            self.beating.lock().claims = lowered;
        }
        let cap = |bucket: Option<Bucket>| {
            bucket.map_or(0, |b| {
                ((1.0 - self.options.split.base()) * f64::from(b.rate.get())).floor() as u64
            })
        };
        let sent = Instant::now();
        let reply: Vec<Value> = self
            .heartbeat
            .key(&self.keys.live)
            .key(&self.keys.demand)
            .key(&self.keys.claims)
            .arg(&self.id)
            .arg(self.options.ttl().as_millis() as u64)
            .arg(serde_json::to_string(&entry).expect("an entry serializes"))
            .arg(cap(self.options.global))
            .arg(cap(self.options.per_sku))
            .arg(wanted.pack())
            .invoke_async(&mut self.store.connection())
            .await?;
        let (granted, engines) = parse_reply(reply)?;
        let plan = plan(&self.options, engines.len(), &granted);
        self.admission.apply(&plan);
        // The entry lives `ttl` from the script's run, which is after `sent`.
        self.admission.hold_until(sent + self.options.ttl());
        let shares = shares(&self.options, &plan);
        self.gauge(engines.len(), &shares);
        {
            let mut beating = self.beating.lock();
            beating.claims = granted;
            beating.last_ok = sent;
            beating.cut_off = false;
            beating.failing = false;
        }
        self.view.store(Arc::new(View { engines, shares }));
        Ok(())
    }

    /// A heartbeat failed: counted, and once the entry may have expired for the others, the
    /// engine admits no reserve (they may be sharing its part already).
    /// Returns whether the engine is cut off.
    fn failed(&self, error: &StoreError) -> bool {
        self.metrics.heartbeat_failures.inc();
        let mut beating = self.beating.lock();
        if !std::mem::replace(&mut beating.failing, true) {
            tracing::warn!(%error, "heartbeat failed");
        }
        if beating.cut_off || beating.last_ok.elapsed() < self.options.ttl() {
            return beating.cut_off;
        }
        beating.cut_off = true;
        beating.claims = Claims::default();
        drop(beating);
        tracing::warn!("no heartbeat for longer than an entry lives: refusing reserves");
        // Admission refuses reserves by itself since the entry's life ran out. Its claims are gone with the entry; what it holds again is learnt at the next
        // heartbeat that succeeds.
        self.admission
            .apply(&plan(&self.options, self.live(), &Claims::default()));
        let shares = Shares {
            global: self.options.global.map(|_| 0.0),
            per_sku: self.options.per_sku.map(|_| 0.0),
            own: BTreeMap::new(),
        };
        self.gauge(self.live(), &shares);
        let engines = self.view.load().engines.clone();
        self.view.store(Arc::new(View { engines, shares }));
        true
    }

    fn gauge(&self, live: usize, shares: &Shares) {
        let metrics = &self.metrics;
        metrics.engines_live.set(live as i64);
        metrics.rate_share_global.set(shares.global.unwrap_or(1.0));
        metrics
            .rate_share_sku
            .with_label_values(&["*"])
            .set(shares.per_sku.unwrap_or(1.0));
        let mut beating = self.beating.lock();
        for sku in beating.gauged.iter() {
            if !shares.own.contains_key(sku) {
                let _ = metrics.rate_share_sku.remove_label_values(&[sku.as_str()]);
            }
        }
        for (sku, share) in &shares.own {
            metrics
                .rate_share_sku
                .with_label_values(&[sku.as_str()])
                .set(*share);
        }
        beating.gauged = shares.own.keys().cloned().collect();
    }

    /// Beats every heartbeat until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(registry.options.heartbeat);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is now: `join` has just beaten.
            ticks.tick().await;
            let retry = CUT_OFF_RETRY.min(registry.options.heartbeat);
            loop {
                ticks.tick().await;
                while let Err(error) = registry.beat().await {
                    if !registry.failed(&error) {
                        break;
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        })
    }

    /// Removes this engine's entry at once (a graceful shutdown): the others take its share
    /// at their next heartbeat. Call it after the last request was answered.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let _: i64 = self
            .leave
            .key(&self.keys.live)
            .key(&self.keys.demand)
            .key(&self.keys.claims)
            .arg(&self.id)
            .invoke_async(&mut self.store.connection())
            .await?;
        Ok(())
    }
}

/// Reads `heartbeat.lua`'s reply: `{now, claims, (id, expiry, entry)...}`.
fn parse_reply(reply: Vec<Value>) -> Result<(Claims, Vec<LiveEngine>), StoreError> {
    let bad = || StoreError::Protocol("bad heartbeat reply".to_owned());
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let number = |value: &Value| match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let mut values = reply.iter();
    number(values.next().ok_or_else(bad)?).ok_or_else(bad)?;
    let claims = Claims::parse(&text(values.next().ok_or_else(bad)?).ok_or_else(bad)?);
    let rest: Vec<&Value> = values.collect();
    let engines = rest
        .chunks(3)
        .map(|chunk| match chunk {
            [id, expiry, entry] => Ok(LiveEngine {
                id: text(id).ok_or_else(bad)?,
                expires_at_ms: number(expiry).ok_or_else(bad)?,
                entry: text(entry)
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .unwrap_or_default(),
            }),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((claims, engines))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn bucket(rate: u32, burst: u32) -> Bucket {
        Bucket {
            rate: NonZeroU32::new(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn options(split: RateSplit) -> RegistryOptions {
        RegistryOptions {
            heartbeat: Duration::from_secs(1),
            split,
            global: Some(bucket(1000, 100)),
            per_sku: Some(bucket(500, 50)),
        }
    }

    fn engine(id: &str, demand: f64, skus: &[(&str, f64)]) -> LiveEngine {
        LiveEngine {
            id: id.to_owned(),
            expires_at_ms: 0,
            entry: EngineEntry {
                demand,
                skus: skus.iter().map(|(s, d)| ((*s).to_owned(), *d)).collect(),
                ..EngineEntry::default()
            },
        }
    }

    fn sku(name: &str) -> Sku {
        Sku::new(name).unwrap()
    }

    #[test]
    fn even_shares_split_the_rate_and_the_burst() {
        let plan = plan(&options(RateSplit::Even), 3, &Claims::default());
        assert_eq!(plan.global, Some(bucket(333, 33)));
        assert_eq!(plan.per_sku, Some(bucket(166, 16)));
        assert!(plan.own.is_empty());
        // More engines than the rate: at least 1/s each.
        let plan = plan_for(5_000);
        assert_eq!(plan.global, Some(bucket(1, 1)));
    }

    fn plan_for(live: usize) -> LimitPlan {
        plan(&options(RateSplit::Even), live, &Claims::default())
    }

    #[test]
    fn demand_claims_follow_demand_and_keep_a_floor() {
        let options = options(RateSplit::Demand);
        let engines = [
            engine("a", 30.0, &[("tv", 30.0)]),
            engine("b", 10.0, &[("tv", 10.0)]),
        ];
        let a = wants(&options, &engines, "a", &engines[0].entry, &[sku("tv")]);
        let b = wants(&options, &engines, "b", &engines[1].entry, &[sku("tv")]);
        // 90% of the rate by demand, 3:1.
        assert_eq!(a.global, 675);
        assert_eq!(b.global, 225);
        assert_eq!(a.skus[&sku("tv")], 337);
        assert_eq!(b.skus[&sku("tv")], 112);
        // Everything each holds: the floor (10% / 2) and its claim.
        let plan_b = plan(&options, 2, &b);
        assert_eq!(plan_b.global.unwrap().rate.get(), 50 + 225);
        assert_eq!(plan_b.own[&sku("tv")].rate.get(), 25 + 112);
        // A newcomer with no demand yet claims nothing beyond the floor.
        let newcomer = engine("c", 0.0, &[]);
        let all = [engines[0].clone(), engines[1].clone(), newcomer.clone()];
        let c = wants(&options, &all, "c", &newcomer.entry, &[sku("tv")]);
        assert_eq!(c, Claims::default());
        let plan_c = plan(&options, 3, &c);
        assert_eq!(plan_c.global.unwrap().rate.get(), 33);
        // Nobody has demand: the claims are even.
        let idle = [engine("a", 0.0, &[]), engine("b", 0.0, &[])];
        let a = wants(&options, &idle, "a", &idle[0].entry, &[sku("tv")]);
        assert_eq!(a.global, 450);
        assert_eq!(a.skus[&sku("tv")], 225);
    }

    #[test]
    fn claims_pack_and_parse() {
        let claims = Claims {
            global: 12,
            skus: BTreeMap::from([(sku("tv"), 3), (sku("a.b-c_d"), 4), (sku("zero"), 0)]),
        };
        assert_eq!(claims.pack(), "*=12,a.b-c_d=4,tv=3");
        let back = Claims::parse(&claims.pack());
        assert_eq!(back.global, 12);
        assert_eq!(back.skus.len(), 2);
        assert_eq!(Claims::parse(""), Claims::default());
        let lower = claims.min(&Claims {
            global: 5,
            skus: BTreeMap::from([(sku("tv"), 10)]),
        });
        assert_eq!(lower.pack(), "*=5,tv=3");
    }

    #[test]
    fn rendezvous_moves_only_the_leavers_skus() {
        let ids = ["a", "b", "c"];
        let skus: Vec<Sku> = (0..300).map(|n| sku(&format!("s{n}"))).collect();
        let before: Vec<&str> = skus.iter().map(|s| owner(ids, s).unwrap()).collect();
        for id in ids {
            let owned = before.iter().filter(|o| **o == id).count();
            assert!((60..=140).contains(&owned), "{id} owns {owned} of 300");
        }
        let after: Vec<&str> = skus.iter().map(|s| owner(["a", "c"], s).unwrap()).collect();
        for (was, is) in before.iter().zip(&after) {
            if *was != "b" {
                assert_eq!(was, is, "a SKU not b's moved");
            }
        }
        assert_eq!(owner([], &skus[0]), None);
    }
}
