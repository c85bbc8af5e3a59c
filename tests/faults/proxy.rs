//! A TCP fault-injection proxy for tests: it sits between the engine and a private
//! `redis-server` and adds latency, stalls traffic, resets connections or refuses new ones,
//! all inside the test process (this kernel has no netem).
//!
//! Include it with `#[path = "../faults/proxy.rs"] mod proxy;` from a test crate, or with
//! `mod proxy;` from `tests/faults/main.rs`. It uses only std, tokio, parking_lot and rand
//! (all dependencies of `flashsale`) and no `crate::` paths, so it works both ways.
//!
//! # Layout
//! - [`FaultProxy`] is the handle the test holds. Its setters take effect at once, for open
//!   connections as well as later ones.
//! - One accept task. Per connection, one task per direction (`pump`). Each pump reads
//!   16 KiB chunks into a queue and writes each chunk once it is due (latency) and the proxy
//!   is not stalled.
//! - Every connection has a `watch` of its `Fate`, set at most once by the proxy
//!   (`reset_all`, reset after a request, drop) or by a failing peer. Both pumps watch it and
//!   close their sockets the way it says.
//!
//! Invariant: the proxy never drops or reorders bytes on a connection it keeps open. It only
//! delays them, holds them or ends the whole connection.

// Each test crate uses its own subset of this API; the rest must not fail `-D warnings`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Size of one read, and so the largest chunk that gets delayed or counted as one request.
const CHUNK: usize = 16 * 1024;

/// Bytes a pump may hold (delayed or stalled) before it stops reading. Past this, TCP flow
/// control holds the sender back, so a stall holds data without unbounded memory.
const MAX_QUEUED: usize = 1024 * 1024;

/// A TCP proxy on `127.0.0.1` in front of one upstream address, with faults switched on and
/// off by the test. Dropping it stops the accept loop and resets every open connection.
pub struct FaultProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// State shared with the accept task and every connection task.
    shared: Arc<Shared>,
    /// The accept loop; aborted on drop.
    accept_task: JoinHandle<()>,
}

/// What the handle, the accept loop and the pumps share.
struct Shared {
    /// Where every accepted connection is forwarded.
    upstream: SocketAddr,
    /// Delay added to each chunk, in nanoseconds, read once per chunk when it arrives.
    latency_nanos: AtomicU64,
    /// True while stalled. A `watch` rather than an atomic so that stalled pumps sleep until
    /// it changes instead of polling it.
    stalled: watch::Sender<bool>,
    /// `f64::to_bits` of the probability that a chunk sent upstream resets its connection.
    reset_probability_bits: AtomicU64,
    /// True while new connections are refused.
    refuse: AtomicBool,
    /// Every connection accepted, including refused ones.
    accepted: AtomicU64,
    /// Connections reset by the proxy on purpose (not peer failures, not the final drop).
    resets: AtomicU64,
    /// The open connections, so that `reset_all` reaches them synchronously.
    registry: parking_lot::Mutex<Registry>,
}

/// The open connections. Behind a blocking mutex: it is held only to copy or edit the map,
/// never across an `.await`.
struct Registry {
    /// Id for the next connection.
    next_id: u64,
    /// Open connections by id. `Weak` so that the registry does not keep a connection alive.
    /// A connection removes itself when its last pump ends.
    open: HashMap<u64, Weak<Conn>>,
    /// Set when the proxy is dropped: no connection registers after that.
    closed: bool,
}

/// How a connection ends, decided once and watched by both of its pumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Forwarding as usual. Ending by end-of-stream from both peers needs no fate.
    Open,
    /// Reset both the client and the upstream sockets (RST, no FIN first).
    Reset,
    /// Reset the client but close upstream normally, so that what was already forwarded
    /// is read and run by the server even though its reply is lost.
    ResetClient,
}

/// One proxied connection, shared by its two pumps.
struct Conn {
    /// Key in the registry.
    id: u64,
    /// The proxy's state, for counters and to deregister on drop.
    shared: Arc<Shared>,
    /// The connection's fate; pumps subscribe to it.
    fate: watch::Sender<Fate>,
}

