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

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;
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
}

impl Gate {
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
    global: Option<DefaultDirectRateLimiter>,
    per_sku: Option<DefaultKeyedRateLimiter<Sku>>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    gates: RwLock<HashMap<Sku, Arc<Gate>>>,
    clock: DefaultClock,
    /// Set while Redis is not trusted (see [`Admission::suspend`]).
    suspended: AtomicBool,
}

impl Admission {
    /// Admission with `config`'s limits and no SKU known.
    pub fn new(config: &AdmissionConfig) -> Self {
        Self {
            global: config.global.map(|b| RateLimiter::direct(b.quota())),
            per_sku: config.per_sku.map(|b| RateLimiter::keyed(b.quota())),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            gates: RwLock::new(HashMap::new()),
            clock: DefaultClock::default(),
            suspended: AtomicBool::new(false),
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
        if let Some(gate) = self.gate(sku) {
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
        if let Some(limiter) = &self.per_sku {
            limiter
                .check_key(sku)
                .map_err(|wait| Refusal::RateLimited {
                    retry_after: wait.wait_time_from(self.clock.now()),
                })?;
        }
        if let Some(limiter) = &self.global {
            limiter.check().map_err(|wait| Refusal::RateLimited {
                retry_after: wait.wait_time_from(self.clock.now()),
            })?;
        }
        self.admit_call()
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
