//! What admission costs a reserve before any Redis call: the token buckets, the gate lookup,
//! the in-flight permit, and the sold-out refusal. Admission sheds a spike in memory, so its
//! price per request must stay far below a Redis round trip (tens of microseconds) even when
//! every request thread hits the same SKU's bucket at once. No Redis is needed.
//!
//! `cargo bench --bench admission` (short run: `-- --warm-up-time 1 --measurement-time 3`).
//!
//! Groups, each documented in its module below:
//! - `admission/one_thread`: one admit per iteration, nothing else running;
//! - `admission/contended`: 2 and 4 threads admitting on one `Admission`, per admit;
//! - `admission/sold_out`: a refusal from memory of a sold-out SKU;
//! - `admission/reshared`: admits while another thread puts new shares in force.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use flashsale::admission::{Admission, AdmissionConfig, Bucket};
use flashsale::ids::{IdempotencyKey, Sku, UserId};
use flashsale::store::SkuConfig;

/// A bucket no benchmark can empty, so the path measured is always the admitting one: a
/// token every nanosecond (one thread admits a few tens of millions a second at most), and
/// a burst worth a whole second. The burst matters under contention: governor reads the
/// clock once, then retries its compare-and-swap with that reading, so a thread preempted
/// between the two for longer than burst / rate is refused. With a burst of a million
/// (1 ms) that happened within a second on a loaded two-core machine.
fn generous() -> Bucket {
    Bucket {
        rate: NonZeroU32::new(1_000_000_000).unwrap(),
        burst: NonZeroU32::new(1_000_000_000).unwrap(),
    }
}

/// The ids every admit uses. User and key only matter to a closed SKU; the SKU is the
/// per-SKU bucket's key, so one SKU is the contended case.
struct Ids {
    sku: Sku,
    user: UserId,
    key: IdempotencyKey,
}

impl Ids {
    fn new() -> Self {
        Self {
            sku: Sku::new("bench-sku").unwrap(),
            user: UserId::new("bench-user").unwrap(),
            key: IdempotencyKey::new("bench-key").unwrap(),
        }
    }
}

/// The SKU as the gate poll would make it known: no sale window, so only the sold-out flag
/// and the buckets decide.
fn sku_config(sku: &Sku) -> SkuConfig {
    SkuConfig {
        sku: sku.clone(),
        shards: 8,
        ever_shards: 8,
        stock: 100_000_000,
        per_user_limit: 1,
        hold: Duration::from_secs(600),
        starts_at_ms: None,
        ends_at_ms: None,
    }
}

/// Admission with `config`'s limits that knows the benchmark SKU, with a lease on its
/// shares as `serve`'s registry gives it (so every admit reads the clock to judge it).
fn admission_knowing(config: &AdmissionConfig, ids: &Ids) -> Admission {
    let admission = Admission::new(config);
    admission.know(&sku_config(&ids.sku));
    admission.hold_until(std::time::Instant::now() + Duration::from_secs(24 * 3600));
    admission
}

/// Any instant: the SKU has no window, so the clock never decides.
const NOW_MS: u64 = 1_700_000_000_000;

mod one_thread {
    //! `admission/one_thread`: the time of one `admit_reserve` that admits, permit dropped
    //! at once, on a single thread. This is the floor of what every reserve pays before it
    //! reaches the store: the gate lookup (a read lock and a hash of the SKU), a GCRA check
    //! per bucket (one compare-and-swap each), and a semaphore permit.
    //!
    //! - `global+per_sku`: both buckets, as `serve` runs by default.
    //! - `per_sku_only`: the per-SKU (keyed) bucket alone, so that the difference with the
    //!   above is the price of the global bucket.
    //! - `governor_check_key`: governor's keyed check called directly, without `Admission`;
    //!   what `Admission` adds on top of it is the gate lookup and the permit.

    use super::*;
    use std::hint::black_box;

    use governor::{Quota, RateLimiter};

    pub fn bench(c: &mut Criterion) {
        let ids = Ids::new();
        let mut group = c.benchmark_group("admission/one_thread");
        let both = admission_knowing(
            &AdmissionConfig {
                global: Some(generous()),
                per_sku: Some(generous()),
                max_in_flight: 1024,
                max_unsettled: None,
            },
            &ids,
        );
        group.bench_function("global+per_sku", |b| {
            b.iter(|| {
                let permit = both
                    .admit_reserve(black_box(&ids.sku), &ids.user, &ids.key, NOW_MS)
                    .expect("a generous bucket admits");
                drop(permit);
            })
        });
        let per_sku = admission_knowing(
            &AdmissionConfig {
                global: None,
                per_sku: Some(generous()),
                max_in_flight: 1024,
                max_unsettled: None,
            },
            &ids,
        );
        group.bench_function("per_sku_only", |b| {
            b.iter(|| {
                let permit = per_sku
                    .admit_reserve(black_box(&ids.sku), &ids.user, &ids.key, NOW_MS)
                    .expect("a generous bucket admits");
                drop(permit);
            })
        });
        let bucket = generous();
        let limiter = RateLimiter::keyed(Quota::per_second(bucket.rate).allow_burst(bucket.burst));
        group.bench_function("governor_check_key", |b| {
            b.iter(|| {
                limiter
                    .check_key(black_box(&ids.sku))
                    .expect("a generous bucket admits")
            })
        });
        group.finish();
    }
}

