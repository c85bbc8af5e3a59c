//! The load generator. Open loop: every arrival leaves at its scheduled time whatever the
//! answers so far, and its latency is measured from that intended time, so a slow server
//! shows as latency rather than as fewer requests (no coordinated omission). A closed loop
//! (`saturate`) measures the most a server answers with a fixed number of connections.
//! Either loop sends over HTTP/1.1 or gRPC ([`Protocol`]), one connection per worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use rand::Rng;

use crate::chart::Span;
use crate::client::{Call, Connection, Target};
use crate::protocol::{LoadConnection, Protocol};
use crate::scenario::Scenario;
use crate::stats::Recorder;

/// A request due at `intended`.
#[derive(Debug, Clone)]
struct Job {
    call: Call,
    intended: Instant,
    /// For a reserve: the buyer and how many times it was sent before.
    user: Option<String>,
    attempt: u32,
}

/// What the buyers were told, kept to check the engine against.
#[derive(Debug, Default)]
pub struct Book {
    /// Holds granted: reservation id -> (buyer, units).
    pub holds: HashMap<String, (String, u32)>,
    /// Reservations confirmed to their buyer.
    pub confirmed: HashSet<String>,
    /// Reservations cancelled by their buyer.
    pub cancelled: HashSet<String>,
    /// Carts held: cart id -> its buyer and lines (SKU, reservation id).
    pub carts: HashMap<String, (String, Vec<(String, String)>)>,
    /// Carts confirmed to their buyer.
    pub carts_confirmed: HashSet<String>,
    /// Carts cancelled by their buyer.
    pub carts_cancelled: HashSet<String>,
    /// Refused carts: how long each took from its send to its answer, us. The lines a
    /// refused cart took were returned before the answer, so this bounds how long its
    /// units were away from other buyers.
    pub cart_refusals_us: Vec<u64>,
}

impl Book {
    /// Units confirmed per buyer.
    pub fn confirmed_by_user(&self) -> BTreeMap<String, u64> {
        let mut by_user = BTreeMap::new();
        for rid in &self.confirmed {
            if let Some((user, qty)) = self.holds.get(rid) {
                *by_user.entry(user.clone()).or_default() += u64::from(*qty);
            }
        }
        by_user
    }
}

/// What the closing wave did.
#[derive(Debug, Default)]
pub struct ClosingWave {
    /// Units it bought.
    pub bought: u64,
    /// Its reserves and confirms, with samples, timed from the start of the run.
    pub recorder: Recorder,
    /// When it ran, from the start of the run.
    pub span: Option<Span>,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Every answer of the main phase, with samples for the chart.
    pub recorder: Recorder,
    /// Arrivals: first reserves, one per scheduled buyer.
    pub arrivals: u64,
    /// Requests sent in the main phase (retries and follow-ups included).
    pub sent: u64,
    /// How long the arrivals took, from the first intended send to the last answer.
    pub elapsed: Duration,
    /// What the buyers were told (main phase and closing wave).
    pub book: Book,
    /// The closing wave, if it ran.
    pub closing: ClosingWave,
}

struct Shared {
    scenario: Scenario,
    start: Instant,
    queue: async_channel::Sender<Job>,
    /// Jobs queued or in flight; the run is over when it is 0 after the last arrival.
    outstanding: AtomicI64,
    sent: AtomicU64,
    held: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    book: Mutex<Book>,
}

impl Shared {
    fn enqueue(&self, job: Job) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let _ = self.queue.try_send(job);
    }
}

