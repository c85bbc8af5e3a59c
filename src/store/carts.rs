//! Carts: several SKUs held all together or not at all.
//!
//! A cart's lines live on the shards of several SKUs, so no one script can take them all.
//! The cart's record (`lua/cart.lua`, in a bucket of its own) is written first, the intent;
//! the lines are then taken one by one in SKU order (`lua/cart_line.lua`), each hold
//! tagged with the cart; on the first refusal the lines taken are returned in reverse
//! order. The record moves on by compare-and-set before and after each phase, and every
//! line operation is idempotent, so whoever drives a cart (this engine, or the maintenance
//! pass of any engine once a step's lease ran out) may repeat a step without harm, and a
//! cart is finished or rolled back exactly once. A line taken after its cart rolled back
//! cannot happen: rolling back a line that was never taken leaves a tombstone that the
//! late take finds.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::moves::Refill;
use super::reservations::caller_arg;
use super::SkuConfig;
use super::{Cart, CartLine, CartOpened, CartRequest, CartState, LineRefusal, QuantityBound};
use super::{Store, StoreError, MAX_RESERVE_ROUNDS};
use crate::ids::{CallerName, CartId, IdempotencyKey, ReservationId, Sku, UserId, CART_BUCKETS};
use crate::scripts::{RawHold, ScriptCode};
use crate::sharding::home_shard;

/// How long a cart may stay in a step (opening, confirming, ...) before the maintenance
/// pass takes it over: long enough for an engine under a spike to finish its own carts,
/// short enough that a lost engine's half-opened cart keeps its units away from buyers
/// only briefly.
pub const CART_LEASE: Duration = Duration::from_secs(5);

/// Carts a maintenance pass takes over per bucket, at most.
const TAKE_OVER_BATCH: usize = 64;

/// A cart's record as `lua/cart.lua` keeps it (JSON); the script adds its own times.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    user: String,
    key: String,
    state: String,
    deadline: u64,
    lines: Vec<RecordLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caller: Option<String>,
}

/// One line in the record: its SKU, units, and the id its hold has (or will have).
#[derive(Debug, Serialize, Deserialize)]
struct RecordLine {
    sku: String,
    qty: u32,
    rid: String,
}

impl RecordLine {
    fn of(line: &CartLine) -> Self {
        Self {
            sku: line.sku.to_string(),
            qty: line.quantity,
            rid: line.reservation.to_string(),
        }
    }
}

/// A refused line as the record keeps it.
#[derive(Debug, Serialize)]
struct RecordRefusal<'a> {
    sku: &'a str,
    code: &'a str,
    detail: &'a str,
}

/// What `cart.lua` answered: Redis's time, the outcome word, and the record as it is.
struct CartReply {
    now: u64,
    outcome: String,
    cart: Option<Cart>,
}

