//! The two implementations of [`LedgerRepo`], SQLite and PostgreSQL, stamped from one body:
//! their SQL is the same text (numbered placeholders, `ON CONFLICT` upserts and row-value
//! comparisons mean the same in both), their types and migrations are their own.

use std::collections::{HashMap, HashSet};

use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::{
    state_rank, Applied, LedgerCart, LedgerCartLine, LedgerError, LedgerFigures, LedgerRepo,
    LedgerReservation, LedgerSku, StockAccount, StockRow,
};
use crate::events::{Entry, Event};

/// One event as an `inventory_ledger` row.
struct LedgerRow<'a> {
    kind: &'static str,
    /// The reservation id, or the move id for moves.
    subject: Option<&'a str>,
    user: Option<&'a str>,
    key: Option<&'a str>,
    quantity: i64,
    detail: Option<String>,
}

fn ledger_row(event: &Event) -> LedgerRow<'_> {
    let plain = |kind, subject, user, quantity: u64| LedgerRow {
        kind,
        subject,
        user,
        key: None,
        quantity: quantity as i64,
        detail: None,
    };
    match event {
        Event::Loaded {
            qty,
            per_user_limit,
            hold_ms,
            starts_at_ms,
            ends_at_ms,
            shards,
        } => LedgerRow {
            detail: Some(format!(
                "limit={per_user_limit} hold_ms={hold_ms} starts_at_ms={starts_at_ms} ends_at_ms={ends_at_ms} shards={shards}"
            )),
            ..plain("loaded", None, None, *qty)
        },
        Event::Restored { qty } => plain("restored", None, None, *qty),
        Event::Restocked { qty, op } => LedgerRow {
            detail: Some(format!("op={op}")),
            ..plain("restocked", None, None, *qty)
        },
        Event::Reserved {
            rid,
            user,
            qty,
            origin,
            deadline_ms,
            caller,
        } => LedgerRow {
            key: Some(origin.field()),
            detail: Some(match caller {
                Some(caller) => format!("deadline_ms={deadline_ms} caller={caller}"),
                None => format!("deadline_ms={deadline_ms}"),
            }),
            ..plain("reserved", Some(rid.as_str()), Some(user.as_str()), u64::from(*qty))
        },
        Event::Confirmed {
            rid,
            user,
            qty,
            late,
        } => LedgerRow {
            detail: late.then(|| "late".to_owned()),
            ..plain("confirmed", Some(rid.as_str()), Some(user.as_str()), u64::from(*qty))
        },
        Event::Cancelled { rid, user, qty } => {
            plain("cancelled", Some(rid.as_str()), Some(user.as_str()), u64::from(*qty))
        }
        Event::Expired { rid, user, qty } => {
            plain("expired", Some(rid.as_str()), Some(user.as_str()), u64::from(*qty))
        }
        Event::Barrier { user, key } => LedgerRow {
            key: Some(key.as_str()),
            ..plain("barrier", None, Some(user.as_str()), 0)
        },
        Event::Cart {
            cart,
            user,
            key,
            lines,
            deadline_ms,
        } => LedgerRow {
            key: Some(key.as_str()),
            detail: Some(format!("deadline_ms={deadline_ms}")),
            ..plain("cart", Some(cart.as_str()), Some(user.as_str()), u64::from(*lines))
        },
        Event::MovedOut { move_id, to, qty } => LedgerRow {
            detail: Some(format!("to={to}")),
            ..plain("moved_out", Some(move_id.as_str()), None, *qty)
        },
        Event::MovedIn { move_id, from, qty } => LedgerRow {
            detail: Some(format!("from={from}")),
            ..plain("moved_in", Some(move_id.as_str()), None, *qty)
        },
        Event::Closed { ends_at_ms } => LedgerRow {
            detail: Some(format!("ends_at_ms={ends_at_ms}")),
            ..plain("closed", None, None, 0)
        },
        Event::Retired { at_ms } => LedgerRow {
            detail: Some(format!("at_ms={at_ms}")),
            ..plain("retired", None, None, 0)
        },
    }
}

/// A stream entry id `<ms>-<seq>` as two integers.
fn stream_position(id: &str) -> Result<(i64, i64), LedgerError> {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .ok_or_else(|| LedgerError::Corrupt(format!("stream id {id:?}")))
}

