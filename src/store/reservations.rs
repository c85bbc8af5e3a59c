//! Reservations: the Try (reserve), Confirm and Cancel, and reads of a hold.

use redis::Value;

use super::moves::Refill;
use super::records::{hold_field, HoldRecord, UserRecord};
use super::{parse, ExpiredBecause, HoldState, QuantityBound, Reservation, ReserveRequest};
use super::{Reserved, Store, StoreError, MAX_RESERVE_ROUNDS};
use crate::ids::{CallerName, HoldOrigin, IdempotencyKey, ReservationId, Sku, UserId};
use crate::scripts::{RawHold, RawReserve, ScriptCode};
use crate::sharding::home_shard;

impl Store {
    /// The Try: holds `request.quantity` units for the user until the SKU's hold time has
    /// passed. The same key with the same quantity returns the original reservation
    /// (`replayed`); a refusal says why. Sold out means that no shard of the SKU had the
    /// units when this reserve last looked, after completing moves in flight and
    /// returning expired holds.
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<Reserved, StoreError> {
        let mut config = self.config(&request.sku).await?;
        if request.quantity == 0 || request.quantity > config.per_user_limit {
            return Err(StoreError::InvalidQuantity(QuantityBound::PerUser(
                config.per_user_limit,
            )));
        }
        for _ in 0..MAX_RESERVE_ROUNDS {
            let shard = home_shard(&request.user, config.shards);
            let id = ReservationId::generate(&request.sku, shard);
            let (now, reply) = self
                .reserve_coalesced(shard, config.shards, id, request)
                .await?;
            self.observe_redis_time(now);
            let code = StoreError::from_raw(reply.0)?;
            match code {
                ScriptCode::Ok | ScriptCode::Replayed => {
                    let (_, rid, state, qty, deadline, caller) = reply;
                    let raw = (
                        0,
                        rid,
                        state,
                        request.user.to_string(),
                        qty,
                        deadline,
                        request.key.to_string(),
                        caller,
                    );
                    return Ok(Reserved {
                        reservation: reservation_from(&request.sku, raw, now)?,
                        replayed: code == ScriptCode::Replayed,
                    });
                }
                ScriptCode::DuplicateId => continue,
                // The SKU was replaced with another shard count since this engine read it:
                // the user's home shard may be another one now.
                ScriptCode::StaleRoute => {
                    config = self
                        .reload_config(&request.sku)
                        .await?
                        .ok_or(StoreError::UnknownSku)?;
                }
                ScriptCode::ShardEmpty => {
                    match self.refill(&config, shard, request.quantity).await? {
                        Refill::Ready => {}
                        Refill::Short { available: 0 } => return Err(StoreError::SoldOut),
                        Refill::Short { .. } => return Err(StoreError::InsufficientStock),
                    }
                }
                ScriptCode::NoSku => {
                    self.drop_sku(&request.sku);
                    return Err(StoreError::UnknownSku);
                }
                ScriptCode::BadQty => {
                    // The limit changed in Redis since this engine cached it: name the
                    // new one.
                    self.forget(&request.sku);
                    let limit = self.config(&request.sku).await?.per_user_limit;
                    return Err(StoreError::InvalidQuantity(QuantityBound::PerUser(limit)));
                }
                other => return Err(StoreError::from_code(other)),
            }
        }
        Err(StoreError::Contended)
    }