async fn worker(
    shared: Arc<Shared>,
    target: Target,
    jobs: async_channel::Receiver<Job>,
) -> Recorder {
    let mut recorder = Recorder::sampled();
    let mut connection: Option<LoadConnection> = None;
    let timeout = Duration::from_millis(shared.scenario.timeout_ms);
    let protocol = shared.scenario.protocol;
    while let Ok(job) = jobs.recv().await {
        if connection.is_none() {
            connection = LoadConnection::open(&target, protocol).await.ok();
        }
        let sent_at = Instant::now();
        let answer = match connection.as_mut() {
            Some(conn) => tokio::time::timeout(timeout, conn.send(&job.call)).await,
            None => Ok(Err(anyhow::anyhow!("cannot connect"))),
        };
        let from_send = sent_at.elapsed();
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let latency = job.intended.elapsed();
        let at = job.intended.saturating_duration_since(shared.start);
        let outcome = match answer {
            Ok(Ok(answer)) => {
                let outcome = answer.outcome(&job.call);
                if matches!(job.call, Call::Cart { .. }) && answer.status >= 400 {
                    let us = from_send.as_micros() as u64;
                    shared.book.lock().cart_refusals_us.push(us);
                }
                follow_up(&shared, &job, &answer, &outcome);
                outcome
            }
            Ok(Err(_)) => {
                connection = None;
                shared.failed.fetch_add(1, Ordering::Relaxed);
                "error".to_owned()
            }
            Err(_) => {
                // The answer may still come on this connection: start a fresh one.
                connection = None;
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if matches!(job.call, Call::Reserve { .. } | Call::Cart { .. })
                    && job.attempt < shared.scenario.retries
                {
                    shared.enqueue(Job {
                        intended: Instant::now(),
                        attempt: job.attempt + 1,
                        ..job.clone()
                    });
                }
                "timeout".to_owned()
            }
        };
        recorder.record(&outcome, at, latency);
        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
    recorder
}

/// Books an answer and schedules what the buyer does next.
fn follow_up(shared: &Arc<Shared>, job: &Job, answer: &crate::client::Answer, outcome: &str) {
    match (&job.call, outcome) {
        (Call::Reserve { quantity, .. }, "held" | "replayed") => {
            shared.held.fetch_add(1, Ordering::Relaxed);
            let Some(rid) = answer.reservation_id.clone() else {
                return;
            };
            let user = job.user.clone().unwrap_or_default();
            let fresh = shared
                .book
                .lock()
                .holds
                .insert(rid.clone(), (user, *quantity))
                .is_none();
            if !fresh {
                return;
            }
            let roll: f64 = rand::rng().random();
            let call = if roll < shared.scenario.confirm_share {
                Call::Confirm { rid }
            } else if roll < shared.scenario.confirm_share + shared.scenario.cancel_share {
                Call::Cancel { rid }
            } else {
                return; // abandoned: the hold expires
            };
            later(shared, call);
        }
        (Call::Cart { lines, .. }, "cart_held" | "cart_replayed") => {
            shared.held.fetch_add(1, Ordering::Relaxed);
            let Some(cart) = answer.cart_id.clone() else {
                return;
            };
            let user = job.user.clone().unwrap_or_default();
            let fresh = {
                let mut book = shared.book.lock();
                // The first SKU's line is a hold of it like any other, for its checks.
                let quantity = lines.first().map_or(1, |(_, q)| *q);
                for (sku, rid) in &answer.lines {
                    if *sku == shared.scenario.sku {
                        book.holds.insert(rid.clone(), (user.clone(), quantity));
                    }
                }
                book.carts
                    .insert(cart.clone(), (user, answer.lines.clone()))
                    .is_none()
            };
            if fresh {
                let call = |roll: f64| {
                    if roll < shared.scenario.confirm_share {
                        Some(Call::ConfirmCart { cart: cart.clone() })
                    } else if roll < shared.scenario.confirm_share + shared.scenario.cancel_share {
                        Some(Call::CancelCart { cart: cart.clone() })
                    } else {
                        None // abandoned: the cart expires
                    }
                };
                if let Some(call) = call(rand::rng().random()) {
                    later(shared, call);
                }
            }
        }
        (Call::ConfirmCart { cart }, "cart_confirmed") => {
            let mut book = shared.book.lock();
            book.carts_confirmed.insert(cart.clone());
            let lines = book.carts.get(cart).map(|(_, lines)| lines.clone());
            for (sku, rid) in lines.unwrap_or_default() {
                if sku == shared.scenario.sku {
                    book.confirmed.insert(rid);
                }
            }
        }
        (Call::CancelCart { cart }, "cart_cancelled") => {
            shared.book.lock().carts_cancelled.insert(cart.clone());
        }
        (Call::Confirm { rid }, "confirmed") => {
            shared.book.lock().confirmed.insert(rid.clone());
        }
        (Call::Cancel { rid }, "cancelled") => {
            shared.book.lock().cancelled.insert(rid.clone());
        }
        (
            _,
            "sold_out"
            | "insufficient_stock"
            | "limit_exceeded"
            | "rate_limited"
            | "cart_sold_out"
            | "cart_insufficient_stock"
            | "cart_limit_exceeded"
            | "cart_rate_limited",
        ) => {
            shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Whether arrival `n` is a bundle buyer's, when a `share` of them are: the arrivals where
/// the running count of bundles goes up.
fn bundles_at(n: u64, share: f64) -> bool {
    ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
}

/// Sends `call` after the buyer's think time.
fn later(shared: &Arc<Shared>, call: Call) {
    let think = Duration::from_millis(shared.scenario.think_ms);
    shared.outstanding.fetch_add(1, Ordering::AcqRel);
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(think).await;
        let _ = shared.queue.try_send(Job {
            call,
            intended: Instant::now(),
            user: None,
            attempt: 0,
        });
    });
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} arrivals  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Replays `scenario` against `targets`: the arrivals open loop, then (if asked) the
/// closing wave. Worker connection `i` goes to engine `i mod targets.len()`, so the buyers
/// (and the confirms and cancels that follow, whichever worker sends them) spread over
/// every engine; the closing wave goes to the first.
pub async fn replay(
    targets: &[Target],
    scenario: &Scenario,
    show_progress: bool,
) -> anyhow::Result<RunOutcome> {
    anyhow::ensure!(!targets.is_empty(), "no engine to send the sale to");
    let schedule = scenario
        .profile
        .schedule(Duration::from_millis(scenario.duration_ms));
    let (queue, jobs) = async_channel::unbounded();
    let start = Instant::now() + Duration::from_millis(50);
    let shared = Arc::new(Shared {
        scenario: scenario.clone(),
        start,
        queue,
        outstanding: AtomicI64::new(0),
        sent: AtomicU64::new(0),
        held: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        book: Mutex::new(Book::default()),
    });
    let workers: Vec<_> = (0..scenario.connections)
        .map(|i| {
            let target = targets[i % targets.len()].clone();
            tokio::spawn(worker(shared.clone(), target, jobs.clone()))
        })
        .collect();

    let bar = progress_bar(show_progress, schedule.len() as u64);
    let ticker = {
        let (shared, bar) = (shared.clone(), bar.clone());
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let sent = shared.sent.load(Ordering::Relaxed);
                let rate = (sent - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), sent);
                bar.set_message(format!(
                    "{rate:>7.0} req/s  held {}  refused {}  errors {}",
                    shared.held.load(Ordering::Relaxed),
                    shared.refused.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };

    // The dispatcher: each arrival leaves at its time; if the dispatcher itself falls
    // behind, the late ones still carry their intended time.
    for (n, offset) in schedule.iter().enumerate() {
        let intended = start + *offset;
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let user = format!("user-{}", n as u64 % scenario.users);
        let call = match &scenario.bundle {
            // Every k-th arrival is a bundle buyer, k from the share: spread evenly.
            Some(bundle) if bundles_at(n as u64, bundle.share) => Call::Cart {
                user: user.clone(),
                lines: vec![
                    (scenario.sku.clone(), scenario.quantity),
                    (bundle.sku.clone(), 1),
                ],
                key: format!("cart-{n}"),
            },
            _ => Call::Reserve {
                sku: scenario.sku.clone(),
                user: user.clone(),
                quantity: scenario.quantity,
                key: format!("order-{n}"),
            },
        };
        shared.enqueue(Job {
            call,
            intended,
            user: Some(user),
            attempt: 0,
        });
        if n % 256 == 0 {
            bar.set_position(n as u64);
        }
    }
    bar.set_position(schedule.len() as u64);
    while shared.outstanding.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    shared.queue.close();
    ticker.abort();
    bar.finish_and_clear();
    let mut recorder = Recorder::default();
    for worker in workers {
        recorder.merge(&worker.await?);
    }
    let closing = if scenario.closing_wave {
        closing_wave(&targets[0], scenario, &shared).await?
    } else {
        ClosingWave::default()
    };
    let book = std::mem::take(&mut *shared.book.lock());
    Ok(RunOutcome {
        recorder,
        arrivals: schedule.len() as u64,
        sent: shared.sent.load(Ordering::Relaxed),
        elapsed,
        book,
        closing,
    })
}

/// Sends `call` on `conn` and records its answer, at its offset from `start`.
async fn send_recorded(
    conn: &mut LoadConnection,
    call: &Call,
    recorder: &mut Recorder,
    start: Instant,
) -> anyhow::Result<crate::client::Answer> {
    let sent = Instant::now();
    let answer = conn.send(call).await?;
    recorder.record(
        &answer.outcome(call),
        sent.saturating_duration_since(start),
        sent.elapsed(),
    );
    Ok(answer)
}

/// After the abandoned holds have expired, buyers who all confirm come one after another
/// until the SKU has nothing available and nothing held: a sale with demand above supply
/// must end with every unit sold. Its buyers use the scenario's protocol; the SKU is read
/// over HTTP.
async fn closing_wave(
    target: &Target,
    scenario: &Scenario,
    shared: &Arc<Shared>,
) -> anyhow::Result<ClosingWave> {
    tokio::time::sleep(Duration::from_secs_f64(scenario.hold_seconds) + Duration::from_millis(500))
        .await;
    let mut conn = LoadConnection::open(target, scenario.protocol).await?;
    let mut reads = Connection::open(target).await?;
    let sku_path = format!("/v1/skus/{}", scenario.sku);
    let began = shared.start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut wave = ClosingWave {
        recorder: Recorder::sampled(),
        ..ClosingWave::default()
    };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let user = format!("closing-{n}");
        let call = Call::Reserve {
            sku: scenario.sku.clone(),
            user: user.clone(),
            quantity: 1,
            key: format!("closing-{n}"),
        };
        let answer = send_recorded(&mut conn, &call, &mut wave.recorder, shared.start).await?;
        if let (201, Some(rid)) = (answer.status, answer.reservation_id.clone()) {
            let confirm = Call::Confirm { rid: rid.clone() };
            let confirm =
                send_recorded(&mut conn, &confirm, &mut wave.recorder, shared.start).await?;
            if confirm.status == 200 {
                let mut book = shared.book.lock();
                book.holds.insert(rid.clone(), (user, 1));
                book.confirmed.insert(rid);
                wave.bought += 1;
            }
            continue;
        }
        let sku = reads
            .json(&Call::Get {
                path: sku_path.clone(),
            })
            .await?;
        let (available, held) = (sku["available"].as_u64(), sku["held"].as_u64());
        if available == Some(0) && held == Some(0) {
            break;
        }
        // Units are still held (a late buyer confirming) or coming back: look again soon.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wave.span = Some(Span {
        start: began,
        end: shared.start.elapsed(),
    });
    Ok(wave)
}

/// A closed-loop measurement: `connections` workers, each on a connection of its own over
/// `protocol`, send `make(n)` back to back for `duration`; latency is measured per request
/// from its send.
pub async fn saturate(
    target: &Target,
    protocol: Protocol,
    connections: usize,
    duration: Duration,
    make: Arc<dyn Fn(u64) -> Call + Send + Sync>,
) -> anyhow::Result<(Recorder, Duration)> {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (target, counter, make) = (target.clone(), counter.clone(), make.clone());
            tokio::spawn(async move {
                let mut recorder = Recorder::default();
                let mut conn = LoadConnection::open(&target, protocol).await.ok();
                while Instant::now() < end {
                    let call = make(counter.fetch_add(1, Ordering::Relaxed));
                    let sent = Instant::now();
                    let outcome = match conn.as_mut() {
                        Some(c) => match c.send(&call).await {
                            Ok(answer) => answer.outcome(&call),
                            Err(_) => {
                                conn = LoadConnection::open(&target, protocol).await.ok();
                                "error".to_owned()
                            }
                        },
                        None => {
                            conn = LoadConnection::open(&target, protocol).await.ok();
                            "error".to_owned()
                        }
                    };
                    recorder.record(&outcome, sent - start, sent.elapsed());
                }
                recorder
            })
        })
        .collect();
    let mut recorder = Recorder::default();
    for worker in workers {
        recorder.merge(&worker.await?);
    }
    Ok((recorder, start.elapsed()))
}

