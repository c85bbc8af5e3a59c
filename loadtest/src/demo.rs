//! The demo sale (`flashsale-loadtest demo`): a private Redis, one SKU, many buyers at
//! once, on the store directly (no HTTP).
//!
//! Wave one: every buyer reserves concurrently (and sends the request a second time with
//! the same idempotency key, as a client retrying after a timeout would); of those who get
//! a hold, some confirm, some cancel and some walk away. Wave two comes after the abandoned
//! holds expired: new buyers take the units that came back. The demo then checks what a
//! sale must end with: every unit sold once, nobody over the limit, conservation exact.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use flashsale::ids::{random_token, IdempotencyKey, Sku, UserId};
use flashsale::maintenance;
use flashsale::store::{
    HoldState, ReserveRequest, SkuSpec, Store, StoreError, StoreOptions, Totals,
};
use flashsale::topology::RedisTarget;
use flashsale_testkit::LocalRedis;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Units on sale.
    pub stock: u64,
    /// Shards; `None` picks the default for the stock.
    pub shards: Option<u16>,
    /// Buyers in the first wave.
    pub users: u32,
    /// Concurrent buyers at any moment.
    pub concurrency: usize,
    /// How long a hold lasts.
    pub hold: Duration,
    /// A Redis (or cluster) to use instead of starting a private Redis.
    pub redis: Option<RedisTarget>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            stock: 500,
            shards: Some(8),
            users: 5_000,
            concurrency: 64,
            hold: Duration::from_millis(1500),
            redis: None,
        }
    }
}

/// What happened, and whether the sale ended right.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Units on sale.
    pub stock: u64,
    /// Shards used.
    pub shards: u16,
    /// Reserve calls in wave one (retries included).
    pub wave_one_calls: u64,
    /// Seconds wave one took.
    pub wave_one_secs: f64,
    /// Outcomes of every reserve call, by code.
    pub outcomes: HashMap<String, u64>,
    /// Idempotent repeats that returned the original reservation.
    pub replays: u64,
    /// Holds confirmed, cancelled, and left to expire in wave one.
    pub confirmed: u64,
    /// See `confirmed`.
    pub cancelled: u64,
    /// See `confirmed`.
    pub abandoned: u64,
    /// Units bought in wave two.
    pub wave_two_bought: u64,
    /// The SKU's totals at the end.
    pub totals: Totals,
    /// Units confirmed per buyer, maximum over buyers.
    pub max_units_per_user: u32,
    /// Everything that went wrong; empty for a correct sale.
    pub violations: Vec<String>,
}

/// Runs the demo sale.
pub async fn run(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    let (_redis, target) = match &options.redis {
        Some(target) => (None, target.clone()),
        None => {
            let redis = LocalRedis::start()?;
            let target = RedisTarget::from(redis.url());
            (Some(redis), target)
        }
    };
    let mut store_options = StoreOptions::new(target);
    store_options.prefix = format!("demo-{}:", random_token());
    let store = Store::connect(&store_options).await?;
    let sku = Sku::new("demo-phone")?;
    let spec = SkuSpec {
        shards: options.shards,
        hold: options.hold,
        ..SkuSpec::new(options.stock)
    };
    store.load(&sku, &spec).await?;
    let shards = store.config(&sku).await?.shards;
    let sweeper = maintenance::spawn(store.clone(), Duration::from_millis(100));

    let mut report = DemoReport {
        stock: options.stock,
        shards,
        ..DemoReport::default()
    };
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let started = Instant::now();
    let calls = wave(
        &store,
        &sku,
        "a",
        options.users,
        options.concurrency,
        &ledger,
        true,
    )
    .await?;
    report.wave_one_secs = started.elapsed().as_secs_f64();
    report.wave_one_calls = calls;

    // Wait for the abandoned holds to pass their deadline; the sweeper returns them.
    tokio::time::sleep(options.hold + Duration::from_millis(300)).await;
    maintenance::run_once(&store).await?;

    let second_wave = (options.stock as u32).saturating_mul(2).max(100);
    wave(
        &store,
        &sku,
        "b",
        second_wave,
        options.concurrency,
        &ledger,
        false,
    )
    .await?;
    sweeper.abort();

    let ledger = ledger.lock().clone();
    report.outcomes = ledger.outcomes;
    report.replays = ledger.replays;
    report.confirmed = ledger.confirmed_a;
    report.cancelled = ledger.cancelled;
    report.abandoned = ledger.abandoned;
    report.wave_two_bought = ledger.confirmed_b;
    report.totals = store.totals(&sku).await?;
    report.max_units_per_user = ledger.units_by_user.values().copied().max().unwrap_or(0);

    let t = report.totals;
    let sold_by_buyers = ledger.confirmed_a + ledger.confirmed_b;
    let mut check = |ok: bool, what: String| {
        if !ok {
            report.violations.push(what);
        }
    };
    check(t.conserved(), format!("conservation broken: {t:?}"));
    check(
        t.sold == sold_by_buyers,
        format!(
            "{} sold in redis, {sold_by_buyers} confirmed to buyers",
            t.sold
        ),
    );
    check(
        t.sold <= options.stock,
        format!("oversold: {} of {}", t.sold, options.stock),
    );
    check(
        t.sold == options.stock,
        format!(
            "undersold: {} of {} with demand above supply",
            t.sold, options.stock
        ),
    );
    check(
        report.max_units_per_user <= spec.per_user_limit,
        format!("a buyer got {} units", report.max_units_per_user),
    );
    Ok(report)
}