// A batch is written with one multi-row statement per table: a statement per event would
// cost a database round trip each (on these machines, 4-8k events/s instead of tens of
// thousands). Rows go in chunks, below both databases' limits on bound parameters.
const CHUNK: usize = 1_000;

const INSERT_EVENTS: &str = "INSERT INTO inventory_ledger \
    (sku, shard, id_ms, id_seq, idx, kind, rid, user_id, idempotency_key, quantity, at_ms, detail) ";
// Only the rows new to the ledger come back: their effects are applied, the others were.
const INSERT_EVENTS_END: &str = " ON CONFLICT DO NOTHING RETURNING sku, shard, id_ms, id_seq, idx";

const UPSERT_RESERVED: &str = "INSERT INTO reservations \
    (rid, sku, shard, user_id, quantity, state, idempotency_key, deadline_ms, reserved_at_ms, \
    caller) ";
const UPSERT_RESERVED_END: &str = " ON CONFLICT (rid) DO UPDATE SET \
    idempotency_key = excluded.idempotency_key, deadline_ms = excluded.deadline_ms, \
    reserved_at_ms = excluded.reserved_at_ms, caller = excluded.caller";

// The three later states: a state only moves up (held < expired < cancelled | confirmed).
const UPSERT_SETTLED: &str = "INSERT INTO reservations \
    (rid, sku, shard, user_id, quantity, state, confirmed_at_ms, cancelled_at_ms, expired_at_ms, late_confirm) ";
const UPSERT_SETTLED_END: &str = " ON CONFLICT (rid) DO UPDATE SET \
    confirmed_at_ms = COALESCE(excluded.confirmed_at_ms, reservations.confirmed_at_ms), \
    cancelled_at_ms = COALESCE(excluded.cancelled_at_ms, reservations.cancelled_at_ms), \
    expired_at_ms = COALESCE(excluded.expired_at_ms, reservations.expired_at_ms), \
    late_confirm = CASE WHEN excluded.state = 'confirmed' THEN excluded.late_confirm \
        ELSE reservations.late_confirm END, \
    state = CASE WHEN excluded.state = 'expired' AND reservations.state <> 'held' \
        THEN reservations.state ELSE excluded.state END";

const INSERT_BARRIERS: &str = "INSERT INTO barriers (sku, user_id, idempotency_key, at_ms) ";
const INSERT_BARRIERS_END: &str = " ON CONFLICT DO NOTHING";

const INSERT_CARTS: &str =
    "INSERT INTO carts (cart_id, user_id, idempotency_key, lines, deadline_ms, at_ms) ";
const INSERT_CARTS_END: &str = " ON CONFLICT DO NOTHING";

// A later load (by stream position) replaces the rules; an earlier one arriving late does not.
const UPSERT_SKUS: &str = "INSERT INTO skus \
    (sku, shards, per_user_limit, hold_ms, starts_at_ms, ends_at_ms, config_id_ms, config_id_seq) ";
const UPSERT_SKUS_END: &str = " ON CONFLICT (sku) DO UPDATE SET shards = excluded.shards, \
    per_user_limit = excluded.per_user_limit, hold_ms = excluded.hold_ms, \
    starts_at_ms = excluded.starts_at_ms, ends_at_ms = excluded.ends_at_ms, \
    config_id_ms = excluded.config_id_ms, config_id_seq = excluded.config_id_seq \
    WHERE (skus.config_id_ms, skus.config_id_seq) < (excluded.config_id_ms, excluded.config_id_seq)";

const UPSERT_PROGRESS: &str = "INSERT INTO stream_progress \
    (sku, shard, last_id_ms, last_id_seq, settled_at_ms) ";
const UPSERT_PROGRESS_END: &str = " ON CONFLICT (sku, shard) DO UPDATE SET \
    last_id_ms = excluded.last_id_ms, last_id_seq = excluded.last_id_seq, \
    settled_at_ms = excluded.settled_at_ms \
    WHERE (stream_progress.last_id_ms, stream_progress.last_id_seq) \
    < (excluded.last_id_ms, excluded.last_id_seq)";

