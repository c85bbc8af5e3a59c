//! The SQL ledger of record: SQLite by default, PostgreSQL in production.
//!
//! Only the reconciler writes here (and the audit, when it repairs). Every event of the
//! shard streams is applied once: its row in the append-only `inventory_ledger` is keyed by
//! its stream position, and the effects on `reservations`, `skus` and `barriers` run only
//! when that row is new. Effects do not depend on the order in which entries of different
//! streams (or of one stream, read by several reconcilers) arrive: a reservation's state
//! only moves up the ranks held < expired < cancelled | confirmed, and a SKU's rules come
//! from the latest load by stream position.
//!
//! [`LedgerRepo`] is the repository; `sqlite.rs` and `postgres.rs` implement it, from one
//! body (`repo.rs`) with each dialect's SQL types and migrations.

mod migrations;
mod repo;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::events::Entry;

pub use repo::{PgLedger, SqliteLedger};

/// Why the ledger failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A URL that is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database url {0:?}: use sqlite://<file> or postgres://...")]
    UnsupportedUrl(String),
    /// A stored value out of range.
    #[error("bad stored value: {0}")]
    Corrupt(String),
    /// A repair moved the ledger's epoch on since the batch was read from Redis: it may
    /// come from data Redis lost, so it was not applied (it is read again).
    #[error("a repair began since this batch was read; not applied")]
    Superseded,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events new to the ledger, applied now.
    pub applied: u64,
    /// Events the ledger had already (redelivered): nothing changed.
    pub duplicates: u64,
}

/// A reservation as the ledger has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerReservation {
    /// Reservation id.
    pub rid: String,
    /// Shard.
    pub shard: u16,
    /// Buyer.
    pub user: String,
    /// Units.
    pub quantity: u32,
    /// `held`, `confirmed`, `cancelled` or `expired`.
    pub state: String,
    /// The idempotency key, once the `reserved` event is settled.
    pub key: Option<String>,
    /// The deadline, once the `reserved` event is settled.
    pub deadline_ms: Option<u64>,
    /// The named caller that made it, if one did (once the `reserved` event is settled).
    pub caller: Option<String>,
}

/// A cart as the ledger has it: the terms its lines carried, and those of its lines
/// whose `reserved` event is settled (a cart left half opened has fewer than `lines`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCart {
    /// Cart id.
    pub cart_id: String,
    /// Buyer.
    pub user: String,
    /// The idempotency key that made it.
    pub key: String,
    /// How many lines it has.
    pub lines: u16,
    /// When its lines expire, ms since the epoch.
    pub deadline_ms: u64,
    /// Its settled lines, by SKU, as reservations.
    pub settled: Vec<LedgerCartLine>,
}

/// One settled line of a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCartLine {
    /// Reservation id.
    pub rid: String,
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
    /// `held`, `confirmed`, `cancelled` or `expired`.
    pub state: String,
    /// The named caller that made it, if one did.
    pub caller: Option<String>,
}

/// A SKU's rules as the ledger has them (from its latest load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSku {
    /// The SKU.
    pub sku: String,
    /// Shards.
    pub shards: u16,
    /// Per-user limit.
    pub per_user_limit: u32,
    /// Hold, ms.
    pub hold_ms: u64,
    /// Sale start, ms since the epoch, 0 for none.
    pub starts_at_ms: u64,
    /// Sale end, ms since the epoch, 0 for none.
    pub ends_at_ms: u64,
}

/// A SKU's settled figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerFigures {
    /// Units put on sale: loaded plus restocked (rebased by restores).
    pub stock: u64,
    /// Units taken out of one shard and not yet settled into another (see [`StockAccount`]).
    pub in_transit: u64,
    /// Units held by reservations the ledger knows as held.
    pub held: u64,
    /// Units sold.
    pub sold: u64,
    /// Reservations cancelled.
    pub cancelled: u64,
    /// Reservations expired.
    pub expired: u64,
    /// Reservations in all.
    pub reservations: u64,
}

impl LedgerFigures {
    /// Units available by the ledger's account.
    pub fn available(&self) -> u64 {
        self.stock
            .saturating_sub(self.in_transit + self.held + self.sold)
    }
}

