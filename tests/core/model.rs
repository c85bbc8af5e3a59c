//! Random operation sequences against the real scripts and a plain in-memory model of the
//! same rules; after every step the answers and the totals must agree.
//!
//! The model knows nothing of shards, moves or lazy expiry: it has one pool of units, and a
//! hold is expired from its deadline on. That the engine, with its shards, stock moves and
//! sweeps whenever they happen, is indistinguishable from this model is the property.
//!
//! Time: the model takes each hold's deadline from Redis's answer, and reads Redis's clock
//! before each step. A step is only run when no held hold's deadline falls within the next
//! `SLACK_MS` (the test waits that out), so whether a hold has expired during the step is
//! never a matter of microseconds.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::ids::{IdempotencyKey, ReservationId, Sku, UserId};
use flashsale::store::{ExpiredBecause, HoldState, Reservation, SkuSpec, Store, StoreError};
use flashsale::topology::{RedisConnection, RedisTarget};
use proptest::prelude::*;

use crate::support::*;

const LIMIT: u32 = 2;
const HOLD_MS: u64 = 400;
const SLACK_MS: u64 = 150;

#[derive(Debug, Clone)]
enum Op {
    Reserve { user: u8, qty: u32, key: u8 },
    Confirm { pick: usize },
    Cancel { pick: usize },
    CancelByKey { user: u8, key: u8 },
    Restock { qty: u64 },
    Sweep,
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u8, 1..=3u32, 0..3u8).prop_map(|(user, qty, key)| Op::Reserve { user, qty, key }),
        3 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (0..4u8, 0..3u8).prop_map(|(user, key)| Op::CancelByKey { user, key }),
        1 => (1..=3u64).prop_map(|qty| Op::Restock { qty }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Wait),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Hold {
    user: u8,
    qty: u32,
    state: HoldState,
    deadline: u64,
}

/// What a step answered, reduced to what the model can predict.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Hold {
        id: String,
        state: HoldState,
        replayed: bool,
    },
    Nothing,
    Refused(&'static str),
    Expired(ExpiredBecause),
}

#[derive(Debug, Default)]
struct Model {
    avail: u64,
    sold: u64,
    used: HashMap<u8, u32>,
    holds: HashMap<String, Hold>,
    /// (user, key) -> reservation id, or None for a barrier.
    keys: HashMap<(u8, u8), Option<String>>,
}

impl Model {
    /// A hold is expired from its deadline on: its units and allowance go back.
    fn advance(&mut self, now: u64) {
        for hold in self.holds.values_mut() {
            if hold.state == HoldState::Held && now >= hold.deadline {
                hold.state = HoldState::Expired;
                self.avail += u64::from(hold.qty);
                *self.used.entry(hold.user).or_default() -= hold.qty;
            }
        }
    }

    fn release(&mut self, id: &str, to: HoldState) {
        let hold = self.holds.get_mut(id).unwrap();
        hold.state = to;
        self.avail += u64::from(hold.qty);
        *self.used.entry(hold.user).or_default() -= hold.qty;
    }

    fn answer(&self, id: &str, replayed: bool) -> Answer {
        Answer::Hold {
            id: id.to_owned(),
            state: self.holds[id].state,
            replayed,
        }
    }