/// One event with its place: (sku, shard, id_ms, id_seq, idx) is its ledger key.
struct Placed<'a> {
    sku: &'a str,
    shard: i64,
    id_ms: i64,
    id_seq: i64,
    idx: i64,
    at: i64,
    event: &'a Event,
}

impl Placed<'_> {
    fn key(&self) -> (String, i64, i64, i64, i64) {
        (
            self.sku.to_owned(),
            self.shard,
            self.id_ms,
            self.id_seq,
            self.idx,
        )
    }
}

fn place(entries: &[Entry]) -> Result<Vec<Placed<'_>>, LedgerError> {
    let mut placed = Vec::new();
    for entry in entries {
        let (id_ms, id_seq) = stream_position(&entry.id)?;
        for (idx, event) in entry.events.iter().enumerate() {
            placed.push(Placed {
                sku: entry.sku.as_str(),
                shard: i64::from(entry.shard),
                id_ms,
                id_seq,
                idx: idx as i64,
                at: entry.ts_ms as i64,
                event,
            });
        }
    }
    Ok(placed)
}

/// A reservation's later states in one batch, merged into one `UPSERT_SETTLED` row (a
/// multi-row upsert may not touch a row twice).
struct Settled<'a> {
    rid: &'a str,
    user: &'a str,
    quantity: i64,
    state: &'static str,
    confirmed_at: Option<i64>,
    cancelled_at: Option<i64>,
    expired_at: Option<i64>,
    late: bool,
}

/// Merges the batch's confirmed, cancelled and expired events per reservation.
fn settle_rows<'a>(fresh: &[&Placed<'a>]) -> Vec<Settled<'a>> {
    let mut merged: HashMap<&str, Settled<'a>> = HashMap::new();
    for placed in fresh {
        let (rid, user, qty, state, late) = match placed.event {
            Event::Confirmed {
                rid,
                user,
                qty,
                late,
            } => (rid, user, qty, "confirmed", *late),
            Event::Cancelled { rid, user, qty } => (rid, user, qty, "cancelled", false),
            Event::Expired { rid, user, qty } => (rid, user, qty, "expired", false),
            _ => continue,
        };
        let row = merged.entry(rid.as_str()).or_insert(Settled {
            rid: rid.as_str(),
            user: user.as_str(),
            quantity: i64::from(*qty),
            state,
            confirmed_at: None,
            cancelled_at: None,
            expired_at: None,
            late: false,
        });
        match state {
            "confirmed" => {
                row.confirmed_at = Some(placed.at);
                row.late = late;
            }
            "cancelled" => row.cancelled_at = Some(placed.at),
            _ => row.expired_at = Some(placed.at),
        }
        if state_rank(state) > state_rank(row.state) {
            row.state = state;
        }
    }
    merged.into_values().collect()
}

// The kinds are listed as in the partial index `inventory_ledger_stock` (migration 3), so
// that both databases read it rather than every event of the SKU.
const SELECT_STOCK_ROWS: &str = "SELECT kind, shard, id_ms, id_seq, idx, quantity, rid, detail \
    FROM inventory_ledger WHERE sku = $1 \
    AND kind IN ('loaded', 'restored', 'restocked', 'moved_in', 'moved_out')";

const SELECT_STATES: &str =
    "SELECT state, COUNT(*), CAST(SUM(quantity) AS BIGINT) FROM reservations \
    WHERE sku = $1 GROUP BY state";

const SELECT_RESERVATIONS: &str = "SELECT rid, shard, user_id, quantity, state, \
    idempotency_key, deadline_ms, caller FROM reservations WHERE sku = $1 ORDER BY rid";

const SELECT_BARRIERS: &str =
    "SELECT user_id, idempotency_key FROM barriers WHERE sku = $1 ORDER BY user_id, idempotency_key";

const SELECT_CARTS: &str = "SELECT cart_id, user_id, idempotency_key, lines, deadline_ms \
    FROM carts ORDER BY cart_id";

// A cart's lines are the reservations keyed '#<cart id>': one pass over them, grouped by
// cart in Rust (the restore of a lost Redis is the only reader; no index is kept for it).
const SELECT_CART_LINES: &str = "SELECT idempotency_key, rid, sku, quantity, state, caller \
    FROM reservations WHERE idempotency_key LIKE '#%' ORDER BY idempotency_key, sku";