/// A reservation state's rank, by name or by the hold record's letter: a state only moves
/// up (held < expired < cancelled | confirmed), so of two accounts the higher rank is the
/// later one.
pub(crate) fn state_rank(state: &str) -> u8 {
    match state {
        "held" | "h" => 1,
        "expired" | "e" => 2,
        "cancelled" | "x" | "confirmed" | "c" => 3,
        _ => 0,
    }
}

/// A stock-changing ledger row, as [`StockAccount::fold`] folds them.
#[derive(Debug, Clone)]
pub struct StockRow {
    /// `loaded`, `restored`, `restocked`, `moved_in` or `moved_out`.
    pub kind: String,
    /// The shard whose stream it came from.
    pub shard: i64,
    /// Its stream position: (id ms, id seq, index in the entry).
    pub position: (i64, i64, i64),
    /// Units.
    pub quantity: i64,
    /// The move id, for `moved_out` and `moved_in`.
    pub subject: Option<String>,
    /// `op=<id>` for a restock, `to=<shard>` for a move out.
    pub detail: Option<String>,
}

/// A move out of a shard, as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOut {
    /// The move id.
    pub id: String,
    /// The receiving shard.
    pub to: u16,
    /// Units taken out.
    pub units: u64,
}

/// What a shard's scripts must remember, as the ledger knows it, since the shard's latest
/// load (a load starts a shard afresh; a restore does not): what makes restocks and moves
/// idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardRecords {
    /// Restock ops applied to the shard: op id and units.
    pub ops: Vec<(String, u64)>,
    /// Moves applied into the shard: move id and units.
    pub moves_in: Vec<(String, u64)>,
    /// Moves taken out of the shard.
    pub moves_out: Vec<MoveOut>,
    /// Of those, the moves whose units have not arrived: in transit, to be completed.
    pub pending: Vec<MoveOut>,
}

/// A SKU's stock as its ledger rows add up.
///
/// Per shard, the latest `loaded` or `restored` row is the base: what the shard held then,
/// plus what its pending moves carried (a restore re-records those moves right after its
/// base, as `moved_out` rows). What a shard holds is its base and the restocks and moves
/// after it. A move taken out (after its donor's latest load) and not put in is in
/// transit; one put in whose taking-out never reached the ledger (Redis lost it before it
/// was settled) is counted once, not by both shards. No assumption is made about which
/// shards' restores reached the ledger: a repair whose last entries Redis lost leaves some
/// shards rebased and others not, and every unit still counts once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockAccount {
    /// Units put on sale.
    pub stock: u64,
    /// Units taken out of one shard and not put into another yet.
    pub in_transit: u64,
    /// Each shard's records, by shard.
    pub shards: std::collections::BTreeMap<u16, ShardRecords>,
}