/// What a line operation does (see `lua/cart_line.lua`).
enum LineOp {
    Take {
        quantity: u32,
        deadline_ms: u64,
        shards: u16,
    },
    Confirm,
    /// Releases the line into `x` (cancelled, rolled back) or `e` (expired).
    Release(&'static str),
}

impl Store {
    /// Holds every line of the cart, or none. A repeated key returns the cart it made
    /// (`replayed`), whatever it became since; a key whose cart is still being opened or
    /// rolled back is [`StoreError::CartPending`]. A refusal names the refused lines
    /// ([`StoreError::CartRefused`]) and leaves nothing held; the key may then make a cart
    /// again.
    pub async fn open_cart(&self, request: &CartRequest) -> Result<CartOpened, StoreError> {
        let mut lines = request.lines.clone();
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        // What the SKUs' rules can say without writing anything, for every line at once.
        let mut configs: Vec<Arc<SkuConfig>> = Vec::with_capacity(lines.len());
        let mut refused = Vec::new();
        for line in &lines {
            match self.config(&line.sku).await {
                Ok(config) if line.quantity == 0 || line.quantity > config.per_user_limit => {
                    refused.push(line_refusal(
                        &line.sku,
                        &StoreError::InvalidQuantity(QuantityBound::PerUser(config.per_user_limit)),
                    ));
                }
                Ok(config) => configs.push(config),
                Err(error @ StoreError::UnknownSku) => {
                    refused.push(line_refusal(&line.sku, &error));
                }
                Err(error) => return Err(error),
            }
        }
        if !refused.is_empty() {
            return Err(StoreError::CartRefused(refused));
        }
        let hold_ms = configs
            .iter()
            .map(|c| c.hold.as_millis() as u64)
            .min()
            .unwrap_or(0);
        let record_lines: Vec<RecordLine> = lines
            .iter()
            .zip(&configs)
            .map(|(line, config)| RecordLine {
                sku: line.sku.to_string(),
                qty: line.quantity,
                rid: ReservationId::generate(&line.sku, home_shard(&request.user, config.shards))
                    .to_string(),
            })
            .collect();
        let id = CartId::generate(&request.user);
        let lines_json = serde_json::to_string(&record_lines)
            .map_err(|e| StoreError::Protocol(format!("cart lines: {e}")))?;
        self.trusted()?;
        let mut call = self.cart_invocation("open", &id);
        call.arg(request.user.as_str())
            .arg(request.key.as_str())
            .arg(hold_ms)
            .arg(CART_LEASE.as_millis() as u64)
            .arg(lines_json)
            .arg(caller_arg(request.caller.as_ref()));
        let reply = self.cart_reply(call).await?;
        let cart = reply.cart.ok_or_else(|| bad_reply("open"))?;
        if reply.outcome == "replayed" {
            return replayed(cart, &lines);
        }

        let mut taken = 0;
        let mut refusal = None;
        for (line, config) in cart.lines.iter().zip(&configs) {
            match self.take_line(&cart, line, config).await {
                Ok(()) => taken += 1,
                Err(error) if is_line_refusal(&error) => {
                    refusal = Some(line_refusal(&line.sku, &error));
                    break;
                }
                Err(error) => {
                    // Redis failed, or the cart was taken over: return what was taken if
                    // Redis lets us now; otherwise the maintenance pass does, once the
                    // step's lease has run out.
                    let _ = self.roll_back(&cart, taken, None).await;
                    return Err(error);
                }
            }
        }
        match refusal {
            None => {
                let moved = self.move_cart(&cart.id, CartState::Opening, CartState::Held, None);
                let reply = moved.await?;
                match reply.cart {
                    Some(cart) if reply.outcome == "moved" => Ok(CartOpened {
                        cart: as_of(cart, reply.now),
                        replayed: false,
                    }),
                    // Taken over (the lease ran out mid-open): it is being rolled back.
                    _ => Err(StoreError::CartPending),
                }
            }
            Some(refusal) => {
                self.roll_back(&cart, taken, Some(&refusal)).await?;
                Err(StoreError::CartRefused(vec![refusal]))
            }
        }
    }

    /// Reads a cart. A held cart past its deadline reads as expired.
    pub async fn cart(&self, id: &CartId) -> Result<Cart, StoreError> {
        let keys = self.inner.keys.cart_bucket(id.bucket());
        let (time, text): ((u64, u64), Option<String>) = redis::pipe()
            .cmd("TIME")
            .hget(keys.hash, id.as_str())
            .query_async(&mut self.connection())
            .await?;
        let text = text.ok_or(StoreError::CartNotFound)?;
        let cart = cart_from(&text)?;
        if cart.state == CartState::RolledBack {
            return Err(StoreError::CartNotFound);
        }
        Ok(as_of(cart, time.0 * 1000 + time.1 / 1000))
    }

    /// What a repeat of `request` answers if its key made a cart: that cart, as a repeat
    /// through [`Store::open_cart`] would have it (refused as a reused key with other
    /// lines, [`StoreError::CartPending`] while it is being opened or rolled back); `None`
    /// if the key made none. For a cart refused from memory, which must not hide one made
    /// before its SKU closed.
    pub async fn replay_cart(
        &self,
        request: &CartRequest,
    ) -> Result<Option<CartOpened>, StoreError> {
        let Some(cart) = self.cart_by_key(&request.user, &request.key).await? else {
            return Ok(None);
        };
        let mut lines = request.lines.clone();
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        replayed(cart, &lines).map(Some)
    }