const SELECT_SKUS: &str = "SELECT sku, shards, per_user_limit, hold_ms, starts_at_ms, \
    ends_at_ms FROM skus ORDER BY sku";

// A retirement closes the window early; a later load's own end is its own (the load upsert
// replaces the rules whole).
const CLOSE_WINDOW: &str = "UPDATE skus SET ends_at_ms = $2 \
    WHERE sku = $1 AND (ends_at_ms = 0 OR ends_at_ms > $2)";

const INSERT_RETIRED: &str = "INSERT INTO retired_shards (sku, shard, at_ms) ";
const INSERT_RETIRED_END: &str = " ON CONFLICT DO NOTHING";

// Retired: some shard retired, and no shard the SKU ever settled an event of is not.
const SELECT_RETIRED: &str = "SELECT MAX(r.at_ms) FROM retired_shards r WHERE r.sku = $1 \
    AND NOT EXISTS (SELECT 1 FROM stream_progress p WHERE p.sku = $1 AND NOT EXISTS \
    (SELECT 1 FROM retired_shards q WHERE q.sku = p.sku AND q.shard = p.shard))";

const SELECT_RETIRED_SKUS: &str = "SELECT DISTINCT r.sku FROM retired_shards r \
    WHERE NOT EXISTS (SELECT 1 FROM stream_progress p WHERE p.sku = r.sku AND NOT EXISTS \
    (SELECT 1 FROM retired_shards q WHERE q.sku = p.sku AND q.shard = p.shard))";

const SELECT_RESERVATION: &str = "SELECT rid, shard, user_id, quantity, state, \
    idempotency_key, deadline_ms, caller FROM reservations WHERE rid = $1";

const COUNT_EVENTS: &str = "SELECT COUNT(*) FROM inventory_ledger";

const SELECT_PROGRESS: &str = "SELECT sku, shard, last_id_ms FROM stream_progress";

const SELECT_EPOCH: &str = "SELECT epoch FROM ledger_epoch WHERE id = 1";

// Takes the epoch row's lock for the batch's transaction (a writer lock in SQLite, a row
// lock in PostgreSQL), so that a repair moving the epoch on is ordered before or after the
// whole batch, never in between.
const HOLD_EPOCH: &str = "UPDATE ledger_epoch SET epoch = epoch WHERE id = 1 AND epoch = $1";

const ADVANCE_EPOCH: &str = "UPDATE ledger_epoch SET epoch = epoch + 1 WHERE id = 1";

const SELECT_POSITIONS: &str =
    "SELECT shard, last_id_ms, last_id_seq FROM stream_progress WHERE sku = $1";

/// A `SELECT_RESERVATION(S)` row (either database's).
fn reservation_row<R: Row>(r: &R) -> Result<LedgerReservation, LedgerError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    Ok(LedgerReservation {
        rid: r.try_get(0)?,
        shard: narrow(r.try_get::<i64, _>(1)?, "shard")?,
        user: r.try_get(2)?,
        quantity: narrow(r.try_get::<i64, _>(3)?, "quantity")?,
        state: r.try_get(4)?,
        key: r.try_get(5)?,
        deadline_ms: r
            .try_get::<Option<i64>, _>(6)?
            .map(|d| narrow(d, "deadline"))
            .transpose()?,
        caller: r.try_get(7)?,
    })
}

fn narrow<T: TryFrom<i64>>(value: i64, what: &str) -> Result<T, LedgerError> {
    T::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{what} {value}")))
}

