//! Admission control: decides from memory, before any Redis call, whether a request may go
//! on. A flash-sale spike is shed here, in microseconds, instead of queuing in front of Redis.
//!
//! In order: the sale window and the sold-out flag (answers that cost nothing and must not
//! spend tokens), the token buckets (global and per SKU, GCRA from `governor`), and the bound
//! on Redis calls in flight. Admission does no I/O; `gates.rs` keeps its flags in step with
//! Redis.
//!
//! A closed SKU (sold out, or past its window) still lets through a reserve whose
//! `<user>:<key>` Redis has recorded, once those keys are loaded: a client retrying a
//! reserve that did succeed gets its reservation back, not "sold out".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock, QuantaInstant, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ids::{IdempotencyKey, Sku, UserId};
use crate::store::SkuConfig;

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Sustained requests per second.
    pub rate: NonZeroU32,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

impl Bucket {
    fn quota(self) -> Quota {
        Quota::per_second(self.rate).allow_burst(self.burst)
    }

    /// `fraction` (0 to 1) of this bucket: rate and burst scaled alike, rounded down, at
    /// least 1 each.
    pub fn share(self, fraction: f64) -> Bucket {
        let scale = |n: NonZeroU32| {
            let scaled = (f64::from(n.get()) * fraction.clamp(0.0, 1.0)).floor() as u32;
            NonZeroU32::new(scaled).unwrap_or(NonZeroU32::MIN)
        };
        Bucket {
            rate: scale(self.rate),
            burst: scale(self.burst),
        }
    }

    /// A bucket of `rate` per second with this bucket's burst scaled by `rate / self.rate`
    /// (so it refills in the same time), at least 1 each.
    pub fn at_rate(self, rate: u32) -> Bucket {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst =
            u64::from(self.burst.get()) * u64::from(rate.get()) / u64::from(self.rate.get());
        Bucket {
            rate,
            burst: NonZeroU32::new(burst.min(u64::from(u32::MAX)) as u32)
                .unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The buckets admission applies: the engine's share of the configured ones (see
/// [`crate::registry`]). `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitPlan {
    /// All reserves together.
    pub global: Option<Bucket>,
    /// Reserves of one SKU, for every SKU without a bucket of its own in `own`.
    pub per_sku: Option<Bucket>,
    /// SKUs with a per-SKU bucket of their own (ignored without `per_sku`).
    pub own: BTreeMap<Sku, Bucket>,
}

/// Reserves that reached the token buckets since the last [`Admission::take_demand`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demand {
    /// Over how long they were counted.
    pub over: Duration,
    /// All of them.
    pub total: u64,
    /// By known SKU (SKUs with none are left out).
    pub per_sku: BTreeMap<Sku, u64>,
}

/// Slots of a [`Striped`] counter.
const STRIPES: usize = 16;

/// One slot, on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// A counter that request threads add to without sharing a cache line (one slot per
/// thread, by a per-thread index), summed when taken: counting demand must not make
/// admission a point of contention.
struct Striped([Slot; STRIPES]);

impl Default for Striped {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Slot::default()))
    }
}

impl std::fmt::Debug for Striped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Striped")
    }
}

impl Striped {
    fn add(&self) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) as usize % STRIPES;
        }
        let stripe = STRIPE.with(|stripe| *stripe);
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count, which starts again from zero.
    fn take(&self) -> u64 {
        self.0
            .iter()
            .map(|slot| slot.0.swap(0, Ordering::Relaxed))
            .sum()
    }
}

/// A limiter that tells how full it is when it admits (to carry its state into the next).
type Direct = DefaultDirectRateLimiter<StateInformationMiddleware>;
type Keyed = DefaultKeyedRateLimiter<Sku, StateInformationMiddleware>;

/// A limiter and the bucket it was made for.
struct Held<L> {
    bucket: Bucket,
    limiter: L,
}

/// The limiters in force, swapped whole when the plan changes: a request reads one
/// consistent set with one atomic load and no lock.
#[derive(Default)]
struct Limits {
    global: Option<Arc<Held<Direct>>>,
    per_sku: Option<Arc<Held<Keyed>>>,
    own: HashMap<Sku, Arc<Held<Direct>>>,
    /// One per-SKU bucket shared by every SKU without a gate (a name made up, or a SKU
    /// loaded by another engine since the last reload): the keyed limiter keeps an entry
    /// per key it is asked about, so it is asked only about SKUs that are loaded.
    strangers: Option<Arc<Held<Direct>>>,
}