    /// One call of `reserve.lua` for requests that all live in `shard` of one SKU.
    /// Returns Redis's time, the shard's available units after the call, and a reply per
    /// request in order.
    pub async fn reserve_batch(
        &self,
        shard: u16,
        shards: u16,
        requests: &[(&ReservationId, &ReserveRequest)],
    ) -> Result<(u64, i64, Vec<RawReserve>), StoreError> {
        let Some((_, first)) = requests.first() else {
            return Ok((0, 0, Vec::new()));
        };
        let mut call = self.invocation(&self.inner.scripts.reserve, &first.sku, shard, false);
        call.arg(shards).arg(requests.len());
        for (id, request) in requests {
            debug_assert_eq!(request.sku, first.sku, "one batch, one SKU");
            call.arg(id.as_str())
                .arg(hold_field(id.as_str()))
                .arg(request.user.as_str())
                .arg(request.quantity)
                .arg(request.key.as_str())
                .arg(caller_arg(request.caller.as_ref()));
        }
        let reply: Vec<Value> = call.invoke_async(&mut self.connection()).await?;
        let bad = || StoreError::Protocol("unexpected reserve reply".into());
        let mut parts = reply.into_iter();
        let (Some(now), Some(avail), Some(replies)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (now, avail): (u64, i64) = (parse(now)?, parse(avail)?);
        let replies = match parts.next() {
            // The fast path: a code per request, one deadline for every new hold.
            Some(deadline) => {
                let deadline: u64 = parse(deadline)?;
                let codes: Vec<i64> = parse(replies)?;
                if codes.len() != requests.len() {
                    return Err(bad());
                }
                codes
                    .into_iter()
                    .zip(requests)
                    .map(|(code, (id, request))| {
                        if code == ScriptCode::Ok as i64 {
                            (
                                code,
                                id.to_string(),
                                "h".to_owned(),
                                u64::from(request.quantity),
                                deadline,
                                caller_arg(request.caller.as_ref()).to_owned(),
                            )
                        } else {
                            (code, String::new(), String::new(), 0, 0, String::new())
                        }
                    })
                    .collect()
            }
            None => parse(replies)?,
        };
        Ok((now, avail, replies))
    }

    /// The Confirm: turns a hold into a sale. Idempotent. A hold past its deadline is
    /// confirmed if its units can be taken again (from its shard, or moved there from
    /// another); otherwise [`StoreError::Expired`]. With a `caller`, a reservation another
    /// named caller made is refused ([`StoreError::NotOwner`]).
    pub async fn confirm(
        &self,
        id: &ReservationId,
        caller: Option<&CallerName>,
    ) -> Result<Reservation, StoreError> {
        for _ in 0..MAX_RESERVE_ROUNDS {
            self.trusted()?;
            let (now, _, reply, reason): (u64, i64, RawHold, String) = self
                .invocation(&self.inner.scripts.confirm, id.sku(), id.shard(), false)
                .arg(id.as_str())
                .arg(caller_arg(caller))
                .invoke_async(&mut self.connection())
                .await?;
            self.observe_redis_time(now);
            match StoreError::from_raw(reply.0)? {
                ScriptCode::Ok | ScriptCode::Replayed => {
                    // A replayed confirm waits too: the first answer may have been lost
                    // before its write reached a replica.
                    self.wait_for_replicas(id).await?;
                    return reservation_from(id.sku(), reply, now);
                }
                ScriptCode::NoSku | ScriptCode::NotFound => return Err(StoreError::NotFound),
                ScriptCode::CartLine => return Err(cart_line(&reply)),
                ScriptCode::Expired if reason == "limit" => {
                    return Err(StoreError::Expired(ExpiredBecause::Limit))
                }
                ScriptCode::Expired => {
                    let config = self.config(id.sku()).await?;
                    let need = u32::try_from(reply.4).unwrap_or(u32::MAX);
                    if self.refill(&config, id.shard(), need).await? != Refill::Ready {
                        return Err(StoreError::Expired(ExpiredBecause::Stock));
                    }
                }
                other => return Err(StoreError::from_code(other)),
            }
        }
        Err(StoreError::Contended)
    }

    /// With `confirm_wait` set, waits until that many replicas of the shard's master have
    /// every write this connection made so far (`WAIT`, on that master), or its timeout. A
    /// confirm still short of them is refused with [`StoreError::NotReplicated`] (it is in
    /// Redis, but a failover now could lose it; the client's retry replays it and waits
    /// again) and counted in [`Store::confirms_short_of_replicas`].
    pub(super) async fn wait_for_replicas(&self, id: &ReservationId) -> Result<(), StoreError> {
        let Some(wait) = self.inner.confirm_wait else {
            return Ok(());
        };
        let mut command = redis::cmd("WAIT");
        command
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis() as u64);
        let key = self.shard_keys(id.sku(), id.shard()).hash;
        let acked: u32 = parse(self.connection().on_node_of(&key, &command).await?)?;
        if acked < wait.replicas {
            self.inner
                .confirms_short
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::NotReplicated {
                acked,
                wanted: wait.replicas,
            });
        }
        Ok(())
    }

    /// Confirms refused because their replicas did not have them in time, since the start.
    pub fn confirms_short_of_replicas(&self) -> u64 {
        self.inner
            .confirms_short
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Cancel: returns a hold's units. Idempotent; a hold found past its deadline comes
    /// back [`HoldState::Expired`]; a confirmed one is refused, and so, with a `caller`, is
    /// one another named caller made.
    pub async fn cancel(
        &self,
        id: &ReservationId,
        caller: Option<&CallerName>,
    ) -> Result<Reservation, StoreError> {
        self.trusted()?;
        let (now, _, reply): (u64, i64, RawHold) = self
            .invocation(&self.inner.scripts.cancel, id.sku(), id.shard(), false)
            .arg(id.as_str())
            .arg(caller_arg(caller))
            .invoke_async(&mut self.connection())
            .await?;
        match StoreError::from_raw(reply.0)? {
            ScriptCode::Ok => {
                self.units_returned(id.sku());
                reservation_from(id.sku(), reply, now)
            }
            ScriptCode::Replayed => reservation_from(id.sku(), reply, now),
            ScriptCode::NoSku | ScriptCode::NotFound => Err(StoreError::NotFound),
            ScriptCode::CartLine => Err(cart_line(&reply)),
            other => Err(StoreError::from_code(other)),
        }
    }

    /// The Cancel by idempotency key. Cancels the reservation the key made, if any;
    /// otherwise records a barrier so that a reserve arriving later with the key is
    /// refused. Returns the reservation when there was one. With a `caller`, a reservation
    /// another named caller made is refused.
    pub async fn cancel_by_key(
        &self,
        sku: &Sku,
        user: &UserId,
        key: &IdempotencyKey,
        caller: Option<&CallerName>,
    ) -> Result<Option<Reservation>, StoreError> {
        let mut config = self.config(sku).await?;
        let mut rounds = 0;
        let (now, reply) = loop {
            let shard = home_shard(user, config.shards);
            self.trusted()?;
            let (now, _, reply): (u64, i64, RawHold) = self
                .invocation(&self.inner.scripts.cancel_by_key, sku, shard, false)
                .arg(user.as_str())
                .arg(key.as_str())
                .arg(config.shards)
                .arg(caller_arg(caller))
                .invoke_async(&mut self.connection())
                .await?;
            rounds += 1;
            if StoreError::from_raw(reply.0)? != ScriptCode::StaleRoute {
                break (now, reply);
            }
            if rounds == MAX_RESERVE_ROUNDS {
                return Err(StoreError::Contended);
            }
            config = self
                .reload_config(sku)
                .await?
                .ok_or(StoreError::UnknownSku)?;
        };
        match StoreError::from_raw(reply.0)? {
            ScriptCode::Ok | ScriptCode::Replayed if reply.1.is_empty() => Ok(None),
            ScriptCode::Ok => {
                self.units_returned(sku);
                reservation_from(sku, reply, now).map(Some)
            }
            ScriptCode::Replayed => reservation_from(sku, reply, now).map(Some),
            ScriptCode::NoSku => {
                self.drop_sku(sku);
                Err(StoreError::UnknownSku)
            }
            other => Err(StoreError::from_code(other)),
        }
    }

    /// Reads one reservation. A held hold past its deadline reads as expired.
    pub async fn reservation(&self, id: &ReservationId) -> Result<Reservation, StoreError> {
        let hash = self.shard_keys(id.sku(), id.shard()).hash;
        let (time, packed): ((u64, u64), Option<String>) = redis::pipe()
            .cmd("TIME")
            .hget(&hash, hold_field(id.as_str()))
            .query_async(&mut self.connection())
            .await?;
        let packed = packed.ok_or(StoreError::NotFound)?;
        let now = time.0 * 1000 + time.1 / 1000;
        let hold = HoldRecord::parse(&packed)
            .ok_or_else(|| StoreError::Protocol(format!("bad hold record {packed:?}")))?;
        // A single reservation's key is in its user's record, the field that names it.
        let origin = match &hold.cart {
            Some(cart) => format!("#{cart}"),
            None => {
                let record: Option<String> = redis::cmd("HGET")
                    .arg(&hash)
                    .arg(&hold.user)
                    .query_async(&mut self.connection())
                    .await?;
                record
                    .as_deref()
                    .and_then(UserRecord::parse)
                    .and_then(|r| r.key_of(hold_field(id.as_str())).map(str::to_owned))
                    .ok_or_else(|| StoreError::Protocol(format!("no key names {id}")))?
            }
        };
        let raw: RawHold = (
            ScriptCode::Ok as i64,
            id.to_string(),
            hold.state,
            hold.user,
            hold.quantity,
            hold.deadline_ms,
            origin,
            hold.caller.unwrap_or_default(),
        );
        reservation_from(id.sku(), raw, now)
    }

    /// Every `<user>:<key>` the SKU has recorded, a reservation's or a barrier's. The
    /// admission layer loads them when a SKU closes (sold out, ended), so that a client
    /// retrying a reserve that did succeed gets its reservation back, not a refusal.
    pub async fn recorded_keys(
        &self,
        sku: &Sku,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let config = self.config(sku).await?;
        let mut keys = std::collections::HashSet::new();
        let mut conn = self.connection();
        for shard in 0..config.ever_shards {
            let hash = self.shard_keys(sku, shard).hash;
            let mut cursor = 0u64;
            loop {
                // Users' records are the only fields that start with an id character.
                let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&hash)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("[^:~]*")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                for (user, text) in fields {
                    if let Some(record) = UserRecord::parse(&text) {
                        keys.extend(
                            record
                                .keys
                                .into_iter()
                                .map(|(key, _)| format!("{user}:{key}")),
                        );
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys)
    }
}

/// The caller argument of a script: the name, or empty for none.
pub(super) fn caller_arg(caller: Option<&CallerName>) -> &str {
    caller.map_or("", CallerName::as_str)
}

/// The refusal of a confirm or cancel of a cart's line, naming the cart.
fn cart_line(reply: &RawHold) -> StoreError {
    match HoldOrigin::parse(&reply.6) {
        Ok(HoldOrigin::Cart { cart, .. }) => StoreError::CartLine(cart),
        _ => StoreError::Protocol(format!("a cart line whose key is {:?}", reply.6)),
    }
}

/// Builds a reservation from a script's reply about it.
pub(super) fn reservation_from(
    sku: &Sku,
    raw: RawHold,
    now_ms: u64,
) -> Result<Reservation, StoreError> {
    let (_, rid, state, user, qty, deadline, key, caller) = raw;
    let bad = |what: &str| StoreError::Protocol(format!("bad {what} in reply for {rid:?}"));
    let id = ReservationId::parse(&rid).map_err(|_| bad("id"))?;
    if id.sku() != sku {
        return Err(bad("sku"));
    }
    Ok(Reservation {
        state: HoldState::decode(&state, deadline, now_ms).ok_or_else(|| bad("state"))?,
        user: UserId::new(user).map_err(|_| bad("user"))?,
        quantity: u32::try_from(qty).map_err(|_| bad("quantity"))?,
        deadline_ms: deadline,
        origin: HoldOrigin::parse(&key).map_err(|_| bad("key"))?,
        caller: match caller.as_str() {
            "" => None,
            name => Some(CallerName::new(name).map_err(|_| bad("caller"))?),
        },
        id,
    })
}