/// An open loop at a constant `rate` for `duration`: `make(n)` leaves at its intended time
/// whatever the answers so far, over `connections` connections of `protocol`. Returns the
/// records with latency from the intended time, the same answers with latency from the
/// actual send (what the server took, without the generator's own backlog), and the time
/// until the last answer.
pub async fn offer(
    target: &Target,
    protocol: Protocol,
    rate: f64,
    duration: Duration,
    connections: usize,
    timeout: Duration,
    make: Arc<dyn Fn(u64) -> Call + Send + Sync>,
) -> anyhow::Result<(Recorder, Recorder, Duration)> {
    let (queue, jobs) = async_channel::unbounded::<(Call, Instant)>();
    let start = Instant::now() + Duration::from_millis(20);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (target, jobs) = (target.clone(), jobs.clone());
            tokio::spawn(async move {
                let (mut recorder, mut service) = (Recorder::default(), Recorder::default());
                let mut conn: Option<LoadConnection> = None;
                while let Ok((call, intended)) = jobs.recv().await {
                    if conn.is_none() {
                        conn = LoadConnection::open(&target, protocol).await.ok();
                    }
                    let sent = Instant::now();
                    let answer = match conn.as_mut() {
                        Some(c) => tokio::time::timeout(timeout, c.send(&call)).await,
                        None => Ok(Err(anyhow::anyhow!("cannot connect"))),
                    };
                    let outcome = match answer {
                        Ok(Ok(answer)) => answer.outcome(&call),
                        Ok(Err(_)) => {
                            conn = None;
                            "error".to_owned()
                        }
                        Err(_) => {
                            conn = None;
                            "timeout".to_owned()
                        }
                    };
                    let at = intended.saturating_duration_since(start);
                    recorder.record(&outcome, at, intended.elapsed());
                    service.record(&outcome, at, sent.elapsed());
                }
                (recorder, service)
            })
        })
        .collect();
    let schedule = crate::scenario::Profile::Constant { rate }.schedule(duration);
    for (n, offset) in schedule.iter().enumerate() {
        let intended = start + *offset;
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let _ = queue.try_send((make(n as u64), intended));
    }
    queue.close();
    let (mut recorder, mut service) = (Recorder::default(), Recorder::default());
    for worker in workers {
        let (from_intended, from_send) = worker.await?;
        recorder.merge(&from_intended);
        service.merge(&from_send);
    }
    Ok((recorder, service, start.elapsed()))
}