/// Which way a pump forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server: requests. Reset-after-request applies here.
    ToUpstream,
    /// Server to client: replies.
    ToClient,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards every accepted connection to `upstream`.
    ///
    /// Must be called inside a tokio runtime; the proxy's tasks run on it.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            latency_nanos: AtomicU64::new(0),
            stalled: watch::Sender::new(false),
            reset_probability_bits: AtomicU64::new(0f64.to_bits()),
            refuse: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            registry: parking_lot::Mutex::new(Registry {
                next_id: 0,
                open: HashMap::new(),
                closed: false,
            }),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FaultProxy {
            addr,
            shared,
            accept_task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>`, for clients that take a URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Adds this much delay to every chunk forwarded, in both directions, from now on.
    ///
    /// Each chunk is due `latency` after it was read, and chunks read while earlier ones
    /// wait are delayed alongside them, not after them, as on a slow link. A request and its
    /// reply therefore take at least twice `latency`. Chunks already waiting keep the delay
    /// they had when they arrived.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Stops forwarding in both directions. Data is held, not dropped: each direction of
    /// each connection keeps reading up to 1 MiB, then TCP flow control holds the sender.
    /// New connections are still accepted and connected upstream, but carry no data.
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Ends a [`stall`](Self::stall): held data is forwarded in order, with whatever
    /// latency it was given on arrival (already elapsed if it waited long enough).
    pub fn unstall(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Resets every open connection now, on both sides (RST rather than FIN, so a client sees
    /// "connection reset"). Data held by the proxy is lost. New connections are accepted as
    /// usual. Each connection reset counts in [`resets_injected`](Self::resets_injected).
    pub fn reset_all(&self) {
        for conn in self.shared.open_connections() {
            conn.doom(Fate::Reset, true);
        }
    }

    /// From now on, each chunk sent upstream (client to server) resets its connection with
    /// probability `p`, right after the chunk was forwarded. The command reaches the server
    /// and runs, but the client gets a reset instead of the reply: a connection reset
    /// mid-script, as the client sees it. `p` is clamped to `0.0..=1.0`; `0.0` (or NaN)
    /// turns it off.
    ///
    /// The client side is reset; the upstream side is closed normally, so the server still
    /// reads everything already forwarded to it. A client that sends its setup commands on
    /// connect (redis-rs does) fails to connect while `p` is 1.0: connect first, then set it.
    pub fn set_reset_after_request_probability(&self, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.shared
            .reset_probability_bits
            .store(p.to_bits(), Ordering::Relaxed);
    }

    /// While true, new connections are accepted and immediately reset, so connecting
    /// succeeds at the TCP level and fails on the first exchange. Open connections are left
    /// alone.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Connections accepted so far, including refused ones.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections the proxy has reset on purpose so far, by [`reset_all`](Self::reset_all)
    /// or by reset-after-request. Refused connections and failures of a peer are not counted.
    pub fn resets_injected(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    /// Stops the accept loop and resets every open connection, which ends their tasks.
    fn drop(&mut self) {
        self.accept_task.abort();
        // Marking the registry closed under its lock means that a connection the accept loop
        // takes before the abort lands is refused rather than left running.
        let open = {
            let mut registry = self.shared.registry.lock();
            registry.closed = true;
            registry
                .open
                .values()
                .filter_map(Weak::upgrade)
                .collect::<Vec<_>>()
        };
        for conn in open {
            conn.doom(Fate::Reset, false);
        }
    }
}

impl Shared {
    /// The open connections. Collected with the registry locked, used after unlocking: the
    /// last `Arc` of a connection may drop here, and its `Drop` locks the registry.
    fn open_connections(&self) -> Vec<Arc<Conn>> {
        let registry = self.registry.lock();
        registry.open.values().filter_map(Weak::upgrade).collect()
    }

    /// The delay for a chunk arriving now.
    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    /// Whether the chunk just forwarded upstream should reset its connection.
    fn roll_reset_after_request(&self) -> bool {
        let p = f64::from_bits(self.reset_probability_bits.load(Ordering::Relaxed));
        // `random` is in `0.0..1.0`, so 1.0 always resets; skip the draw when it is off.
        p > 0.0 && rand::random::<f64>() < p
    }
}

impl Conn {
    /// Registers a new connection, or `None` if the proxy is being dropped.
    fn register(shared: &Arc<Shared>) -> Option<Arc<Conn>> {
        let mut registry = shared.registry.lock();
        if registry.closed {
            return None;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            shared: Arc::clone(shared),
            fate: watch::Sender::new(Fate::Open),
        });
        registry.open.insert(id, Arc::downgrade(&conn));
        Some(conn)
    }

    /// Sets the connection's fate unless it already has one: the first cause wins, so a
    /// reset is counted once even when both pumps or `reset_all` race to end it.
    fn doom(&self, fate: Fate, injected: bool) {
        let changed = self.fate.send_if_modified(|current| {
            if *current == Fate::Open {
                *current = fate;
                true
            } else {
                false
            }
        });
        if changed && injected {
            self.shared.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.registry.lock().open.remove(&self.id);
    }
}

/// Accepts until aborted. Refused connections are reset at once; the rest get a task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, or a connection reset before it was accepted: both
                // pass, and a pause keeps the loop from spinning on the first.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if shared.refuse.load(Ordering::Relaxed) {
            // Dropped with zero linger: the client sees a reset, not an orderly close.
            let _ = client.set_zero_linger();
            continue;
        }
        let Some(conn) = Conn::register(&shared) else {
            let _ = client.set_zero_linger();
            return;
        };
        tokio::spawn(connect_and_forward(client, conn));
    }
}

/// Connects upstream, then forwards both ways: replies in a task of their own, requests in
/// this one.
async fn connect_and_forward(client: TcpStream, conn: Arc<Conn>) {
    let mut fate = conn.fate.subscribe();
    let upstream = tokio::select! {
        // Doomed while connecting (reset_all, drop): the client gets its reset now.
        _ = fate.wait_for(|f| *f != Fate::Open) => None,
        connected = TcpStream::connect(conn.shared.upstream) => connected.ok(),
    };
    let Some(upstream) = upstream else {
        conn.doom(Fate::Reset, false);
        let _ = client.set_zero_linger();
        return;
    };
    // Nagle plus delayed ACKs would add tens of milliseconds to small requests: latency here
    // is what the test sets, nothing more.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::spawn(pump(
        Direction::ToClient,
        upstream_read,
        client_write,
        Arc::clone(&conn),
    ));
    pump(Direction::ToUpstream, client_read, upstream_write, conn).await;
}

/// Forwards one direction of a connection until end-of-stream or until the connection is
/// doomed, then closes its halves as the fate says.
///
/// Reading and writing alternate in one task, and a chunk read while earlier ones wait
/// joins the queue with its own due time, so latency delays chunks without adding up.
async fn pump(
    direction: Direction,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    conn: Arc<Conn>,
) {
    let shared = &conn.shared;
    let mut fate = conn.fate.subscribe();
    let mut stalled = shared.stalled.subscribe();
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued_bytes = 0;
    let mut buf = vec![0u8; CHUNK];
    let mut eof = false;
    loop {
        if *fate.borrow() != Fate::Open {
            break;
        }
        let is_stalled = *stalled.borrow_and_update();
        let now = Instant::now();
        let next_due = match queue.front() {
            Some((due, _)) if !is_stalled => Some(*due),
            _ => None,
        };
        if next_due.is_some_and(|due| due <= now) {
            let Some((_, chunk)) = queue.pop_front() else {
                unreachable!("next_due comes from the front of the queue")
            };
            queued_bytes -= chunk.len();
            // A peer that does not read would block this write forever; a reset must still
            // get through. What was partly written is lost with the connection anyway.
            let written = tokio::select! {
                biased;
                _ = fate.wait_for(|f| *f != Fate::Open) => break,
                written = to.write_all(&chunk) => written,
            };
            if written.is_err() {
                conn.doom(Fate::Reset, false);
                break;
            }
            // Decided only once the chunk is in the upstream socket: the server will read
            // it even though the client is reset before any reply can come back.
            if direction == Direction::ToUpstream && shared.roll_reset_after_request() {
                conn.doom(Fate::ResetClient, true);
                break;
            }
            continue;
        }
        if eof && queue.is_empty() {
            // Pass the half-close on; the other direction keeps going until its own end.
            let _ = to.shutdown().await;
            return;
        }
        tokio::select! {
            biased;
            _ = fate.wait_for(|f| *f != Fate::Open) => break,
            _ = stalled.changed() => {}
            _ = tokio::time::sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
            read = from.read(&mut buf), if !eof && queued_bytes < MAX_QUEUED => match read {
                Ok(0) => eof = true,
                Ok(n) => {
                    queue.push_back((Instant::now() + shared.latency(), buf[..n].to_vec()));
                    queued_bytes += n;
                }
                Err(_) => {
                    conn.doom(Fate::Reset, false);
                    break;
                }
            },
        }
    }
    close_doomed(direction, from, to, *fate.borrow());
}

/// Closes a doomed pump's halves: with a reset (zero linger and no FIN first) on the sides
/// the fate resets, normally on the others.
///
/// The socket closes when the other pump drops its half too; the linger option is on the
/// socket, so whichever half goes last sends the RST.
fn close_doomed(direction: Direction, from: OwnedReadHalf, to: OwnedWriteHalf, fate: Fate) {
    let reset_upstream = fate == Fate::Reset;
    let (reset_from, reset_to) = match direction {
        Direction::ToUpstream => (true, reset_upstream),
        Direction::ToClient => (reset_upstream, true),
    };
    if reset_from {
        let _ = from.as_ref().set_zero_linger();
    }
    if reset_to {
        let _ = to.as_ref().set_zero_linger();
        // Dropping a write half sends a FIN, and a peer that reads a FIN first reports a
        // clean end-of-stream instead of a reset.
        to.forget();
    }
}