impl StockAccount {
    /// Folds a SKU's stock rows (in any order).
    pub fn fold(rows: &[StockRow]) -> Self {
        type Position = (i64, i64, i64);
        let latest = |kinds: &[&str]| {
            let mut latest: HashMap<i64, (Position, i64)> = HashMap::new();
            for row in rows.iter().filter(|r| kinds.contains(&r.kind.as_str())) {
                let entry = latest
                    .entry(row.shard)
                    .or_insert((row.position, row.quantity));
                if row.position >= entry.0 {
                    *entry = (row.position, row.quantity);
                }
            }
            latest
        };
        let base = latest(&["loaded", "restored"]);
        let load = latest(&["loaded"]);
        let after = |of: &HashMap<i64, (Position, i64)>, row: &StockRow| {
            of.get(&row.shard).is_some_and(|(p, _)| row.position > *p)
        };
        let detail = |row: &StockRow, name: &str| {
            row.detail
                .as_deref()
                .and_then(|d| d.strip_prefix(name))
                .map(str::to_owned)
        };
        // What each shard holds by its own rows: its base and what came and went after it.
        // A restock op or a move half counts once per shard: a second row of it is Redis
        // applying it again after losing the first application (and its record) before
        // the repair, so Redis holds it once.
        let mut stock: i64 = base.values().map(|(_, quantity)| quantity).sum();
        let mut counted = std::collections::HashSet::new();
        for row in rows.iter().filter(|r| after(&base, r)) {
            let once = match row.kind.as_str() {
                "restocked" => detail(row, "op="),
                "moved_in" | "moved_out" => row.subject.clone(),
                _ => continue,
            };
            if let Some(id) = once {
                if !counted.insert((row.kind.as_str(), row.shard, id)) {
                    continue;
                }
            }
            stock += if row.kind == "moved_out" {
                -row.quantity
            } else {
                row.quantity
            };
        }
        let mut account = Self::default();
        let mut sorted: Vec<&StockRow> = rows.iter().collect();
        sorted.sort_by_key(|r| (r.shard, r.position));
        for row in sorted.into_iter().filter(|r| after(&load, r)) {
            let Ok(shard) = u16::try_from(row.shard) else {
                continue;
            };
            let units = u64::try_from(row.quantity).unwrap_or(0);
            let records = account.shards.entry(shard).or_default();
            let subject = row.subject.clone().unwrap_or_default();
            match row.kind.as_str() {
                "restocked" => {
                    if let Some(op) = detail(row, "op=") {
                        if !records.ops.iter().any(|(o, _)| *o == op) {
                            records.ops.push((op, units));
                        }
                    }
                }
                "moved_in" if !records.moves_in.iter().any(|(m, _)| *m == subject) => {
                    records.moves_in.push((subject, units));
                }
                "moved_out" if !records.moves_out.iter().any(|m| m.id == subject) => {
                    let to = detail(row, "to=").and_then(|t| t.parse().ok()).unwrap_or(0);
                    records.moves_out.push(MoveOut {
                        id: subject,
                        to,
                        units,
                    });
                }
                _ => {}
            }
        }
        // A move is counted by the shards whose rows the ledger has. Taken out after its
        // donor's base and not put in anywhere: its units are in transit, on top of what the
        // shards hold. Put in after its receiver's base with its taking-out never settled
        // (Redis lost it): the donor's rows still count the units, the receiver's too.
        let live_moves = |kind: &str| -> HashMap<(i64, String), u64> {
            rows.iter()
                .filter(|r| r.kind == kind && after(&base, r))
                .filter_map(|r| {
                    Some((
                        (r.shard, r.subject.clone()?),
                        u64::try_from(r.quantity).ok()?,
                    ))
                })
                .collect()
        };
        let (live_out, live_in) = (live_moves("moved_out"), live_moves("moved_in"));
        let arrived: std::collections::HashSet<&String> = account
            .shards
            .values()
            .flat_map(|r| r.moves_in.iter().map(|(m, _)| m))
            .collect();
        let departed: std::collections::HashSet<&String> = account
            .shards
            .values()
            .flat_map(|r| r.moves_out.iter().map(|m| &m.id))
            .collect();
        let mut pending: Vec<(u16, MoveOut)> = Vec::new();
        for (shard, records) in &account.shards {
            for out in &records.moves_out {
                if live_out.contains_key(&(i64::from(*shard), out.id.clone()))
                    && !arrived.contains(&out.id)
                {
                    pending.push((*shard, out.clone()));
                }
            }
        }
        for ((_, id), units) in &live_in {
            if !departed.contains(id) {
                stock -= i64::try_from(*units).unwrap_or(0);
            }
        }
        for (shard, out) in pending {
            account.in_transit += out.units;
            stock += i64::try_from(out.units).unwrap_or(0);
            if let Some(records) = account.shards.get_mut(&shard) {
                records.pending.push(out);
            }
        }
        account.stock = u64::try_from(stock).unwrap_or(0);
        account
    }
}