    /// The cart `key` made for `user`, if it made one that is not rolled back.
    pub async fn cart_by_key(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Option<Cart>, StoreError> {
        let keys = self.inner.keys.cart_bucket(CartId::bucket_of(user));
        let id: Option<String> = redis::cmd("HGET")
            .arg(keys.hash)
            .arg(format!("{user}:{key}"))
            .query_async(&mut self.connection())
            .await?;
        let Some(id) = id else { return Ok(None) };
        let id = CartId::parse(&id).map_err(|_| StoreError::Protocol(format!("cart id {id:?}")))?;
        match self.cart(&id).await {
            Ok(cart) => Ok(Some(cart)),
            Err(StoreError::CartNotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Confirms every line of the cart. Idempotent. A cart past its deadline is expired
    /// instead ([`StoreError::CartExpired`]), all its lines together. With a `caller`, a
    /// cart another named caller made is refused ([`StoreError::NotOwner`]).
    pub async fn confirm_cart(
        &self,
        id: &CartId,
        caller: Option<&CallerName>,
    ) -> Result<Cart, StoreError> {
        let cart = self.decide(id, "confirm", caller).await?;
        match cart.state {
            CartState::Confirming => self.finish(cart).await,
            CartState::Confirmed => Ok(cart),
            CartState::Expiring => self.finish(cart).await.and(Err(StoreError::CartExpired)),
            CartState::Expired => Err(StoreError::CartExpired),
            CartState::Cancelling | CartState::Cancelled => Err(StoreError::CartCancelled),
            CartState::Opening | CartState::RollingBack => Err(StoreError::CartPending),
            CartState::Held | CartState::RolledBack => Err(StoreError::CartNotFound),
        }
    }

    /// Cancels every line of the cart. Idempotent. A cart past its deadline comes back
    /// expired; a confirmed one is refused, and so, with a `caller`, is one another named
    /// caller made.
    pub async fn cancel_cart(
        &self,
        id: &CartId,
        caller: Option<&CallerName>,
    ) -> Result<Cart, StoreError> {
        let cart = self.decide(id, "cancel", caller).await?;
        match cart.state {
            CartState::Cancelling | CartState::Expiring => self.finish(cart).await,
            CartState::Cancelled | CartState::Expired => Ok(cart),
            CartState::Confirming | CartState::Confirmed => Err(StoreError::CartConfirmed),
            CartState::Opening | CartState::RollingBack => Err(StoreError::CartPending),
            CartState::Held | CartState::RolledBack => Err(StoreError::CartNotFound),
        }
    }

    /// The maintenance pass's part: every cart whose time came (a held cart past its
    /// deadline, a cart whose step's lease ran out: its engine was lost or stalled) is
    /// finished: expired, rolled back, or its step completed. Returns how many.
    pub async fn finish_due_carts(&self) -> Result<usize, StoreError> {
        let mut finished = 0;
        let now = self.redis_now_ms();
        for bucket in 0..CART_BUCKETS {
            let keys = self.inner.keys.cart_bucket(bucket);
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&keys.open)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(TAKE_OVER_BATCH)
                .query_async(&mut self.connection())
                .await?;
            for text in due {
                let Ok(id) = CartId::parse(&text) else {
                    continue;
                };
                match self.take_over(&id).await {
                    Ok(true) => finished += 1,
                    Ok(false) => {}
                    Err(error @ StoreError::Redis(_)) => return Err(error),
                    // A fenced line (a repair owns its shard), or worse: the cart's lease
                    // runs out again and a later pass tries again; the others go on.
                    Err(error) => tracing::warn!(%error, cart = %id, "finishing a cart failed"),
                }
            }
        }
        Ok(finished)
    }

    /// Takes a due cart over and finishes it; false if it was not due after all.
    async fn take_over(&self, id: &CartId) -> Result<bool, StoreError> {
        let mut call = self.cart_invocation("take_over", id);
        call.arg(CART_LEASE.as_millis() as u64);
        let reply = self.cart_reply(call).await?;
        match (reply.cart, reply.outcome.as_str()) {
            (Some(cart), "moved") => {
                self.finish(cart).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether Redis has a record of the cart (any state, rolled back included).
    pub async fn cart_recorded(&self, id: &CartId) -> Result<bool, StoreError> {
        let keys = self.inner.keys.cart_bucket(id.bucket());
        Ok(redis::cmd("HEXISTS")
            .arg(keys.hash)
            .arg(id.as_str())
            .query_async(&mut self.connection())
            .await?)
    }

    /// Writes the record of `cart`, rebuilt from the ledger after Redis lost it, unless
    /// Redis has one: with its key, and due at once for the maintenance pass if it is in a
    /// step (held carts at their deadline). Returns whether it was written.
    pub async fn restore_cart(&self, cart: &Cart) -> Result<bool, StoreError> {
        let record = Record {
            id: cart.id.to_string(),
            user: cart.user.to_string(),
            key: cart.key.to_string(),
            state: cart.state.as_str().to_owned(),
            deadline: cart.deadline_ms,
            lines: cart.lines.iter().map(RecordLine::of).collect(),
            caller: cart.caller.as_ref().map(ToString::to_string),
        };
        let text = serde_json::to_string(&record)
            .map_err(|e| StoreError::Protocol(format!("cart record: {e}")))?;
        let mut call = self.cart_invocation("restore", &cart.id);
        call.arg(text);
        Ok(self.cart_reply(call).await?.outcome == "moved")
    }

    /// `confirm` or `cancel` on the record: the cart as it is after the decision.
    async fn decide(
        &self,
        id: &CartId,
        op: &str,
        caller: Option<&CallerName>,
    ) -> Result<Cart, StoreError> {
        self.trusted()?;
        let mut call = self.cart_invocation(op, id);
        call.arg(CART_LEASE.as_millis() as u64)
            .arg(caller_arg(caller));
        let reply = self.cart_reply(call).await?;
        if reply.outcome == "not_owner" {
            return Err(StoreError::NotOwner);
        }
        // A held cart leaves `held` whichever way: never answered as held here.
        reply.cart.ok_or(StoreError::CartNotFound)
    }

    /// Completes the step the cart is in, line by line, then records its outcome.
    async fn finish(&self, cart: Cart) -> Result<Cart, StoreError> {
        let (op, done) = match cart.state {
            CartState::Confirming => (LineOp::Confirm, CartState::Confirmed),
            CartState::Cancelling => (LineOp::Release("x"), CartState::Cancelled),
            CartState::Expiring => (LineOp::Release("e"), CartState::Expired),
            CartState::RollingBack => (LineOp::Release("x"), CartState::RolledBack),
            _ => return Ok(cart),
        };
        let order: Vec<&CartLine> = match op {
            LineOp::Confirm => cart.lines.iter().collect(),
            _ => cart.lines.iter().rev().collect(),
        };
        for line in order {
            self.line_step(&cart, line, &op).await?;
        }
        if let LineOp::Confirm = op {
            for line in &cart.lines {
                self.wait_for_replicas(&line.reservation).await?;
            }
        }
        let reply = self.move_cart(&cart.id, cart.state, done, None).await?;
        let mut cart = reply.cart.ok_or(StoreError::CartNotFound)?;
        // Another driver finished the same step first: the outcome is the same.
        if reply.outcome == "conflict" && cart.state != done {
            return Err(StoreError::Protocol(format!(
                "cart {} is {} after its step",
                cart.id,
                cart.state.as_str()
            )));
        }
        cart.state = done;
        Ok(cart)
    }

    /// Returns the first `taken` lines in reverse order and records the cart rolled back.
    async fn roll_back(
        &self,
        cart: &Cart,
        taken: usize,
        refusal: Option<&LineRefusal>,
    ) -> Result<(), StoreError> {
        let note = refusal.map(|r| {
            serde_json::to_string(&RecordRefusal {
                sku: r.sku.as_str(),
                code: r.code,
                detail: &r.detail,
            })
            .unwrap_or_default()
        });
        let moved = self
            .move_cart(&cart.id, CartState::Opening, CartState::RollingBack, note)
            .await?;
        if moved.outcome != "moved" {
            // Taken over: the maintenance pass rolls it back (every line, tombstones too).
            return Ok(());
        }
        for line in cart.lines[..taken].iter().rev() {
            self.line_step(cart, line, &LineOp::Release("x")).await?;
        }
        self.move_cart(
            &cart.id,
            CartState::RollingBack,
            CartState::RolledBack,
            None,
        )
        .await?;
        Ok(())
    }

    /// Takes one line, moving stock to its shard when the shard ran dry, as a reserve does.
    async fn take_line(
        &self,
        cart: &Cart,
        line: &CartLine,
        config: &SkuConfig,
    ) -> Result<(), StoreError> {
        let op = LineOp::Take {
            quantity: line.quantity,
            deadline_ms: cart.deadline_ms,
            shards: config.shards,
        };
        for _ in 0..MAX_RESERVE_ROUNDS {
            let reply = self.line_call(cart, line, &op).await?;
            match StoreError::from_raw(reply.0)? {
                ScriptCode::Ok | ScriptCode::Replayed => return Ok(()),
                ScriptCode::ShardEmpty => {
                    match self
                        .refill(config, line.reservation.shard(), line.quantity)
                        .await?
                    {
                        Refill::Ready => {}
                        Refill::Short { available: 0 } => return Err(StoreError::SoldOut),
                        Refill::Short { .. } => return Err(StoreError::InsufficientStock),
                    }
                }
                // Released before it was taken: the cart was taken over and rolled back.
                ScriptCode::Cancelled => return Err(StoreError::CartPending),
                ScriptCode::BadQty => {
                    self.forget(&line.sku);
                    return Err(StoreError::InvalidQuantity(QuantityBound::PerUser(
                        config.per_user_limit,
                    )));
                }
                ScriptCode::NoSku => {
                    self.forget(&line.sku);
                    return Err(StoreError::UnknownSku);
                }
                // The SKU was replaced since this engine read it (the line's shard was
                // chosen by the old count): the cart rolls back and a retry routes anew.
                ScriptCode::StaleRoute => {
                    self.forget(&line.sku);
                    return Err(StoreError::Contended);
                }
                ScriptCode::DuplicateId => {
                    return Err(StoreError::Protocol(format!(
                        "cart line id {} is another hold's",
                        line.reservation
                    )))
                }
                other => return Err(StoreError::from_code(other)),
            }
        }
        Err(StoreError::Contended)
    }

    /// Confirms or releases one line; repeating it changes nothing.
    async fn line_step(&self, cart: &Cart, line: &CartLine, op: &LineOp) -> Result<(), StoreError> {
        let reply = self.line_call(cart, line, op).await?;
        match (StoreError::from_raw(reply.0)?, op) {
            (ScriptCode::Ok, LineOp::Release(_)) => {
                self.units_returned(&line.sku);
                Ok(())
            }
            (ScriptCode::Ok | ScriptCode::Replayed, _) => Ok(()),
            // The SKU's shard is gone (replaced or never loaded): nothing of it is held.
            (ScriptCode::NoSku, LineOp::Release(_)) => Ok(()),
            (ScriptCode::Fenced, _) => Err(StoreError::Recovering),
            (code, _) => Err(StoreError::Protocol(format!(
                "cart {} line {} answered {code:?}",
                cart.id, line.reservation
            ))),
        }
    }

    async fn line_call(
        &self,
        cart: &Cart,
        line: &CartLine,
        op: &LineOp,
    ) -> Result<RawHold, StoreError> {
        self.trusted()?;
        let shard = line.reservation.shard();
        let mut call = self.invocation(&self.inner.scripts.cart_line, &line.sku, shard, false);
        let name = match op {
            LineOp::Take { .. } => "take",
            LineOp::Confirm => "confirm",
            LineOp::Release(_) => "release",
        };
        call.arg(name)
            .arg(line.reservation.as_str())
            .arg(cart.id.as_str())
            .arg(cart.user.as_str());
        match op {
            LineOp::Take {
                quantity,
                deadline_ms,
                shards,
            } => {
                call.arg(*quantity)
                    .arg(*deadline_ms)
                    .arg(*shards)
                    .arg(cart.key.as_str())
                    .arg(cart.lines.len())
                    .arg(caller_arg(cart.caller.as_ref()));
            }
            LineOp::Confirm => {}
            LineOp::Release(state) => {
                call.arg(*state);
            }
        }
        let (now, _, reply): (u64, i64, RawHold) =
            call.invoke_async(&mut self.connection()).await?;
        self.observe_redis_time(now);
        Ok(reply)
    }

    fn move_cart(
        &self,
        id: &CartId,
        from: CartState,
        to: CartState,
        note: Option<String>,
    ) -> impl std::future::Future<Output = Result<CartReply, StoreError>> + '_ {
        let mut call = self.cart_invocation("move", id);
        call.arg(from.as_str())
            .arg(to.as_str())
            .arg(CART_LEASE.as_millis() as u64)
            .arg(note.unwrap_or_default());
        async move {
            self.trusted()?;
            self.cart_reply(call).await
        }
    }

    fn cart_invocation(&self, op: &str, id: &CartId) -> redis::ScriptInvocation<'_> {
        let keys = self.inner.keys.cart_bucket(id.bucket());
        let mut call = self.inner.scripts.cart.prepare_invoke();
        call.key(keys.hash).key(keys.open).arg(op).arg(id.as_str());
        call
    }

    async fn cart_reply(&self, call: redis::ScriptInvocation<'_>) -> Result<CartReply, StoreError> {
        let (now, outcome, text): (u64, String, String) =
            call.invoke_async(&mut self.connection()).await?;
        self.observe_redis_time(now);
        let cart = match outcome.as_str() {
            _ if text.is_empty() => None,
            "missing" => None,
            _ => Some(cart_from(&text)?),
        };
        Ok(CartReply { now, outcome, cart })
    }
}

/// The refusals that are a line's answer, as against failures of the engine or Redis.
fn is_line_refusal(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::SoldOut
            | StoreError::InsufficientStock
            | StoreError::LimitExceeded
            | StoreError::NotStarted
            | StoreError::Ended
            | StoreError::UnknownSku
            | StoreError::InvalidQuantity(_)
    )
}

fn line_refusal(sku: &Sku, error: &StoreError) -> LineRefusal {
    LineRefusal {
        sku: sku.clone(),
        code: error.code(),
        detail: error.to_string(),
    }
}

/// The answer to a repeated key: the cart it made, unless it was made with other lines.
fn replayed(cart: Cart, asked: &[super::CartLineRequest]) -> Result<CartOpened, StoreError> {
    let same = cart.lines.len() == asked.len()
        && cart
            .lines
            .iter()
            .zip(asked)
            .all(|(line, ask)| line.sku == ask.sku && line.quantity == ask.quantity);
    if !same {
        return Err(StoreError::KeyReused);
    }
    match cart.state {
        CartState::Opening | CartState::RollingBack => Err(StoreError::CartPending),
        _ => Ok(CartOpened {
            cart,
            replayed: true,
        }),
    }
}

/// A held cart whose deadline has passed reads as expired.
fn as_of(mut cart: Cart, now_ms: u64) -> Cart {
    if cart.state == CartState::Held && now_ms >= cart.deadline_ms {
        cart.state = CartState::Expired;
    }
    cart
}

fn bad_reply(op: &str) -> StoreError {
    StoreError::Protocol(format!("cart.lua {op} answered no record"))
}

fn cart_from(text: &str) -> Result<Cart, StoreError> {
    let bad = |what: &str| StoreError::Protocol(format!("bad {what} in cart record {text:?}"));
    let record: Record = serde_json::from_str(text).map_err(|_| bad("json"))?;
    let lines = record
        .lines
        .iter()
        .map(|line| {
            Ok(CartLine {
                sku: Sku::new(line.sku.as_str()).map_err(|_| bad("sku"))?,
                quantity: line.qty,
                reservation: ReservationId::parse(&line.rid).map_err(|_| bad("rid"))?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Cart {
        id: CartId::parse(&record.id).map_err(|_| bad("id"))?,
        user: UserId::new(record.user).map_err(|_| bad("user"))?,
        key: IdempotencyKey::new(record.key).map_err(|_| bad("key"))?,
        state: CartState::parse(&record.state).ok_or_else(|| bad("state"))?,
        deadline_ms: record.deadline,
        lines,
        caller: record
            .caller
            .map(CallerName::new)
            .transpose()
            .map_err(|_| bad("caller"))?,
    })
}
