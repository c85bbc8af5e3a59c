//! The reserve path below HTTP, against a real Redis: the store's script round trip, the
//! same with admission in front as the handler runs it, and the sweeper returning expired
//! holds. Where `reserve_throughput` measures how many reserves many tasks get through,
//! these measure what one call costs when nothing else is running, so that a change to a
//! script, the batcher or admission shows up as a latency change.
//!
//! `cargo bench --bench reserve_path` (short run: `-- --warm-up-time 1 --measurement-time 3`).
//! It starts a private `redis-server` (see `LocalRedis`) once, before any measurement, and
//! uses a random key prefix.
//!
//! Groups, each documented in its module below:
//! - `reserve_path/store`: `Store::reserve`, one script round trip;
//! - `reserve_path/in_process`: `Admission::admit_reserve`, then `Store::reserve`;
//! - `reserve_path/sweep`: `Store::sweep` of a SKU with expired holds, per hold swept.

use std::cell::Cell;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use flashsale::admission::Admission;
use flashsale::config::ServeConfig;
use flashsale::ids::{random_token, IdempotencyKey, Sku, UserId};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale_testkit::LocalRedis;
use tokio::runtime::Runtime;

/// Units loaded per SKU: more than any run can reserve, so no reserve ever meets a
/// shortage (which would add a stock move or a lazy expiry to what is measured).
const STOCK: u64 = 100_000_000;
/// Shards per SKU, as a sale of that size would have.
const SHARDS: u16 = 8;

/// What every benchmark shares: started once, before anything is measured.
struct Fixture {
    /// Multi-threaded like `serve`'s (`#[tokio::main]`): the connection's reader and the
    /// shard batchers run on the workers, the measured future on the bench thread.
    runtime: Runtime,
    store: Store,
    /// Holds of an hour: the reserve benchmarks never see one expire.
    sku: Sku,
    /// Counter behind fresh user ids: a user may hold one unit, so every reserve is a new
    /// user's (a repeat would be refused for its limit, or replayed by its key).
    next_user: Cell<u64>,
    /// Dropped last: the server outlives the store's connection.
    redis: LocalRedis,
}

impl Fixture {
    fn start() -> Self {
        let redis = LocalRedis::start().expect("start redis-server");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut options = StoreOptions::new(redis.url());
        options.prefix = format!("bench-{}:", random_token());
        let store = runtime
            .block_on(Store::connect(&options))
            .expect("connect to redis");
        let sku = Sku::new("bench-reserve").unwrap();
        let spec = SkuSpec {
            shards: Some(SHARDS),
            hold: Duration::from_secs(3600),
            ..SkuSpec::new(STOCK)
        };
        runtime
            .block_on(store.load(&sku, &spec))
            .expect("load the SKU");
        Self {
            runtime,
            store,
            sku,
            next_user: Cell::new(0),
            redis,
        }
    }

    /// A reserve of one unit of `sku` by a user never seen before.
    fn fresh_request(&self, sku: &Sku) -> ReserveRequest {
        let n = self.next_user.get();
        self.next_user.set(n + 1);
        ReserveRequest {
            caller: None,
            sku: sku.clone(),
            user: UserId::new(format!("u{n}")).unwrap(),
            quantity: 1,
            key: IdempotencyKey::new("k").unwrap(),
        }
    }
}

mod store {
    //! `reserve_path/store`: one `Store::reserve` per iteration, each by a new user, one
    //! after the other. Nothing else is in flight, so the shard's batcher sends every
    //! request alone: this is a batch of one through `reserve.lua`, i.e. the client side
    //! (queue, `EVALSHA`, reply decoding) plus one loopback round trip plus the script's
    //! time in Redis. It is the latency a reserve cannot go below, and what the batcher
    //! must not add to when a shard is idle. The request is built outside the timing.

    use super::*;