macro_rules! ledger_impl {
    ($(#[$doc:meta])* $name:ident, $db:ty) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            /// A ledger on `pool` (migrated already).
            pub fn new(pool: sqlx::Pool<$db>) -> Self {
                Self { pool }
            }

            /// The connection pool.
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            /// Applies `entries` in one transaction, if the epoch is still `read_at` (when given).
            async fn apply_checked(&self, entries: &[Entry], read_at: Option<u64>) -> Result<Applied, LedgerError> {
                let placed = place(entries)?;
                let mut tx = self.pool.begin().await?;
                if let Some(epoch) = read_at {
                    let held = sqlx::query(HOLD_EPOCH)
                        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await?;
                    if held.rows_affected() == 0 {
                        return Err(LedgerError::Superseded);
                    }
                }
                let mut new = std::collections::HashSet::new();
                for chunk in placed.chunks(CHUNK) {
                    let mut insert = QueryBuilder::<$db>::new(INSERT_EVENTS);
                    insert.push_values(chunk, |mut b, p| {
                        let row = ledger_row(p.event);
                        b.push_bind(p.sku)
                            .push_bind(p.shard)
                            .push_bind(p.id_ms)
                            .push_bind(p.id_seq)
                            .push_bind(p.idx)
                            .push_bind(row.kind)
                            .push_bind(row.subject)
                            .push_bind(row.user)
                            .push_bind(row.key)
                            .push_bind(row.quantity)
                            .push_bind(p.at)
                            .push_bind(row.detail);
                    });
                    insert.push(INSERT_EVENTS_END);
                    for row in insert.build().fetch_all(&mut *tx).await? {
                        new.insert((
                            row.try_get::<String, _>(0)?,
                            row.try_get::<i64, _>(1)?,
                            row.try_get::<i64, _>(2)?,
                            row.try_get::<i64, _>(3)?,
                            row.try_get::<i64, _>(4)?,
                        ));
                    }
                }
                let fresh: Vec<&Placed> = placed.iter().filter(|p| new.contains(&p.key())).collect();
                let applied = Applied {
                    applied: fresh.len() as u64,
                    duplicates: (placed.len() - fresh.len()) as u64,
                };

                let reserved: Vec<&&Placed> = fresh
                    .iter()
                    .filter(|p| matches!(p.event, Event::Reserved { .. }))
                    .collect();
                for chunk in reserved.chunks(CHUNK) {
                    let mut upsert = QueryBuilder::<$db>::new(UPSERT_RESERVED);
                    upsert.push_values(chunk, |mut b, p| {
                        if let Event::Reserved { rid, user, qty, origin, deadline_ms, caller } = p.event {
                            b.push_bind(rid.as_str())
                                .push_bind(p.sku)
                                .push_bind(p.shard)
                                .push_bind(user.as_str())
                                .push_bind(i64::from(*qty))
                                .push_bind("held")
                                .push_bind(origin.field())
                                .push_bind(*deadline_ms as i64)
                                .push_bind(p.at)
                                .push_bind(caller.as_ref().map(|c| c.as_str()));
                        }
                    });
                    upsert.push(UPSERT_RESERVED_END);
                    upsert.build().execute(&mut *tx).await?;
                }

                let shard_of: HashMap<&str, (&str, i64)> = fresh
                    .iter()
                    .filter_map(|p| match p.event {
                        Event::Confirmed { rid, .. } | Event::Cancelled { rid, .. } | Event::Expired { rid, .. } => {
                            Some((rid.as_str(), (p.sku, p.shard)))
                        }
                        _ => None,
                    })
                    .collect();
                let later = settle_rows(&fresh);
                for chunk in later.chunks(CHUNK) {
                    let mut upsert = QueryBuilder::<$db>::new(UPSERT_SETTLED);
                    upsert.push_values(chunk, |mut b, s| {
                        let (sku, shard) = shard_of[s.rid];
                        b.push_bind(s.rid)
                            .push_bind(sku)
                            .push_bind(shard)
                            .push_bind(s.user)
                            .push_bind(s.quantity)
                            .push_bind(s.state)
                            .push_bind(s.confirmed_at)
                            .push_bind(s.cancelled_at)
                            .push_bind(s.expired_at)
                            .push_bind(i64::from(s.late));
                    });
                    upsert.push(UPSERT_SETTLED_END);
                    upsert.build().execute(&mut *tx).await?;
                }

                let barriers: Vec<&&Placed> = fresh
                    .iter()
                    .filter(|p| matches!(p.event, Event::Barrier { .. }))
                    .collect();
                for chunk in barriers.chunks(CHUNK) {
                    let mut insert = QueryBuilder::<$db>::new(INSERT_BARRIERS);
                    insert.push_values(chunk, |mut b, p| {
                        if let Event::Barrier { user, key } = p.event {
                            b.push_bind(p.sku).push_bind(user.as_str()).push_bind(key.as_str()).push_bind(p.at);
                        }
                    });
                    insert.push(INSERT_BARRIERS_END);
                    insert.build().execute(&mut *tx).await?;
                }

                // A cart's terms come with each of its lines: the first one settled writes them.
                let mut seen = std::collections::HashSet::new();
                let carts: Vec<&&Placed> = fresh
                    .iter()
                    .filter(|p| match p.event {
                        Event::Cart { cart, .. } => seen.insert(cart.as_str()),
                        _ => false,
                    })
                    .collect();
                for chunk in carts.chunks(CHUNK) {
                    let mut insert = QueryBuilder::<$db>::new(INSERT_CARTS);
                    insert.push_values(chunk, |mut b, p| {
                        if let Event::Cart { cart, user, key, lines, deadline_ms } = p.event {
                            b.push_bind(cart.as_str())
                                .push_bind(user.as_str())
                                .push_bind(key.as_str())
                                .push_bind(i64::from(*lines))
                                .push_bind(*deadline_ms as i64)
                                .push_bind(p.at);
                        }
                    });
                    insert.push(INSERT_CARTS_END);
                    insert.build().execute(&mut *tx).await?;
                }

                // Rules: the latest load per SKU in this batch (all shards carry the same).
                let mut loads: HashMap<&str, &Placed> = HashMap::new();
                for p in fresh.iter().filter(|p| matches!(p.event, Event::Loaded { .. })) {
                    let latest = loads.entry(p.sku).or_insert(p);
                    if (p.id_ms, p.id_seq) > (latest.id_ms, latest.id_seq) {
                        *latest = p;
                    }
                }
                if !loads.is_empty() {
                    let mut upsert = QueryBuilder::<$db>::new(UPSERT_SKUS);
                    upsert.push_values(loads.values(), |mut b, p| {
                        if let Event::Loaded { per_user_limit, hold_ms, starts_at_ms, ends_at_ms, shards, .. } = p.event {
                            b.push_bind(p.sku)
                                .push_bind(i64::from(*shards))
                                .push_bind(i64::from(*per_user_limit))
                                .push_bind(*hold_ms as i64)
                                .push_bind(*starts_at_ms as i64)
                                .push_bind(*ends_at_ms as i64)
                                .push_bind(p.id_ms)
                                .push_bind(p.id_seq);
                        }
                    });
                    upsert.push(UPSERT_SKUS_END);
                    upsert.build().execute(&mut *tx).await?;
                }

                for p in &fresh {
                    if let Event::Closed { ends_at_ms } = p.event {
                        sqlx::query(CLOSE_WINDOW)
                            .bind(p.sku)
                            .bind(i64::try_from(*ends_at_ms).unwrap_or(i64::MAX))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let retired: Vec<&&Placed> = fresh
                    .iter()
                    .filter(|p| matches!(p.event, Event::Retired { .. }))
                    .collect();
                if !retired.is_empty() {
                    let mut insert = QueryBuilder::<$db>::new(INSERT_RETIRED);
                    insert.push_values(retired, |mut b, p| {
                        b.push_bind(p.sku).push_bind(p.shard).push_bind(p.at);
                    });
                    insert.push(INSERT_RETIRED_END);
                    insert.build().execute(&mut *tx).await?;
                }

                let mut progress: HashMap<(&str, i64), (i64, i64, i64)> = HashMap::new();
                for p in &placed {
                    let latest = progress.entry((p.sku, p.shard)).or_insert((p.id_ms, p.id_seq, p.at));
                    if (p.id_ms, p.id_seq) > (latest.0, latest.1) {
                        *latest = (p.id_ms, p.id_seq, p.at);
                    }
                }
                if !progress.is_empty() {
                    let mut upsert = QueryBuilder::<$db>::new(UPSERT_PROGRESS);
                    upsert.push_values(progress.iter(), |mut b, ((sku, shard), (ms, seq, at))| {
                        b.push_bind(*sku).push_bind(*shard).push_bind(*ms).push_bind(*seq).push_bind(*at);
                    });
                    upsert.push(UPSERT_PROGRESS_END);
                    upsert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(applied)
            }
        }

        impl LedgerRepo for $name {
            async fn apply(&self, entries: &[Entry]) -> Result<Applied, LedgerError> {
                self.apply_checked(entries, None).await
            }

            async fn apply_read_at(&self, entries: &[Entry], epoch: u64) -> Result<Applied, LedgerError> {
                self.apply_checked(entries, Some(epoch)).await
            }

            async fn epoch(&self) -> Result<u64, LedgerError> {
                let epoch: i64 = sqlx::query_scalar(SELECT_EPOCH).fetch_one(&self.pool).await?;
                narrow(epoch, "epoch")
            }

            async fn advance_epoch(&self) -> Result<u64, LedgerError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(ADVANCE_EPOCH).execute(&mut *tx).await?;
                let epoch: i64 = sqlx::query_scalar(SELECT_EPOCH).fetch_one(&mut *tx).await?;
                tx.commit().await?;
                narrow(epoch, "epoch")
            }


            async fn stock_rows(&self, sku: &str) -> Result<Vec<StockRow>, LedgerError> {
                let rows = sqlx::query(SELECT_STOCK_ROWS).bind(sku).fetch_all(&self.pool).await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        Ok(StockRow {
                            kind: r.try_get(0)?,
                            shard: r.try_get(1)?,
                            position: (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?),
                            quantity: r.try_get(5)?,
                            subject: r.try_get(6)?,
                            detail: r.try_get(7)?,
                        })
                    })
                    .collect::<Result<Vec<StockRow>, sqlx::Error>>()?)
            }

            async fn settled_positions(&self, sku: &str) -> Result<HashMap<u16, (u64, u64)>, LedgerError> {
                let rows = sqlx::query(SELECT_POSITIONS).bind(sku).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            narrow(r.try_get::<i64, _>(0)?, "shard")?,
                            (
                                narrow(r.try_get::<i64, _>(1)?, "id")?,
                                narrow(r.try_get::<i64, _>(2)?, "id")?,
                            ),
                        ))
                    })
                    .collect()
            }

            async fn figures(&self, sku: &str) -> Result<LedgerFigures, LedgerError> {
                let StockAccount { stock, in_transit, .. } =
                    StockAccount::fold(&self.stock_rows(sku).await?);
                let mut figures = LedgerFigures { stock, in_transit, ..LedgerFigures::default() };
                for row in sqlx::query(SELECT_STATES).bind(sku).fetch_all(&self.pool).await? {
                    let state: String = row.try_get(0)?;
                    let count: u64 = narrow(row.try_get::<i64, _>(1)?, "count")?;
                    let units: u64 = narrow(row.try_get::<Option<i64>, _>(2)?.unwrap_or(0), "units")?;
                    figures.reservations += count;
                    match state.as_str() {
                        "held" => figures.held = units,
                        "confirmed" => figures.sold = units,
                        "cancelled" => figures.cancelled = count,
                        "expired" => figures.expired = count,
                        _ => {}
                    }
                }
                Ok(figures)
            }

            async fn reservations(&self, sku: &str) -> Result<Vec<LedgerReservation>, LedgerError> {
                let rows = sqlx::query(SELECT_RESERVATIONS).bind(sku).fetch_all(&self.pool).await?;
                rows.iter().map(|r| reservation_row(r)).collect()
            }

            async fn reservation(&self, rid: &str) -> Result<Option<LedgerReservation>, LedgerError> {
                let row = sqlx::query(SELECT_RESERVATION).bind(rid).fetch_optional(&self.pool).await?;
                row.as_ref().map(|r| reservation_row(r)).transpose()
            }

            async fn retired(&self, sku: &str) -> Result<Option<u64>, LedgerError> {
                let at: Option<i64> = sqlx::query_scalar(SELECT_RETIRED).bind(sku).fetch_one(&self.pool).await?;
                at.map(|at| narrow(at, "retired at")).transpose()
            }

            async fn retired_skus(&self) -> Result<HashSet<String>, LedgerError> {
                let rows: Vec<String> = sqlx::query_scalar(SELECT_RETIRED_SKUS).fetch_all(&self.pool).await?;
                Ok(rows.into_iter().collect())
            }

            async fn barriers(&self, sku: &str) -> Result<Vec<(String, String)>, LedgerError> {
                let rows = sqlx::query(SELECT_BARRIERS).bind(sku).fetch_all(&self.pool).await?;
                Ok(rows
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?)
            }

            async fn carts(&self) -> Result<Vec<LedgerCart>, LedgerError> {
                let mut lines: HashMap<String, Vec<LedgerCartLine>> = HashMap::new();
                for r in sqlx::query(SELECT_CART_LINES).fetch_all(&self.pool).await? {
                    let key: String = r.try_get(0)?;
                    lines.entry(key.trim_start_matches('#').to_owned()).or_default().push(LedgerCartLine {
                        rid: r.try_get(1)?,
                        sku: r.try_get(2)?,
                        quantity: narrow(r.try_get::<i64, _>(3)?, "quantity")?,
                        state: r.try_get(4)?,
                        caller: r.try_get(5)?,
                    });
                }
                let rows = sqlx::query(SELECT_CARTS).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        let cart_id: String = r.try_get(0)?;
                        Ok(LedgerCart {
                            settled: lines.remove(&cart_id).unwrap_or_default(),
                            cart_id,
                            user: r.try_get(1)?,
                            key: r.try_get(2)?,
                            lines: narrow(r.try_get::<i64, _>(3)?, "lines")?,
                            deadline_ms: narrow(r.try_get::<i64, _>(4)?, "deadline")?,
                        })
                    })
                    .collect()
            }

            async fn skus(&self) -> Result<Vec<LedgerSku>, LedgerError> {
                let rows = sqlx::query(SELECT_SKUS).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        Ok(LedgerSku {
                            sku: r.try_get(0)?,
                            shards: narrow(r.try_get::<i64, _>(1)?, "shards")?,
                            per_user_limit: narrow(r.try_get::<i64, _>(2)?, "limit")?,
                            hold_ms: narrow(r.try_get::<i64, _>(3)?, "hold")?,
                            starts_at_ms: narrow(r.try_get::<i64, _>(4)?, "start")?,
                            ends_at_ms: narrow(r.try_get::<i64, _>(5)?, "end")?,
                        })
                    })
                    .collect()
            }

            async fn events_applied(&self) -> Result<u64, LedgerError> {
                let count: i64 = sqlx::query_scalar(COUNT_EVENTS).fetch_one(&self.pool).await?;
                narrow(count, "count")
            }

            async fn progress(&self) -> Result<HashMap<(String, u16), u64>, LedgerError> {
                let rows = sqlx::query(SELECT_PROGRESS).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            (r.try_get(0)?, narrow(r.try_get::<i64, _>(1)?, "shard")?),
                            narrow(r.try_get::<i64, _>(2)?, "id")?,
                        ))
                    })
                    .collect()
            }
        }
    };
}

