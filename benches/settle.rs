//! The reconciler's settle path, per event: what each part costs one event, so that a
//! change to the decoding, the SQL or the stream calls shows up here before `compare`.
//!
//! `cargo bench --bench settle` (short run: `-- --warm-up-time 1 --measurement-time 3`).
//! It starts a private `redis-server`, and PostgreSQL when it can (see `LocalPostgres`);
//! SQLite is a file in a temporary directory. Entries are shaped as the reserve script
//! writes them under load: 6 reserve events per entry (the batches' average under HTTP
//! load), 500 entries per read.
//!
//! Groups:
//! - `settle/decode`: `Entry::parse` of a stream entry's fields, per event;
//! - `settle/apply_sqlite`, `settle/apply_postgres`: one read's entries applied in one
//!   transaction (`LedgerRepo::apply`), fresh reservations each time, per event;
//! - `settle/drain_sqlite`: the whole path from Redis: reserves written by the store
//!   beforehand (not timed), then `Reconciler::drain` reads, decodes, applies,
//!   acknowledges and trims them, per event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use flashsale::events::Entry;
use flashsale::ids::{random_token, IdempotencyKey, ReservationId, Sku, UserId};
use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::store::{ReserveRequest, SkuSpec, Store, StoreOptions};
use flashsale_testkit::{LocalPostgres, LocalRedis};
use tokio::runtime::Runtime;

/// Events per stream entry: what a script call of a coalesced batch writes on average
/// under HTTP load (0.16 script calls per reservation in `compare`'s reserve row).
const EVENTS_PER_ENTRY: usize = 6;
/// Entries per read: the reconciler's default batch.
const ENTRIES_PER_READ: usize = 500;
/// Shards of the SKU.
const SHARDS: u16 = 8;

/// The fields of one stream entry of `EVENTS_PER_ENTRY` fresh reserves on `shard`.
fn entry_fields(sku: &Sku, shard: u16, n: &mut u64) -> HashMap<String, String> {
    let events: Vec<String> = (0..EVENTS_PER_ENTRY)
        .map(|_| {
            *n += 1;
            format!(
                "reserved|{}|u{n}|1|1893456000000|k{n}",
                ReservationId::generate(sku, shard).as_str()
            )
        })
        .collect();
    HashMap::from([
        ("sku".to_owned(), sku.as_str().to_owned()),
        ("shard".to_owned(), shard.to_string()),
        ("ts".to_owned(), "1764633600000".to_owned()),
        ("ev".to_owned(), events.join("\n")),
    ])
}

/// One read's worth of decoded entries, every reservation new.
fn read_of_entries(sku: &Sku, n: &mut u64) -> Vec<Entry> {
    (0..ENTRIES_PER_READ)
        .map(|i| {
            let shard = (i % usize::from(SHARDS)) as u16;
            let id = format!("{}-{i}", 1_764_633_600_000u64 + *n);
            Entry::parse(&id, &entry_fields(sku, shard, n)).expect("a well-formed entry")
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let sku = Sku::new("bench").unwrap();
    let mut n = 0;
    let fields = entry_fields(&sku, 3, &mut n);
    let mut group = c.benchmark_group("settle");
    group.throughput(Throughput::Elements(EVENTS_PER_ENTRY as u64));
    group.bench_function("decode", |b| {
        b.iter(|| Entry::parse("1764633600000-0", &fields).unwrap())
    });
    group.finish();
}

fn apply(c: &mut Criterion, runtime: &Runtime, name: &str, ledger: &Ledger) {
    let sku = Sku::new("bench").unwrap();
    let mut n = 0;
    let mut group = c.benchmark_group("settle");
    group.throughput(Throughput::Elements(
        (ENTRIES_PER_READ * EVENTS_PER_ENTRY) as u64,
    ));
    group.sample_size(20);
    group.bench_function(name, |b| {
        b.iter_batched(
            || read_of_entries(&sku, &mut n),
            |entries| {
                let applied = runtime.block_on(ledger.apply(&entries)).unwrap();
                assert_eq!(
                    applied.applied,
                    (ENTRIES_PER_READ * EVENTS_PER_ENTRY) as u64
                );
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Writes `reserves` reserves through the store, 32 at a time as concurrent buyers would
/// (so that the batcher coalesces them into entries of several events).
async fn fill(store: &Store, sku: &Sku, first: u64, reserves: u64) {
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (store, sku) = (store.clone(), sku.clone());
            tokio::spawn(async move {
                let mut n = t;
                while n < reserves {
                    let request = ReserveRequest {
                        caller: None,
                        sku: sku.clone(),
                        user: UserId::new(format!("u{}", first + n)).unwrap(),
                        quantity: 1,
                        key: IdempotencyKey::new("k").unwrap(),
                    };
                    store.reserve(&request).await.unwrap();
                    n += 32;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn drain(c: &mut Criterion, runtime: &Runtime, redis: &LocalRedis, url: &str) {
    let mut options = StoreOptions::new(redis.url());
    options.prefix = format!("bench-{}:", random_token());
    let store = runtime.block_on(Store::connect(&options)).unwrap();
    let sku = Sku::new("bench").unwrap();
    let spec = SkuSpec {
        shards: Some(SHARDS),
        hold: Duration::from_secs(3600),
        ..SkuSpec::new(1_000_000_000)
    };
    runtime.block_on(store.load(&sku, &spec)).unwrap();
    let ledger = runtime.block_on(Ledger::connect(url)).unwrap();
    let reconciler = Reconciler::new(store.clone(), ledger, ReconcileOptions::new(), None);
    // The load's own events first, outside what is measured.
    assert!(runtime
        .block_on(reconciler.drain(Duration::from_secs(60)))
        .unwrap());
    let mut written = 0u64;
    let mut group = c.benchmark_group("settle");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("drain_sqlite", |b| {
        b.iter_custom(|events| {
            runtime.block_on(fill(&store, &sku, written, events));
            written += events;
            let started = Instant::now();
            assert!(runtime
                .block_on(reconciler.drain(Duration::from_secs(600)))
                .unwrap());
            started.elapsed()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().unwrap();

    decode(&mut c);
    let sqlite_url = format!("sqlite://{}/apply.db", dir.path().display());
    let sqlite = runtime.block_on(Ledger::connect(&sqlite_url)).unwrap();
    apply(&mut c, &runtime, "apply_sqlite", &sqlite);
    match LocalPostgres::start() {
        Ok(postgres) => {
            let ledger = runtime.block_on(Ledger::connect(&postgres.url())).unwrap();
            apply(&mut c, &runtime, "apply_postgres", &ledger);
        }
        Err(error) => eprintln!("settle/apply_postgres not measured: {error}"),
    }
    let redis = LocalRedis::start().expect("start redis-server");
    let drain_url = format!("sqlite://{}/drain.db", dir.path().display());
    drain(&mut c, &runtime, &redis, &drain_url);
    c.final_summary();
}