    pub fn bench(c: &mut Criterion, f: &Fixture) {
        let mut group = c.benchmark_group("reserve_path/store");
        group.bench_function("reserve", |b| {
            b.to_async(&f.runtime).iter_batched(
                || f.fresh_request(&f.sku),
                |request| async move {
                    let reserved = f.store.reserve(&request).await.expect("reserve");
                    assert!(!reserved.replayed, "a fresh user's key is new");
                    reserved
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

mod in_process {
    //! `reserve_path/in_process`: what the reserve handler does once the request is parsed:
    //! `Admission::admit_reserve` (with `serve`'s default limits, which a lone caller never
    //! reaches) then `Store::reserve`, the permit held across the call. Compared with
    //! `reserve_path/store`, the difference is admission's share of a reserve that goes
    //! through; with HTTP left out, this is the engine's own latency per reserve.

    use super::*;

    pub fn bench(c: &mut Criterion, f: &Fixture) {
        let admission = Admission::new(&ServeConfig::local(f.redis.url()).admission());
        let config = f
            .runtime
            .block_on(f.store.config(&f.sku))
            .expect("SKU config");
        admission.know(&config);
        let admission = &admission;
        let mut group = c.benchmark_group("reserve_path/in_process");
        group.bench_function("admit_then_reserve", |b| {
            b.to_async(&f.runtime).iter_batched(
                || f.fresh_request(&f.sku),
                |request| async move {
                    let permit = admission
                        .admit_reserve(
                            &request.sku,
                            &request.user,
                            &request.key,
                            f.store.redis_now_ms(),
                        )
                        .expect("admitted under the default limits");
                    let reserved = f.store.reserve(&request).await.expect("reserve");
                    drop(permit);
                    reserved
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

mod sweep {
    //! `reserve_path/sweep`: `Store::sweep` returning expired holds, reported per hold
    //! swept. The sweeper is what gives units back after an abandoned checkout, so its cost
    //! per hold bounds how fast a sale refills; it runs one `sweep.lua` call per shard.
    //!
    //! Setup, not measured: a SKU with holds of 1 ms gets `HOLDS` reserves by new users
    //! (sent together, so the batcher groups them per shard), then a 5 ms sleep puts every
    //! hold past its deadline. The measured call must return exactly those holds.
    //!
    //! The setup is async and so is the sweep, but criterion's async `iter_batched` runs
    //! the (synchronous) setup inside the runtime's `block_on`, where another `block_on`
    //! is not allowed; the synchronous bencher with `Runtime::block_on` around each side
    //! does the same work. Each iteration costs far more in setup than in the sweep, so
    //! the group takes 10 samples, flat: criterion plans iterations by wall time, and 100
    //! linear samples would mean thousands of setups.

    use super::*;

    /// Expired holds per iteration: 25 a shard.
    const HOLDS: u64 = 200;
    /// Index entries a shard's sweep may look at: more than it has, so one call each.
    const MAX_PER_SHARD: u32 = 10_000;

    pub fn bench(c: &mut Criterion, f: &Fixture) {
        let sku = Sku::new("bench-sweep").unwrap();
        let spec = SkuSpec {
            shards: Some(SHARDS),
            hold: Duration::from_millis(1),
            ..SkuSpec::new(STOCK)
        };
        f.runtime
            .block_on(f.store.load(&sku, &spec))
            .expect("load the sweep SKU");
        let mut group = c.benchmark_group("reserve_path/sweep");
        group
            .throughput(Throughput::Elements(HOLDS))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat);
        group.bench_function(BenchmarkId::new("expired_holds", HOLDS), |b| {
            b.iter_batched(
                || f.runtime.block_on(expired_holds(f, &sku)),
                |()| {
                    let report = f
                        .runtime
                        .block_on(f.store.sweep(&sku, MAX_PER_SHARD))
                        .expect("sweep");
                    assert_eq!(report.expired, HOLDS, "every hold was due");
                    assert!(!report.more);
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }

    /// Leaves `HOLDS` holds of `sku` past their deadline.
    async fn expired_holds(f: &Fixture, sku: &Sku) {
        let requests: Vec<ReserveRequest> = (0..HOLDS).map(|_| f.fresh_request(sku)).collect();
        let reserves = futures::future::join_all(requests.iter().map(|r| f.store.reserve(r)));
        for reserved in reserves.await {
            reserved.expect("reserve");
        }
        // Holds last 1 ms by Redis's clock; 5 ms leaves room for clock granularity.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    // One server and store for every group (criterion_group! would start one per group).
    let fixture = Fixture::start();
    let mut c = Criterion::default().configure_from_args();
    store::bench(&mut c, &fixture);
    in_process::bench(&mut c, &fixture);
    sweep::bench(&mut c, &fixture);
    c.final_summary();
}