ledger_impl!(
    /// The ledger in an SQLite file.
    SqliteLedger,
    Sqlite
);
ledger_impl!(
    /// The ledger in PostgreSQL.
    PgLedger,
    Postgres
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    /// The audit's read of a SKU's stock rows goes through the partial index, not through
    /// every event the SKU ever had; statement journals stay in memory.
    #[test]
    fn an_sqlite_ledger_reads_stock_rows_by_their_index_and_journals_in_memory() {
        let dir =
            std::env::temp_dir().join(format!("flashsale-plan-{}", crate::ids::random_token()));
        let url = format!("sqlite://{}/ledger.db", dir.display());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (plan, temp_store) = runtime.block_on(async {
            let Ledger::Sqlite(ledger) = Ledger::connect(&url).await.unwrap() else {
                unreachable!("an SQLite URL")
            };
            // 2: statement journals and temporary tables live in memory.
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(ledger.pool())
                .await
                .unwrap();
            let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {SELECT_STOCK_ROWS}"))
                .bind("tv")
                .fetch_all(ledger.pool())
                .await
                .unwrap();
            let plan = rows
                .iter()
                .map(|row| row.get::<String, _>("detail"))
                .collect::<Vec<_>>()
                .join("; ");
            (plan, temp_store)
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            plan.contains("USING INDEX inventory_ledger_stock"),
            "{plan}"
        );
        assert_eq!(temp_store, 2, "PRAGMA temp_store");
    }
}