mod contended {
    //! `admission/contended`: 2 and 4 threads calling `admit_reserve` on one shared
    //! `Admission`, all for the same SKU, as request tasks do in the first second of a sale.
    //! They contend on the per-SKU bucket's state (one atomic in governor's keyed map), the
    //! global bucket's atomic, the semaphore and the gate map's read lock; the question is
    //! whether admission stays cheap when it is the shared point every request crosses.
    //!
    //! Each sample splits its K admits over the threads, starts them together behind a
    //! barrier and times from the first thread's start to the last thread's end: the
    //! reported time is that wall time divided by K, i.e. time per admit with all threads
    //! busy (the inverse of the aggregate admit rate), not one admit's latency. On a machine
    //! with fewer cores than threads it also includes time-slicing between the threads.

    use std::sync::Barrier;
    use std::thread;
    use std::time::Instant;

    use super::*;
    use criterion::{BenchmarkId, Throughput};

    pub fn bench(c: &mut Criterion) {
        let ids = Ids::new();
        let mut group = c.benchmark_group("admission/contended");
        group.throughput(Throughput::Elements(1));
        for threads in [2u64, 4] {
            let admission = admission_knowing(
                &AdmissionConfig {
                    global: Some(generous()),
                    per_sku: Some(generous()),
                    max_in_flight: 1024,
                    max_unsettled: None,
                },
                &ids,
            );
            group.bench_with_input(
                BenchmarkId::new("admit_reserve", threads),
                &threads,
                |b, &threads| b.iter_custom(|iters| admit_across(&admission, &ids, threads, iters)),
            );
        }
        group.finish();
    }

    /// Wall time for `iters` admits spread over `threads` threads.
    fn admit_across(admission: &Admission, ids: &Ids, threads: u64, iters: u64) -> Duration {
        let barrier = Barrier::new(threads as usize);
        thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let share = iters / threads + u64::from(t < iters % threads);
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..share {
                            let permit = admission
                                .admit_reserve(&ids.sku, &ids.user, &ids.key, NOW_MS)
                                .expect("a generous bucket admits");
                            drop(permit);
                        }
                        (start, Instant::now())
                    })
                })
                .collect();
            let spans: Vec<(Instant, Instant)> = workers
                .into_iter()
                .map(|w| w.join().expect("admitting thread"))
                .collect();
            let first_start = spans.iter().map(|s| s.0).min().expect("threads > 0");
            let last_end = spans.iter().map(|s| s.1).max().expect("threads > 0");
            last_end - first_start
        })
    }
}

mod sold_out {
    //! `admission/sold_out`: one `admit_reserve` refused because the SKU is sold out, with
    //! the SKU's recorded keys loaded (here: none), so the refusal comes from memory without
    //! a token spent or a permit taken. After a sell-out nearly every request takes this
    //! path, so it is what a sold-out sale costs per request: the gate lookup, the flag,
    //! and one `<user>:<key>` string built and looked up in the recorded set.

    use super::*;
    use std::hint::black_box;

    use flashsale::admission::Refusal;

    pub fn bench(c: &mut Criterion) {
        let ids = Ids::new();
        let mut group = c.benchmark_group("admission/sold_out");
        let admission = admission_knowing(
            &AdmissionConfig {
                global: Some(generous()),
                per_sku: Some(generous()),
                max_in_flight: 1024,
                max_unsettled: None,
            },
            &ids,
        );
        assert!(admission.mark_sold_out(&ids.sku));
        admission.set_recorded_keys(&ids.sku, 0, HashSet::new());
        group.bench_function("refusal_from_memory", |b| {
            b.iter(|| {
                let refused =
                    admission.admit_reserve(black_box(&ids.sku), &ids.user, &ids.key, NOW_MS);
                assert!(matches!(refused, Err(Refusal::SoldOut)), "{refused:?}");
            })
        });
        group.finish();
    }
}

mod reshared {
    //! `admission/reshared`: one `admit_reserve` that admits, as in `one_thread`, while
    //! another thread puts a new plan in force every millisecond (an engine registry whose
    //! shares change at every heartbeat does so once a second). The admit reads the buckets
    //! with one atomic load of the set `apply` swaps; this measures what the swaps cost it.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    use super::*;
    use flashsale::admission::LimitPlan;
    use std::hint::black_box;

    pub fn bench(c: &mut Criterion) {
        let ids = Ids::new();
        let mut group = c.benchmark_group("admission/reshared");
        let config = AdmissionConfig {
            global: Some(generous()),
            per_sku: Some(generous()),
            max_in_flight: 1024,
            max_unsettled: None,
        };
        let admission = admission_knowing(&config, &ids);
        let plans = [0.5, 1.0].map(|fraction| LimitPlan {
            global: Some(generous().share(fraction)),
            per_sku: Some(generous().share(fraction)),
            own: Default::default(),
        });
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            scope.spawn(|| {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    admission.apply(&plans[n % 2]);
                    n += 1;
                    thread::sleep(Duration::from_millis(1));
                }
            });
            group.bench_function("admit_while_swapping", |b| {
                b.iter(|| {
                    let permit = admission
                        .admit_reserve(black_box(&ids.sku), &ids.user, &ids.key, NOW_MS)
                        .expect("a generous bucket admits");
                    drop(permit);
                })
            });
            stop.store(true, Ordering::Relaxed);
        });
        group.finish();
    }
}

criterion_group!(
    benches,
    one_thread::bench,
    contended::bench,
    sold_out::bench,
    reshared::bench
);
criterion_main!(benches);