/// The part of its bucket a limiter has left, from a check's outcome: the check took one
/// cell, which is counted back (the limiter is being retired).
fn fill(
    outcome: Result<StateSnapshot, NotUntil<governor::clock::QuantaInstant>>,
    burst: Bucket,
) -> f64 {
    match outcome {
        Ok(state) => {
            (f64::from(state.remaining_burst_capacity()) + 1.0) / f64::from(burst.burst.get())
        }
        Err(_) => 0.0,
    }
    .min(1.0)
}

/// How many cells to take from a fresh, full bucket so that `fill` of it is left.
fn to_drain(bucket: Bucket, fill: f64) -> Option<NonZeroU32> {
    let burst = bucket.burst.get();
    let keep = (f64::from(burst) * fill.clamp(0.0, 1.0)).floor() as u32;
    NonZeroU32::new(burst - keep.min(burst))
}

/// A direct limiter for `bucket`, as full as `fill` says.
fn direct(bucket: Bucket, fill: f64) -> Held<Direct> {
    let limiter =
        RateLimiter::direct(bucket.quota()).with_middleware::<StateInformationMiddleware>();
    if let Some(n) = to_drain(bucket, fill) {
        let _ = limiter.check_n(n);
    }
    Held { bucket, limiter }
}

/// Admission limits.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// All reserves together; `None` for no limit.
    pub global: Option<Bucket>,
    /// Reserves of one SKU; `None` for no limit.
    pub per_sku: Option<Bucket>,
    /// Redis calls in flight from requests at once.
    pub max_in_flight: usize,
    /// Stream entries not yet settled into the ledger past which reserves are refused
    /// (`None`: no limit, as without a ledger, where nothing settles).
    pub max_unsettled: Option<u64>,
}

/// Why a request was refused from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A token bucket is empty; try again after the given time.
    RateLimited {
        /// When a token will be there.
        retry_after: Duration,
    },
    /// The SKU is known to have no units.
    SoldOut,
    /// Before the sale window.
    NotStarted,
    /// After the sale window.
    Ended,
    /// Too many Redis calls in flight.
    Overloaded,
    /// Redis restarted and is not trusted until the audit has compared it with the ledger.
    Suspended,
    /// The engine's registry entry may have expired (no heartbeat succeeded for as long as
    /// an entry lives): the others may be sharing its part of the rates, so it admits no
    /// reserve until a heartbeat succeeds.
    Unregistered,
    /// More stream entries are unsettled than `--max-unsettled` allows: the ledger is
    /// behind, and no new hold is made until it catches up (confirms and cancels go on).
    SettlementBehind,
}

impl Refusal {
    /// The reason as metrics label it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate",
            Self::SoldOut => "sold_out_flag",
            Self::NotStarted | Self::Ended => "window",
            Self::Overloaded => "in_flight",
            Self::Suspended => "suspended",
            Self::Unregistered => "unregistered",
            Self::SettlementBehind => "settlement_behind",
        }
    }
}

/// Idempotency keys by user.
type KeysByUser = HashMap<String, HashSet<String>>;

/// What admission knows of one SKU.
#[derive(Debug, Default)]
pub struct Gate {
    /// Sale start, ms since the epoch (Redis's clock).
    starts_at_ms: Option<u64>,
    /// Sale end, ms since the epoch (Redis's clock).
    ends_at_ms: Option<u64>,
    /// Set when the store found no unit in any shard; cleared when units come back.
    sold_out: AtomicBool,
    /// How many times the sold-out flag was lowered: keys read before a lowering are stale.
    reopenings: AtomicU64,
    /// Keys recorded in Redis when the SKU closed, by user; `None` until loaded. By user so
    /// that a lookup needs no allocation on the sold-out path.
    recorded_keys: RwLock<Option<Arc<KeysByUser>>>,
    /// Reserves of this SKU that reached the token buckets since the demand was taken.
    demand: Striped,
    /// Set once what serves reserves of the SKU was released after its window ended.
    released: AtomicBool,
}