/// The repository of the ledger.
#[allow(async_fn_in_trait)]
pub trait LedgerRepo {
    /// Applies the events of `entries` in one transaction; events applied before are
    /// skipped. Nothing is applied if it fails.
    async fn apply(&self, entries: &[Entry]) -> Result<Applied, LedgerError>;
    /// Applies `entries` as [`LedgerRepo::apply`] does, if the ledger's epoch is still
    /// `epoch` (what [`LedgerRepo::epoch`] said before they were read from Redis);
    /// otherwise applies nothing and fails with [`LedgerError::Superseded`].
    async fn apply_read_at(&self, entries: &[Entry], epoch: u64) -> Result<Applied, LedgerError>;
    /// The ledger's epoch: moved on by every repair before it rebuilds Redis.
    async fn epoch(&self) -> Result<u64, LedgerError>;
    /// Moves the epoch on; batches read before no longer apply. Returns the new epoch.
    async fn advance_epoch(&self) -> Result<u64, LedgerError>;
    /// A SKU's settled figures.
    async fn figures(&self, sku: &str) -> Result<LedgerFigures, LedgerError>;
    /// Every reservation of a SKU.
    async fn reservations(&self, sku: &str) -> Result<Vec<LedgerReservation>, LedgerError>;
    /// Every barrier of a SKU: (user, key).
    async fn barriers(&self, sku: &str) -> Result<Vec<(String, String)>, LedgerError>;
    /// Every cart, with its settled lines.
    async fn carts(&self) -> Result<Vec<LedgerCart>, LedgerError>;
    /// Every SKU with its rules.
    async fn skus(&self) -> Result<Vec<LedgerSku>, LedgerError>;
    /// Events applied in all (for tests and reports).
    async fn events_applied(&self) -> Result<u64, LedgerError>;
    /// A SKU's stock-changing rows (loads, restores, restocks, moves).
    async fn stock_rows(&self, sku: &str) -> Result<Vec<StockRow>, LedgerError>;
    /// The last stream position settled per shard of a SKU: shard -> (id ms, id seq).
    async fn settled_positions(&self, sku: &str) -> Result<HashMap<u16, (u64, u64)>, LedgerError>;
    /// The newest settled Redis time per stream, `(sku, shard) -> ms`.
    async fn progress(&self) -> Result<HashMap<(String, u16), u64>, LedgerError>;
    /// When `sku` was retired (its last shard's `retired` event), if every shard it ever
    /// wrote to is retired.
    async fn retired(&self, sku: &str) -> Result<Option<u64>, LedgerError>;
    /// Every retired SKU (see [`LedgerRepo::retired`]).
    async fn retired_skus(&self) -> Result<HashSet<String>, LedgerError>;
    /// One reservation, by id.
    async fn reservation(&self, rid: &str) -> Result<Option<LedgerReservation>, LedgerError>;
}

/// The ledger, on whichever database the URL names.
#[derive(Clone)]
pub enum Ledger {
    /// An SQLite file.
    Sqlite(SqliteLedger),
    /// A PostgreSQL database.
    Postgres(PgLedger),
}

macro_rules! dispatch {
    ($self:ident, $l:ident => $call:expr) => {
        match $self {
            Ledger::Sqlite($l) => $call,
            Ledger::Postgres($l) => $call,
        }
    };
}

