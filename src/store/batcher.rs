//! Coalescing of concurrent reserves: one queue and one task per (SKU, shard).
//!
//! A script call's fixed cost (EVALSHA, TIME, one HMGET, HSET, ZADD and XADD) is most of
//! what a reserve costs Redis, so reserves that arrive while a call for their shard is in
//! flight wait and go together in the next one (`reserve.lua` takes a batch). An idle shard
//! adds no delay: a lone request is sent at once as a batch of one. Under load batches grow
//! by themselves, which is exactly when Redis time is scarce. On a single Redis the shards
//! also take turns, [`CALLS_IN_FLIGHT`] calls at a time: a shard waiting for its turn
//! gathers a larger batch rather than queueing a small one in Redis.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::{Inner, Store, StoreError};
use crate::ids::{ReservationId, Sku};
use crate::scripts::RawReserve;
use crate::store::ReserveRequest;

/// Most requests in one script call: bounds the time Redis spends in one script.
pub(super) const MAX_BATCH: usize = 64;
/// Requests that may wait for one shard before senders wait too.
const QUEUE: usize = 4096;
/// Reserve calls one store has in flight at once on a single Redis: one running, one on
/// its way. Redis runs one script at a time, so more calls queued in it serve nobody
/// sooner, while each pays the fixed cost; shards waiting for their turn meanwhile fill
/// their next batch instead.
pub(super) const CALLS_IN_FLIGHT: usize = 2;

/// A reserve waiting for its shard's next call.
pub(super) struct Pending {
    pub id: ReservationId,
    /// The SKU's shard count the request was routed by (checked by the script).
    pub shards: u16,
    pub request: ReserveRequest,
    pub reply: oneshot::Sender<Result<(u64, RawReserve), StoreError>>,
}

impl Store {
    /// Sends one reserve through its shard's queue and waits for the reply.
    pub(super) async fn reserve_coalesced(
        &self,
        shard: u16,
        shards: u16,
        id: ReservationId,
        request: &ReserveRequest,
    ) -> Result<(u64, RawReserve), StoreError> {
        let queue = self.queue(&request.sku, shard);
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id,
            shards,
            request: request.clone(),
            reply,
        };
        queue
            .send(pending)
            .await
            .map_err(|_| StoreError::Protocol("shard queue closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Protocol("shard queue dropped a request".into()))?
    }

    fn queue(&self, sku: &Sku, shard: u16) -> mpsc::Sender<Pending> {
        // The hot path only reads: no lock held for writing, no key built.
        if let Some(sender) = self
            .inner
            .queues
            .read()
            .get(sku)
            .and_then(|q| q.get(&shard))
        {
            return sender.clone();
        }
        let mut queues = self.inner.queues.write();
        queues
            .entry(sku.clone())
            .or_default()
            .entry(shard)
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(drain(Arc::downgrade(&self.inner), shard, receiver));
                sender
            })
            .clone()
    }
}

/// A batch holds at most one request per user: `reserve.lua`'s fast path then needs no
/// bookkeeping of what earlier requests of the batch did to a user's allowance. A second
/// request of a user waits for the next batch.
fn user_tag(pending: &Pending) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&pending.request.user, &mut hasher);
    std::hash::Hasher::finish(&hasher)
}

/// The shard's task: waits for a turn (see [`CALLS_IN_FLIGHT`]), takes whatever is queued
/// (up to [`MAX_BATCH`]), makes one call, answers each request, and goes again. It holds
/// the store weakly and ends with it.
async fn drain(inner: Weak<Inner>, shard: u16, mut queue: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut deferred: VecDeque<Pending> = VecDeque::new();
    let mut users: HashSet<u64> = HashSet::with_capacity(MAX_BATCH);
    loop {
        let first = match deferred.pop_front() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        // Wait for a turn before taking what is queued: what arrives meanwhile goes too.
        let _turn = match &inner.reserve_turns {
            Some(turns) => match turns.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return,
            },
            None => None,
        };
        users.clear();
        users.insert(user_tag(&first));
        // One call is checked against one routed shard count: requests routed by another
        // (an engine's copy of the SKU changing under it) wait for the next batch.
        let shards = first.shards;
        batch.push(first);
        // Deferred requests first (they waited), then what is queued.
        let mut still_deferred = VecDeque::new();
        while let Some(pending) = deferred.pop_front() {
            if batch.len() < MAX_BATCH
                && pending.shards == shards
                && users.insert(user_tag(&pending))
            {
                batch.push(pending);
            } else {
                still_deferred.push_back(pending);
            }
        }
        deferred = still_deferred;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) if next.shards == shards && users.insert(user_tag(&next)) => {
                    batch.push(next)
                }
                Ok(next) => deferred.push_back(next),
                Err(_) => break,
            }
        }
        let store = Store {
            inner: inner.clone(),
        };
        // Admitted before a connection dropped, these requests must not reach the Redis that
        // answers after it (a restarted one may have lost writes) until it has been checked.
        if store.redis_suspect() {
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(StoreError::Recovering));
            }
            continue;
        }
        let result = {
            let requests: Vec<_> = batch.iter().map(|p| (&p.id, &p.request)).collect();
            store.reserve_batch(shard, shards, &requests).await
        };
        let sent = batch.len();
        match result {
            Ok((now, _, replies)) if replies.len() == sent => {
                for (pending, reply) in batch.drain(..).zip(replies) {
                    let _ = pending.reply.send(Ok((now, reply)));
                }
            }
            Ok((_, _, replies)) => {
                let got = replies.len();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(StoreError::Protocol(format!(
                        "reserve answered {got} of {sent} requests"
                    ))));
                }
            }
            Err(error) => {
                let redis = match &error {
                    StoreError::Redis(e) => Some(e.clone()),
                    _ => None,
                };
                for pending in batch.drain(..) {
                    let each = match &redis {
                        Some(e) => StoreError::Redis(e.clone()),
                        None => StoreError::Protocol(error.to_string()),
                    };
                    let _ = pending.reply.send(Err(each));
                }
            }
        }
    }
}