impl Gate {
    /// Whether the window has closed at `now_ms` and this is the first time it is asked
    /// (so that what serves reserves of the SKU is released once).
    pub fn first_seen_ended(&self, now_ms: u64) -> bool {
        self.has_ended(now_ms) && !self.released.swap(true, Ordering::AcqRel)
    }

    /// Whether the sold-out flag is up.
    pub fn is_sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Acquire)
    }

    /// Whether the window has closed at `now_ms`.
    pub fn has_ended(&self, now_ms: u64) -> bool {
        self.ends_at_ms.is_some_and(|end| now_ms >= end)
    }

    /// Whether the recorded keys are loaded.
    pub fn keys_loaded(&self) -> bool {
        self.recorded_keys.read().is_some()
    }

    /// `None` when the key must go to the store: recorded, or not known yet.
    fn closed_refusal(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        refusal: Refusal,
    ) -> Option<Refusal> {
        let keys = self.recorded_keys.read();
        let keys = keys.as_ref()?;
        let recorded = keys
            .get(user.as_str())
            .is_some_and(|keys| keys.contains(key.as_str()));
        (!recorded).then_some(refusal)
    }
}

/// The admission layer. Shared by every request.
pub struct Admission {
    /// The token buckets in force (see [`Admission::apply`]).
    limits: ArcSwap<Limits>,
    /// Serialises plan changes (the hot path never takes it).
    applying: Mutex<()>,
    /// Reserves that reached the buckets since the demand was last taken, and since when.
    demand: Striped,
    demand_since: Mutex<Instant>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    gates: RwLock<HashMap<Sku, Arc<Gate>>>,
    clock: DefaultClock,
    /// Set while Redis is not trusted (see [`Admission::suspend`]).
    suspended: AtomicBool,
    /// Until when the shares in force hold, ns after `epoch` on `clock` (see
    /// [`Admission::hold_until`]); `u64::MAX` for ever (no registry).
    lease: AtomicU64,
    epoch: QuantaInstant,
    /// Stream entries not settled into the ledger, as last measured (see
    /// [`Admission::set_unsettled`]).
    unsettled: AtomicU64,
    max_unsettled: u64,
}

/// How many entries of each kind admission keeps for SKUs (see [`Admission::tracked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedByAdmission {
    /// Gates: one per loaded SKU.
    pub gates: usize,
    /// Entries of the keyed per-SKU limiter.
    pub rate_limiters: usize,
}

impl Admission {
    /// Admission with `config`'s limits and no SKU known.
    pub fn new(config: &AdmissionConfig) -> Self {
        let limits = Limits {
            global: config.global.map(|b| Arc::new(direct(b, 1.0))),
            per_sku: config.per_sku.map(|bucket| {
                Arc::new(Held {
                    bucket,
                    limiter: RateLimiter::keyed(bucket.quota()).with_middleware(),
                })
            }),
            own: HashMap::new(),
            strangers: config.per_sku.map(|bucket| Arc::new(direct(bucket, 1.0))),
        };
        let clock = DefaultClock::default();
        Self {
            limits: ArcSwap::from_pointee(limits),
            applying: Mutex::new(()),
            demand: Striped::default(),
            demand_since: Mutex::new(Instant::now()),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            gates: RwLock::new(HashMap::new()),
            suspended: AtomicBool::new(false),
            lease: AtomicU64::new(u64::MAX),
            epoch: clock.now(),
            clock,
            unsettled: AtomicU64::new(0),
            max_unsettled: config.max_unsettled.unwrap_or(u64::MAX),
        }
    }