    /// The model's answer to a reserve; on success the caller records the new hold.
    fn reserve(&self, user: u8, qty: u32, key: u8) -> Result<Option<Answer>, &'static str> {
        if qty > LIMIT {
            return Err("invalid_quantity");
        }
        match self.keys.get(&(user, key)) {
            Some(None) => return Err("reservation_cancelled"),
            Some(Some(id)) => {
                let hold = &self.holds[id];
                if hold.state == HoldState::Cancelled {
                    return Err("reservation_cancelled");
                }
                if hold.qty != qty {
                    return Err("idempotency_key_reused");
                }
                return Ok(Some(self.answer(id, true)));
            }
            None => {}
        }
        if self.used.get(&user).copied().unwrap_or(0) + qty > LIMIT {
            return Err("limit_exceeded");
        }
        if self.avail == 0 {
            return Err("sold_out");
        }
        if self.avail < u64::from(qty) {
            return Err("insufficient_stock");
        }
        Ok(None)
    }

    fn confirm(&mut self, id: &str) -> Answer {
        let Some(hold) = self.holds.get(id).cloned() else {
            return Answer::Refused("reservation_not_found");
        };
        match hold.state {
            HoldState::Confirmed => {}
            HoldState::Cancelled => return Answer::Refused("reservation_cancelled"),
            HoldState::Held => self.sold += u64::from(hold.qty),
            HoldState::Expired => {
                if self.avail < u64::from(hold.qty) {
                    return Answer::Expired(ExpiredBecause::Stock);
                }
                if self.used.get(&hold.user).copied().unwrap_or(0) + hold.qty > LIMIT {
                    return Answer::Expired(ExpiredBecause::Limit);
                }
                self.avail -= u64::from(hold.qty);
                self.sold += u64::from(hold.qty);
                *self.used.entry(hold.user).or_default() += hold.qty;
            }
        }
        self.holds.get_mut(id).unwrap().state = HoldState::Confirmed;
        self.answer(id, false)
    }

    fn cancel(&mut self, id: &str) -> Answer {
        let Some(hold) = self.holds.get(id).cloned() else {
            return Answer::Refused("reservation_not_found");
        };
        match hold.state {
            HoldState::Confirmed => return Answer::Refused("reservation_confirmed"),
            HoldState::Held => self.release(id, HoldState::Cancelled),
            HoldState::Cancelled | HoldState::Expired => {}
        }
        self.answer(id, false)
    }

    fn held(&self) -> u64 {
        self.holds
            .values()
            .filter(|h| h.state == HoldState::Held)
            .map(|h| u64::from(h.qty))
            .sum()
    }
}

fn seen(result: Result<Reservation, StoreError>, replayed: bool) -> Answer {
    match result {
        Ok(r) => Answer::Hold {
            id: r.id.to_string(),
            state: r.state,
            replayed,
        },
        Err(StoreError::Expired(why)) => Answer::Expired(why),
        Err(e) => Answer::Refused(e.code()),
    }
}

/// Redis's clock, once no held hold falls due within the next `SLACK_MS`.
async fn settled_now(conn: &mut RedisConnection, model: &Model) -> u64 {
    loop {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
        let now = secs * 1000 + micros / 1000;
        let due_soon = model.holds.values().any(|h| {
            h.state == HoldState::Held && h.deadline > now && h.deadline <= now + SLACK_MS
        });
        if !due_soon {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(SLACK_MS)).await;
    }
}