impl Ledger {
    /// Connects and runs the dialect's migrations. `sqlite://<path>` creates the file (and
    /// its directory) on first use; `postgres://...` needs the database to exist.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                // A multi-row upsert keeps a statement journal, to undo itself alone if it
                // fails; in memory rather than in a temporary file, it costs no write calls.
                .pragma("temp_store", "memory")
                .busy_timeout(Duration::from_secs(10));
            if let Some(dir) = Path::new(options.get_filename()).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await?;
            migrations::sqlite().await?.run(&pool).await?;
            Ok(Self::Sqlite(SqliteLedger::new(pool)))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            migrations::postgres().await?.run(&pool).await?;
            Ok(Self::Postgres(PgLedger::new(pool)))
        } else {
            Err(LedgerError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Which database: `sqlite` or `postgres`.
    pub fn dialect(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

impl LedgerRepo for Ledger {
    async fn apply(&self, entries: &[Entry]) -> Result<Applied, LedgerError> {
        dispatch!(self, l => l.apply(entries).await)
    }
    async fn apply_read_at(&self, entries: &[Entry], epoch: u64) -> Result<Applied, LedgerError> {
        dispatch!(self, l => l.apply_read_at(entries, epoch).await)
    }
    async fn epoch(&self) -> Result<u64, LedgerError> {
        dispatch!(self, l => l.epoch().await)
    }
    async fn advance_epoch(&self) -> Result<u64, LedgerError> {
        dispatch!(self, l => l.advance_epoch().await)
    }
    async fn figures(&self, sku: &str) -> Result<LedgerFigures, LedgerError> {
        dispatch!(self, l => l.figures(sku).await)
    }
    async fn reservations(&self, sku: &str) -> Result<Vec<LedgerReservation>, LedgerError> {
        dispatch!(self, l => l.reservations(sku).await)
    }
    async fn barriers(&self, sku: &str) -> Result<Vec<(String, String)>, LedgerError> {
        dispatch!(self, l => l.barriers(sku).await)
    }
    async fn carts(&self) -> Result<Vec<LedgerCart>, LedgerError> {
        dispatch!(self, l => l.carts().await)
    }
    async fn skus(&self) -> Result<Vec<LedgerSku>, LedgerError> {
        dispatch!(self, l => l.skus().await)
    }
    async fn events_applied(&self) -> Result<u64, LedgerError> {
        dispatch!(self, l => l.events_applied().await)
    }
    async fn stock_rows(&self, sku: &str) -> Result<Vec<StockRow>, LedgerError> {
        dispatch!(self, l => l.stock_rows(sku).await)
    }
    async fn settled_positions(&self, sku: &str) -> Result<HashMap<u16, (u64, u64)>, LedgerError> {
        dispatch!(self, l => l.settled_positions(sku).await)
    }
    async fn progress(&self) -> Result<HashMap<(String, u16), u64>, LedgerError> {
        dispatch!(self, l => l.progress().await)
    }
    async fn retired(&self, sku: &str) -> Result<Option<u64>, LedgerError> {
        dispatch!(self, l => l.retired(sku).await)
    }
    async fn retired_skus(&self) -> Result<HashSet<String>, LedgerError> {
        dispatch!(self, l => l.retired_skus().await)
    }
    async fn reservation(&self, rid: &str) -> Result<Option<LedgerReservation>, LedgerError> {
        dispatch!(self, l => l.reservation(rid).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        kind: &str,
        shard: i64,
        ms: i64,
        idx: i64,
        quantity: i64,
        subject: Option<&str>,
    ) -> StockRow {
        let detail = match kind {
            "restocked" => subject.map(|op| format!("op={op}")),
            "moved_out" => Some(format!("to={}", 1 - shard)),
            _ => None,
        };
        StockRow {
            kind: kind.to_owned(),
            shard,
            position: (ms, 0, idx),
            quantity,
            subject: subject
                .filter(|_| kind.starts_with("moved"))
                .map(str::to_owned),
            detail,
        }
    }

    #[test]
    fn stock_folds_from_the_latest_base_per_shard() {
        let rows = [
            row("loaded", 0, 1, 0, 10, None),
            row("restocked", 0, 2, 0, 5, Some("op1")),
            row("loaded", 1, 1, 0, 10, None),
            row("moved_out", 1, 3, 0, 4, Some("m1")),
            row("moved_in", 0, 4, 0, 4, Some("m1")),
            // A restore rebases every shard on what it held then.
            row("restored", 0, 5, 0, 19, None),
            row("restored", 1, 5, 0, 6, None),
            row("restocked", 1, 6, 0, 2, Some("op2")),
        ];
        let account = StockAccount::fold(&rows);
        assert_eq!((account.stock, account.in_transit), (27, 0));
        assert_eq!(account.shards[&0].ops, vec![("op1".to_owned(), 5)]);
        assert_eq!(account.shards[&0].moves_in, vec![("m1".to_owned(), 4)]);
        assert_eq!(account.shards[&1].moves_out.len(), 1);
        assert!(account.shards[&1].pending.is_empty());
        // Before the move's second half: 4 units in transit, still part of the stock.
        let half = StockAccount::fold(&rows[..4]);
        assert_eq!((half.stock, half.in_transit), (25, 4));
        assert_eq!(half.shards[&1].pending[0].to, 0);
        assert_eq!(StockAccount::fold(&rows[..5]).in_transit, 0);
    }

    /// A repair whose restore reached the ledger for one shard only (Redis lost the other's
    /// entry): a unit moved before it is counted by the rebased receiver and by the donor's
    /// own rows, never by both.
    #[test]
    fn a_restore_settled_for_some_shards_only_counts_each_unit_once() {
        let rows = [
            row("loaded", 0, 1, 0, 10, None),
            row("loaded", 1, 1, 0, 10, None),
            row("moved_out", 1, 2, 0, 4, Some("m1")),
            row("moved_in", 0, 3, 0, 4, Some("m1")),
            row("restored", 0, 5, 0, 14, None),
        ];
        let account = StockAccount::fold(&rows);
        assert_eq!((account.stock, account.in_transit), (20, 0));
    }

    /// A batch read from a Redis that then lost it, settled only after a repair rebased the
    /// shard: its rows sit before the base, which was rebuilt without them, and count for
    /// nothing.
    #[test]
    fn rows_settled_late_from_before_a_base_count_for_nothing() {
        let rows = [
            row("loaded", 0, 1, 0, 10, None),
            row("loaded", 1, 1, 0, 10, None),
            row("restored", 0, 5, 0, 10, None),
            row("restored", 1, 5, 0, 10, None),
            row("moved_in", 1, 3, 0, 2, Some("lost")),
        ];
        let account = StockAccount::fold(&rows);
        assert_eq!((account.stock, account.in_transit), (20, 0));
    }

    /// A move completed again after Redis lost its first completion (the ledger had it):
    /// Redis holds its units once, and so does the ledger's count.
    #[test]
    fn a_move_half_applied_twice_counts_once() {
        let rows = [
            row("loaded", 0, 1, 0, 10, None),
            row("loaded", 1, 1, 0, 10, None),
            row("moved_out", 1, 2, 0, 4, Some("m1")),
            row("moved_in", 0, 3, 0, 4, Some("m1")),
            row("moved_in", 0, 7, 0, 4, Some("m1")),
            row("restocked", 0, 8, 0, 2, Some("op1")),
            row("restocked", 0, 9, 0, 2, Some("op1")),
        ];
        let account = StockAccount::fold(&rows);
        assert_eq!((account.stock, account.in_transit), (22, 0));
    }

    /// A move whose second half was settled and whose first half Redis lost before it was:
    /// the units came out of the donor all the same, so the stock does not grow.
    #[test]
    fn a_move_settled_by_its_second_half_alone_adds_nothing() {
        let rows = [
            row("loaded", 0, 1, 0, 10, None),
            row("loaded", 1, 1, 0, 10, None),
            row("moved_in", 0, 4, 0, 4, Some("m1")),
        ];
        let account = StockAccount::fold(&rows);
        assert_eq!((account.stock, account.in_transit), (20, 0));
    }

    /// A move cut in half, then a restore of both shards: the restore's base counts the
    /// pending move's units and re-records the move after it, so the stock stays put and the
    /// move is still in transit until its second half lands.
    #[test]
    fn a_restore_keeps_a_pending_move_in_transit_once() {
        let mut rows = vec![
            row("loaded", 0, 1, 0, 10, None),
            row("loaded", 1, 1, 0, 10, None),
            row("moved_out", 1, 3, 0, 4, Some("m1")),
            row("restored", 0, 9, 0, 8, None),
            row("restored", 1, 9, 0, 12, None),
            row("moved_out", 1, 9, 1, 4, Some("m1")),
        ];
        let restored = StockAccount::fold(&rows);
        assert_eq!((restored.stock, restored.in_transit), (20, 4));
        assert_eq!(restored.shards[&1].pending.len(), 1);
        rows.push(row("moved_in", 0, 10, 0, 4, Some("m1")));
        let completed = StockAccount::fold(&rows);
        assert_eq!((completed.stock, completed.in_transit), (20, 0));
        assert!(completed.shards[&1].pending.is_empty());
    }

    /// A load starts a shard's records afresh; a restore keeps them.
    #[test]
    fn records_count_from_the_latest_load() {
        let rows = [
            row("loaded", 0, 1, 0, 10, None),
            row("restocked", 0, 2, 0, 5, Some("old")),
            row("loaded", 0, 3, 0, 10, None),
            row("restocked", 0, 4, 0, 5, Some("op1")),
            row("restored", 0, 5, 0, 15, None),
        ];
        let account = StockAccount::fold(&rows);
        assert_eq!(account.stock, 15);
        assert_eq!(account.shards[&0].ops, vec![("op1".to_owned(), 5)]);
    }
}