    /// Decides on a reserve of `sku` by `user` with `key` at `now_ms` (Redis's clock). An
    /// unknown SKU is let through: the store answers for it. On success the permit bounds
    /// the request's Redis calls in flight; drop it when they are done.
    pub fn admit_reserve(
        &self,
        sku: &Sku,
        user: &UserId,
        key: &IdempotencyKey,
        now_ms: u64,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        if self.is_suspended() {
            return Err(Refusal::Suspended);
        }
        let gate = self.gate(sku);
        if let Some(gate) = &gate {
            if gate.starts_at_ms.is_some_and(|start| now_ms < start) {
                return Err(Refusal::NotStarted);
            }
            let closed = if gate.has_ended(now_ms) {
                Some(Refusal::Ended)
            } else if gate.is_sold_out() {
                Some(Refusal::SoldOut)
            } else {
                None
            };
            if let Some(refusal) = closed.and_then(|r| gate.closed_refusal(user, key, r)) {
                return Err(refusal);
            }
        }
        // Refused before a token is spent: the hold would only add to what waits.
        if self.unsettled.load(Ordering::Relaxed) >= self.max_unsettled {
            return Err(Refusal::SettlementBehind);
        }
        // Only what takes a token needs the share: the refusals above do not.
        let lease = self.lease.load(Ordering::Acquire);
        if lease != u64::MAX && u64::from(self.clock.now().duration_since(self.epoch)) > lease {
            return Err(Refusal::Unregistered);
        }
        self.take_token(Some(sku), gate.as_deref())?;
        self.admit_call()
    }

    /// Decides on a confirm or a cancel of a hold of `sku`: it spends a token of the same
    /// buckets as a reserve (so that a caller cannot make Redis work faster by confirming
    /// or cancelling than by reserving), but neither the window, the sold-out flag, the
    /// settlement backlog nor the lease stops it: it ends a hold, it makes none.
    /// A cart's (`sku` `None`: its SKUs are not known before it is read) spends a token of
    /// the global bucket only.
    pub fn admit_settle(&self, sku: Option<&Sku>) -> Result<OwnedSemaphorePermit, Refusal> {
        if self.is_suspended() {
            return Err(Refusal::Suspended);
        }
        match sku {
            Some(sku) => self.take_token(Some(sku), self.gate(sku).as_deref())?,
            None => self.take_token(None, None)?,
        }
        self.admit_call()
    }

    /// Takes one token of `sku`'s bucket (none without a SKU) and of the global one,
    /// counting the demand.
    fn take_token(&self, sku: Option<&Sku>, gate: Option<&Gate>) -> Result<(), Refusal> {
        if let Some(gate) = gate {
            gate.demand.add();
        }
        self.demand.add();
        let limited = |wait: NotUntil<_>| Refusal::RateLimited {
            retry_after: wait.wait_time_from(self.clock.now()),
        };
        // One atomic load: the buckets in force, swapped whole by `apply`.
        let limits = self.limits.load();
        if let (Some(per_sku), Some(sku)) = (&limits.per_sku, sku) {
            match (limits.own.get(sku), gate, &limits.strangers) {
                (Some(own), _, _) => own.limiter.check().map(drop).map_err(limited)?,
                (None, Some(_), _) => per_sku.limiter.check_key(sku).map(drop).map_err(limited)?,
                (None, None, Some(strangers)) => {
                    strangers.limiter.check().map(drop).map_err(limited)?
                }
                (None, None, None) => {}
            }
        }
        if let Some(global) = &limits.global {
            global.limiter.check().map(drop).map_err(limited)?;
        }
        Ok(())
    }

    /// Records how many stream entries wait to be settled into the ledger.
    pub fn set_unsettled(&self, entries: u64) {
        self.unsettled.store(entries, Ordering::Relaxed);
    }

    /// Stream entries waiting to be settled, as last measured.
    pub fn unsettled(&self) -> u64 {
        self.unsettled.load(Ordering::Relaxed)
    }

    /// The limit on unsettled entries, if any.
    pub fn max_unsettled(&self) -> Option<u64> {
        (self.max_unsettled != u64::MAX).then_some(self.max_unsettled)
    }

    /// Whether reserves are refused because settlement is behind.
    pub fn settlement_behind(&self) -> bool {
        self.unsettled() >= self.max_unsettled
    }

    /// Drops the keyed limiter's entries that hold nothing a fresh one would not (SKUs
    /// forgotten, or idle long enough to have refilled), and the memory they took.
    pub fn retain_recent(&self) {
        if let Some(per_sku) = &self.limits.load().per_sku {
            per_sku.limiter.retain_recent();
            per_sku.limiter.shrink_to_fit();
        }
    }