/// What the buyers saw, kept by the demo to check Redis against.
#[derive(Debug, Clone, Default)]
struct Ledger {
    outcomes: HashMap<String, u64>,
    replays: u64,
    confirmed_a: u64,
    confirmed_b: u64,
    cancelled: u64,
    abandoned: u64,
    units_by_user: HashMap<String, u32>,
}

/// `users` buyers named `<wave>-<n>`, `concurrency` at a time. In wave one a buyer with a
/// hold confirms (6 in 10), cancels (2 in 10) or walks away; in wave two every one confirms.
/// Returns the reserve calls made.
async fn wave(
    store: &Store,
    sku: &Sku,
    wave: &str,
    users: u32,
    concurrency: usize,
    ledger: &Arc<Mutex<Ledger>>,
    first: bool,
) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (store, sku, next, ledger) = (store.clone(), sku.clone(), next.clone(), ledger.clone());
        let wave = wave.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= users {
                    return Ok::<u64, anyhow::Error>(calls);
                }
                let user = UserId::new(format!("{wave}-{n}"))?;
                let request = ReserveRequest {
                    caller: None,
                    sku: sku.clone(),
                    user: user.clone(),
                    quantity: 1,
                    key: IdempotencyKey::new(format!("k-{wave}-{n}"))?,
                };
                let first_try = store.reserve(&request).await;
                // The client "timed out" and sends the same request again.
                let retry = if first {
                    Some(store.reserve(&request).await)
                } else {
                    None
                };
                calls += 1 + u64::from(retry.is_some());
                let book = |result: &Result<_, StoreError>| {
                    let code = match result {
                        Ok(_) => "held",
                        Err(e) => e.code(),
                    };
                    *ledger.lock().outcomes.entry(code.to_owned()).or_default() += 1;
                };
                book(&first_try);
                if let Some(retry) = &retry {
                    book(retry);
                    if let (Ok(a), Ok(b)) = (&first_try, retry) {
                        anyhow::ensure!(
                            b.replayed && a.reservation.id == b.reservation.id,
                            "retry made a second hold"
                        );
                        ledger.lock().replays += 1;
                    }
                }
                let Ok(held) = first_try else { continue };
                let id = held.reservation.id;
                match (first, n % 10) {
                    (true, 0..=5) | (false, _) => {
                        let confirmed = store.confirm(&id, None).await?;
                        anyhow::ensure!(confirmed.state == HoldState::Confirmed, "confirm failed");
                        let mut book = ledger.lock();
                        if first {
                            book.confirmed_a += 1
                        } else {
                            book.confirmed_b += 1
                        }
                        *book.units_by_user.entry(user.to_string()).or_default() +=
                            confirmed.quantity;
                    }
                    (true, 6..=7) => {
                        store.cancel(&id, None).await?;
                        ledger.lock().cancelled += 1;
                    }
                    _ => ledger.lock().abandoned += 1,
                }
            }
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await??;
    }
    Ok(calls)
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        writeln!(
            f,
            "flashsale demo: {} units over {} shards",
            self.stock, self.shards
        )?;
        writeln!(
            f,
            "wave one: {} reserve calls in {:.2} s ({:.0}/s), {} retries replayed the original hold",
            self.wave_one_calls,
            self.wave_one_secs,
            self.wave_one_calls as f64 / self.wave_one_secs.max(1e-9),
            self.replays
        )?;
        let mut outcomes: Vec<_> = self.outcomes.iter().collect();
        outcomes.sort();
        for (code, count) in outcomes {
            writeln!(f, "  {code:<16} {count:>8}")?;
        }
        writeln!(
            f,
            "holds: {} confirmed, {} cancelled, {} abandoned (expired); wave two bought {}",
            self.confirmed, self.cancelled, self.abandoned, self.wave_two_bought
        )?;
        writeln!(
            f,
            "totals: available {} held {} sold {} in transit {} | loaded {} restocked {}",
            t.available, t.held, t.sold, t.in_transit, t.loaded, t.restocked
        )?;
        writeln!(
            f,
            "conservation: loaded + restocked = available + held + sold + in transit: {}",
            if t.conserved() { "holds" } else { "BROKEN" }
        )?;
        writeln!(
            f,
            "most units bought by one buyer: {}",
            self.max_units_per_user
        )?;
        if self.violations.is_empty() {
            write!(f, "result: every unit sold exactly once")
        } else {
            write!(f, "result: FAILED: {}", self.violations.join("; "))
        }
    }
}