async fn run_case(
    target: &RedisTarget,
    ops: Vec<Op>,
    stock: u64,
    shards: u16,
) -> Result<(), TestCaseError> {
    let store: Store = store_on(target).await;
    let mut clock = target.connect(Duration::from_secs(5)).await.unwrap();
    let sku = Sku::new("item").unwrap();
    let spec = SkuSpec {
        shards: Some(shards),
        per_user_limit: LIMIT,
        hold: Duration::from_millis(HOLD_MS),
        ..SkuSpec::new(stock)
    };
    store.load(&sku, &spec).await.unwrap();
    let mut model = Model {
        avail: stock,
        ..Model::default()
    };
    let mut ids: Vec<String> = Vec::new();
    let user_of = |u: u8| UserId::new(format!("user{u}")).unwrap();
    let key_of = |k: u8| IdempotencyKey::new(format!("key{k}")).unwrap();

    for (step, op) in ops.into_iter().enumerate() {
        let now = settled_now(&mut clock, &model).await;
        model.advance(now);
        let pick = |p: usize| -> ReservationId {
            if ids.is_empty() {
                ReservationId::generate(&sku, 0)
            } else {
                ReservationId::parse(&ids[p % ids.len()]).unwrap()
            }
        };
        let (expected, got) = match op.clone() {
            Op::Reserve { user, qty, key } => {
                let request = flashsale::store::ReserveRequest {
                    caller: None,
                    sku: sku.clone(),
                    user: user_of(user),
                    quantity: qty,
                    key: key_of(key),
                };
                let result = store.reserve(&request).await;
                let got = match result {
                    Ok(r) => seen(Ok(r.reservation), r.replayed),
                    Err(e) => seen(Err(e), false),
                };
                let expected = match model.reserve(user, qty, key) {
                    Err(code) => Answer::Refused(code),
                    Ok(Some(replay)) => replay,
                    Ok(None) => {
                        // A new hold: the model takes its id and deadline from Redis.
                        let Answer::Hold { id, .. } = &got else {
                            return Err(TestCaseError::fail(format!(
                                "step {step} {op:?}: model holds, engine {got:?}"
                            )));
                        };
                        let stored = store
                            .reservation(&ReservationId::parse(id).unwrap())
                            .await
                            .unwrap();
                        prop_assert!(
                            stored.deadline_ms >= now + HOLD_MS,
                            "deadline from Redis time"
                        );
                        model.avail -= u64::from(qty);
                        *model.used.entry(user).or_default() += qty;
                        model.holds.insert(
                            id.clone(),
                            Hold {
                                user,
                                qty,
                                state: HoldState::Held,
                                deadline: stored.deadline_ms,
                            },
                        );
                        model.keys.insert((user, key), Some(id.clone()));
                        ids.push(id.clone());
                        model.answer(id, false)
                    }
                };
                (expected, got)
            }
            Op::Confirm { pick: p } => {
                let id = pick(p);
                let got = seen(store.confirm(&id, None).await, false);
                (model.confirm(id.as_str()), got)
            }
            Op::Cancel { pick: p } => {
                let id = pick(p);
                let got = seen(store.cancel(&id, None).await, false);
                (model.cancel(id.as_str()), got)
            }
            Op::CancelByKey { user, key } => {
                let got = match store
                    .cancel_by_key(&sku, &user_of(user), &key_of(key), None)
                    .await
                {
                    Ok(None) => Answer::Nothing,
                    Ok(Some(r)) => seen(Ok(r), false),
                    Err(e) => seen(Err(e), false),
                };
                let expected = match model.keys.get(&(user, key)).cloned() {
                    None => {
                        model.keys.insert((user, key), None);
                        Answer::Nothing
                    }
                    Some(None) => Answer::Nothing,
                    Some(Some(id)) => model.cancel(&id),
                };
                (expected, got)
            }
            Op::Restock { qty } => {
                store.restock(&sku, qty, None).await.unwrap();
                model.avail += qty;
                (Answer::Nothing, Answer::Nothing)
            }
            Op::Sweep => {
                store.sweep(&sku, 1_000).await.unwrap();
                (Answer::Nothing, Answer::Nothing)
            }
            Op::Wait => {
                tokio::time::sleep(Duration::from_millis(HOLD_MS / 2)).await;
                (Answer::Nothing, Answer::Nothing)
            }
        };
        prop_assert_eq!(&got, &expected, "step {} {:?}", step, op);

        // Units: expired holds not yet swept still count as held in Redis, so compare
        // available + held, and sold exactly.
        let t = store.totals(&sku).await.unwrap();
        prop_assert!(t.conserved(), "step {}: {:?}", step, t);
        prop_assert_eq!(t.sold, model.sold, "step {} sold", step);
        prop_assert_eq!(
            t.available + t.held,
            model.avail + model.held(),
            "step {}",
            step
        );
        if matches!(op, Op::Sweep) {
            prop_assert_eq!(t.available, model.avail, "step {} after a sweep", step);
        }
    }
    let now = settled_now(&mut clock, &model).await;
    model.advance(now);
    for id in &ids {
        let stored = store
            .reservation(&ReservationId::parse(id).unwrap())
            .await
            .unwrap();
        let hold = &model.holds[id];
        prop_assert_eq!(stored.state, hold.state, "{}", id);
        prop_assert_eq!(
            (stored.quantity, stored.user.to_string()),
            (hold.qty, format!("user{}", hold.user))
        );
    }
    Ok(())
}

#[test]
fn random_sequences_behave_like_the_model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let servers = Servers::start();
    let target = servers.target();
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..30), stock in 0..8u64, shards in 1..4u16)| {
        runtime.block_on(run_case(&target, ops, stock, shards))?;
    });
}