    /// How much admission keeps per SKU now.
    pub fn tracked(&self) -> TrackedByAdmission {
        TrackedByAdmission {
            gates: self.gates.read().len(),
            rate_limiters: self
                .limits
                .load()
                .per_sku
                .as_ref()
                .map_or(0, |per_sku| per_sku.limiter.len()),
        }
    }

    /// A permit for one request's Redis calls, if fewer than the bound are in flight.
    pub fn admit_call(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        if self.suspended.load(Ordering::Acquire) {
            return Err(Refusal::Suspended);
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Overloaded)
    }

    /// The buckets in force.
    pub fn plan(&self) -> LimitPlan {
        let limits = self.limits.load();
        LimitPlan {
            global: limits.global.as_ref().map(|held| held.bucket),
            per_sku: limits.per_sku.as_ref().map(|held| held.bucket),
            own: limits
                .own
                .iter()
                .map(|(sku, held)| (sku.clone(), held.bucket))
                .collect(),
        }
    }

    /// Puts `plan`'s buckets in force, in one swap. A bucket that did not change keeps its
    /// limiter; one that did gets a new limiter that starts as full, in proportion, as the
    /// one it replaces was (for a SKU: its own bucket, or the shared per-SKU one), so that
    /// a change of share never hands out a fresh burst on top of what the old limiter gave.
    /// The old limiter loses the one cell the reading takes.
    pub fn apply(&self, plan: &LimitPlan) {
        let _one_at_a_time = self.applying.lock();
        let old = self.limits.load_full();
        if self.plan() == *plan {
            return;
        }
        let global = plan.global.map(|bucket| match &old.global {
            Some(held) if held.bucket == bucket => held.clone(),
            Some(held) => Arc::new(direct(bucket, fill(held.limiter.check(), held.bucket))),
            None => Arc::new(direct(bucket, 1.0)),
        });
        // A SKU's fill before the change: its own limiter's, else the shared one's.
        let sku_fill = |sku: &Sku| match (old.own.get(sku), &old.per_sku) {
            (Some(own), _) => fill(own.limiter.check(), own.bucket),
            (None, Some(shared)) => fill(shared.limiter.check_key(sku), shared.bucket),
            (None, None) => 1.0,
        };
        let per_sku = plan.per_sku.map(|bucket| match &old.per_sku {
            Some(held) if held.bucket == bucket => held.clone(),
            _ => {
                let limiter = RateLimiter::keyed(bucket.quota()).with_middleware();
                // Carried over for the SKUs known, and those that had a bucket of their own;
                // a SKU new to this engine starts full (its first burst, as it always had).
                let skus = self.gates().into_iter().map(|(sku, _)| sku);
                for sku in skus.chain(old.own.keys().cloned()) {
                    if plan.own.contains_key(&sku) {
                        continue;
                    }
                    if let Some(n) = to_drain(bucket, sku_fill(&sku)) {
                        let _ = limiter.check_key_n(&sku, n);
                    }
                }
                Arc::new(Held { bucket, limiter })
            }
        });
        let own = match plan.per_sku {
            None => HashMap::new(),
            Some(_) => plan
                .own
                .iter()
                .map(|(sku, &bucket)| {
                    let held = match old.own.get(sku) {
                        Some(held) if held.bucket == bucket => held.clone(),
                        _ => Arc::new(direct(bucket, sku_fill(sku))),
                    };
                    (sku.clone(), held)
                })
                .collect(),
        };
        let strangers = plan.per_sku.map(|bucket| match &old.strangers {
            Some(held) if held.bucket == bucket => held.clone(),
            Some(held) => Arc::new(direct(bucket, fill(held.limiter.check(), held.bucket))),
            None => Arc::new(direct(bucket, 1.0)),
        });
        self.limits.store(Arc::new(Limits {
            global,
            per_sku,
            own,
            strangers,
        }));
    }

    /// The reserves that reached the token buckets since the last call, in all and by
    /// known SKU; the counts start again from zero.
    pub fn take_demand(&self) -> Demand {
        let over = {
            let now = Instant::now();
            now - std::mem::replace(&mut *self.demand_since.lock(), now)
        };
        let total = self.demand.take();
        let per_sku = self
            .gates()
            .into_iter()
            .filter_map(|(sku, gate)| {
                let n = gate.demand.take();
                (n > 0).then_some((sku, n))
            })
            .collect();
        Demand {
            over,
            total,
            per_sku,
        }
    }

    /// Refuses every request that would call Redis (503) until [`Admission::resume`]: for
    /// a Redis that restarted and may have lost writes, nothing is sold on its word until
    /// the audit has compared it with the ledger.
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
    }

    /// Lets requests through again.
    pub fn resume(&self) {
        self.suspended.store(false, Ordering::Release);
    }

    /// The shares in force hold until `deadline`: past it, every reserve is refused (503)
    /// until the next call, as the engine's registry entry may have expired and the others
    /// may be sharing its part of the rates. Judged on every reserve, so an engine whose
    /// heartbeat task is late (a starved process) stops in time too. Confirms and cancels
    /// go on (they take no token).
    pub fn hold_until(&self, deadline: Instant) {
        // On governor's clock (cheaper to read than `Instant`), from the time left.
        let left = deadline.saturating_duration_since(Instant::now());
        let now = u64::from(self.clock.now().duration_since(self.epoch));
        let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
        self.lease.store(
            now.saturating_add(left).min(u64::MAX - 1),
            Ordering::Release,
        );
    }

    /// Whether requests are refused while Redis is checked.
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// Requests with Redis calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// What admission knows of `sku`.
    pub fn gate(&self, sku: &Sku) -> Option<Arc<Gate>> {
        self.gates.read().get(sku).cloned()
    }

    /// Learns (or relearns) a SKU's window. A changed window drops the sold-out flag and
    /// the recorded keys: a replaced SKU starts afresh.
    pub fn know(&self, config: &SkuConfig) {
        let mut gates = self.gates.write();
        if let Some(gate) = gates.get(&config.sku) {
            if gate.starts_at_ms == config.starts_at_ms && gate.ends_at_ms == config.ends_at_ms {
                return;
            }
        }
        gates.insert(
            config.sku.clone(),
            Arc::new(Gate {
                starts_at_ms: config.starts_at_ms,
                ends_at_ms: config.ends_at_ms,
                ..Gate::default()
            }),
        );
    }

    /// Forgets everything about `sku` (it was replaced).
    pub fn forget(&self, sku: &Sku) {
        self.gates.write().remove(sku);
    }

    /// Raises the sold-out flag of a known SKU. Returns whether it was down.
    pub fn mark_sold_out(&self, sku: &Sku) -> bool {
        self.gate(sku)
            .is_some_and(|gate| !gate.sold_out.swap(true, Ordering::AcqRel))
    }

    /// Lowers the sold-out flag: units came back. Recorded keys are dropped, as new
    /// reservations can now be made.
    pub fn clear_sold_out(&self, sku: &Sku) {
        if let Some(gate) = self.gate(sku) {
            if gate.sold_out.swap(false, Ordering::AcqRel) {
                gate.reopenings.fetch_add(1, Ordering::AcqRel);
                *gate.recorded_keys.write() = None;
            }
        }
    }

    /// The SKU's reopening count, to pass to [`Admission::set_recorded_keys`] with keys read
    /// after it.
    pub fn reopenings(&self, sku: &Sku) -> u64 {
        self.gate(sku)
            .map_or(0, |gate| gate.reopenings.load(Ordering::Acquire))
    }

    /// Stores the keys Redis recorded for a closed SKU, as `<user>:<key>` fields, read when
    /// the SKU's reopening count was `reopenings`; keys read before a reopening are dropped,
    /// as reservations may have been made since.
    pub fn set_recorded_keys(&self, sku: &Sku, reopenings: u64, fields: HashSet<String>) {
        let mut by_user: HashMap<String, HashSet<String>> = HashMap::new();
        for field in fields {
            if let Some((user, key)) = field.split_once(':') {
                by_user
                    .entry(user.to_owned())
                    .or_default()
                    .insert(key.to_owned());
            }
        }
        if let Some(gate) = self.gate(sku) {
            let mut keys = gate.recorded_keys.write();
            if gate.reopenings.load(Ordering::Acquire) == reopenings {
                *keys = Some(Arc::new(by_user));
            }
        }
    }

    /// Every known SKU and its gate.
    pub fn gates(&self) -> Vec<(Sku, Arc<Gate>)> {
        self.gates
            .read()
            .iter()
            .map(|(sku, gate)| (sku.clone(), gate.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(burst: u32) -> AdmissionConfig {
        let n = NonZeroU32::new(burst).unwrap();
        AdmissionConfig {
            global: Some(Bucket {
                rate: NonZeroU32::new(1).unwrap(),
                burst: n,
            }),
            per_sku: None,
            max_in_flight: 2,
            max_unsettled: None,
        }
    }

    fn sku_config(starts: Option<u64>, ends: Option<u64>) -> SkuConfig {
        SkuConfig {
            sku: Sku::new("tv").unwrap(),
            shards: 1,
            ever_shards: 1,
            stock: 1,
            per_user_limit: 1,
            hold: Duration::from_secs(60),
            starts_at_ms: starts,
            ends_at_ms: ends,
        }
    }

    fn ids() -> (Sku, UserId, IdempotencyKey) {
        (
            Sku::new("tv").unwrap(),
            UserId::new("ann").unwrap(),
            IdempotencyKey::new("k").unwrap(),
        )
    }

    #[test]
    fn a_burst_beyond_the_bucket_is_refused_with_a_wait() {
        let admission = Admission::new(&AdmissionConfig {
            max_in_flight: 100,
            ..config(3)
        });
        let (sku, user, key) = ids();
        let mut permits = Vec::new();
        for _ in 0..3 {
            permits.push(admission.admit_reserve(&sku, &user, &key, 0).unwrap());
        }
        match admission.admit_reserve(&sku, &user, &key, 0) {
            Err(Refusal::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn in_flight_is_bounded_and_released() {
        let admission = Admission::new(&AdmissionConfig {
            global: None,
            ..config(1)
        });
        let a = admission.admit_call().unwrap();
        let _b = admission.admit_call().unwrap();
        assert_eq!(admission.in_flight(), 2);
        assert_eq!(admission.admit_call().unwrap_err(), Refusal::Overloaded);
        drop(a);
        assert!(admission.admit_call().is_ok());
    }

    #[test]
    fn the_window_and_the_sold_out_flag_answer_without_tokens() {
        let admission = Admission::new(&config(2));
        let (sku, user, key) = ids();
        let bob = UserId::new("bob").unwrap();
        admission.know(&sku_config(Some(1_000), Some(2_000)));
        for _ in 0..5 {
            assert_eq!(
                admission.admit_reserve(&sku, &user, &key, 999).unwrap_err(),
                Refusal::NotStarted
            );
        }
        assert!(admission.mark_sold_out(&sku));
        assert!(!admission.mark_sold_out(&sku), "already up");
        // Keys not loaded yet: let through, the store knows (a token is spent).
        drop(admission.admit_reserve(&sku, &bob, &key, 1_500).unwrap());
        admission.set_recorded_keys(&sku, 0, HashSet::from(["ann:k".to_owned()]));
        for _ in 0..5 {
            assert_eq!(
                admission
                    .admit_reserve(&sku, &bob, &key, 1_500)
                    .unwrap_err(),
                Refusal::SoldOut
            );
        }
        // ann's key made a reservation: her retry goes to the store for it.
        drop(admission.admit_reserve(&sku, &user, &key, 1_500).unwrap());
        // Both tokens are spent now; the refusals above never spent any.
        assert!(matches!(
            admission.admit_reserve(&sku, &user, &key, 1_500),
            Err(Refusal::RateLimited { .. })
        ));
        assert_eq!(
            admission
                .admit_reserve(&sku, &bob, &key, 2_000)
                .unwrap_err(),
            Refusal::Ended
        );
        admission.clear_sold_out(&sku);
        assert!(
            !admission.gate(&sku).unwrap().keys_loaded(),
            "keys dropped with the flag"
        );
    }

    fn bucket(rate: u32, burst: u32) -> Bucket {
        Bucket {
            rate: NonZeroU32::new(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    /// Admits until refused, at most `limit` times.
    fn admit_all(admission: &Admission, sku: &Sku, limit: usize) -> usize {
        let (_, user, key) = ids();
        (0..limit)
            .take_while(|_| admission.admit_reserve(sku, &user, &key, 0).is_ok())
            .count()
    }

    #[test]
    fn a_new_share_starts_as_full_as_the_old_bucket_was() {
        // Slow rates: no token comes back while the test runs.
        let admission = Admission::new(&AdmissionConfig {
            global: Some(bucket(1, 10)),
            per_sku: Some(bucket(1, 10)),
            max_in_flight: 1_000,
            max_unsettled: None,
        });
        let (sku, _, _) = ids();
        admission.know(&sku_config(None, None));
        assert_eq!(admit_all(&admission, &sku, 8), 8);
        // The same plan again changes nothing, and loses no token.
        admission.apply(&admission.plan());
        // Twice the share: 2 of 10 left, so 4 of 20 (the reading of the old one takes 1,
        // counted back).
        let mut plan = LimitPlan {
            global: Some(bucket(2, 20)),
            per_sku: Some(bucket(2, 20)),
            own: BTreeMap::new(),
        };
        admission.apply(&plan);
        assert_eq!(admission.plan(), plan);
        assert_eq!(
            admit_all(&admission, &sku, 100),
            4,
            "a fresh burst was handed out"
        );
        // A SKU of its own inherits its fill from the shared per-SKU bucket: empty now.
        plan.global = None;
        plan.own.insert(sku.clone(), bucket(5, 50));
        admission.apply(&plan);
        assert_eq!(admit_all(&admission, &sku, 100), 0);
        // Another SKU kept its own, full bucket in the shared one.
        let other = Sku::new("radio").unwrap();
        assert_eq!(admit_all(&admission, &other, 100), 20);
    }

    #[test]
    fn past_its_lease_the_engine_admits_no_reserve() {
        let admission = Admission::new(&config(100));
        let (sku, user, key) = ids();
        assert!(
            admission.admit_reserve(&sku, &user, &key, 0).is_ok(),
            "no lease yet"
        );
        admission.hold_until(Instant::now() + Duration::from_secs(3600));
        assert!(admission.admit_reserve(&sku, &user, &key, 0).is_ok());
        admission.hold_until(Instant::now() - Duration::from_millis(1));
        assert_eq!(
            admission.admit_reserve(&sku, &user, &key, 0).unwrap_err(),
            Refusal::Unregistered
        );
        // Other calls take no token and go on.
        assert!(admission.admit_call().is_ok());
    }

    #[test]
    fn demand_counts_what_reached_the_buckets() {
        let admission = Admission::new(&config(100));
        let (sku, user, key) = ids();
        admission.know(&sku_config(Some(1_000), None));
        let _ = admission.admit_reserve(&sku, &user, &key, 0); // not started: not demand
        for _ in 0..3 {
            drop(admission.admit_reserve(&sku, &user, &key, 1_000));
        }
        let unknown = Sku::new("nope").unwrap();
        drop(admission.admit_reserve(&unknown, &user, &key, 1_000));
        let demand = admission.take_demand();
        assert_eq!(demand.total, 4);
        assert_eq!(demand.per_sku, BTreeMap::from([(sku.clone(), 3)]));
        assert_eq!(admission.take_demand().total, 0);
    }

    #[test]
    fn keys_read_before_a_reopening_are_not_used() {
        let admission = Admission::new(&config(100));
        let (sku, user, key) = ids();
        admission.know(&sku_config(None, None));
        admission.mark_sold_out(&sku);
        let before = admission.reopenings(&sku);
        // Units came back (and may have been reserved) while the keys were being read.
        admission.clear_sold_out(&sku);
        admission.mark_sold_out(&sku);
        admission.set_recorded_keys(&sku, before, HashSet::new());
        assert!(!admission.gate(&sku).unwrap().keys_loaded());
        // So reserves still go to the store, which knows.
        assert!(admission.admit_reserve(&sku, &user, &key, 0).is_ok());
        admission.set_recorded_keys(&sku, admission.reopenings(&sku), HashSet::new());
        assert_eq!(
            admission.admit_reserve(&sku, &user, &key, 0).unwrap_err(),
            Refusal::SoldOut
        );
    }
}
