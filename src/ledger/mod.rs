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

use std::collections::HashMap;
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
    /// Units taken out of one shard and not yet settled into another.
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

/// A stock-changing ledger row, as [`stock_from`] folds them.
#[derive(Debug, Clone)]
pub(crate) struct StockRow {
    pub kind: String,
    pub shard: i64,
    pub position: (i64, i64, i64),
    pub quantity: i64,
    /// The move id, for `moved_out` and `moved_in`.
    pub subject: Option<String>,
}

/// Folds a SKU's stock rows into (stock, in transit). Per shard, the latest `loaded` or
/// `restored` row is the base (what the shard held then), and restocks and moves after it
/// add to it; units taken out by a move whose other half is not settled are in transit.
pub(crate) fn stock_from(rows: &[StockRow]) -> (u64, u64) {
    let mut base: HashMap<i64, ((i64, i64, i64), i64)> = HashMap::new();
    for row in rows
        .iter()
        .filter(|r| r.kind == "loaded" || r.kind == "restored")
    {
        let entry = base
            .entry(row.shard)
            .or_insert((row.position, row.quantity));
        if row.position >= entry.0 {
            *entry = (row.position, row.quantity);
        }
    }
    let mut units: i64 = base.values().map(|(_, quantity)| quantity).sum();
    for row in rows {
        if base.get(&row.shard).is_none_or(|(p, _)| row.position <= *p) {
            continue;
        }
        match row.kind.as_str() {
            "restocked" | "moved_in" => units += row.quantity,
            "moved_out" => units -= row.quantity,
            _ => {}
        }
    }
    let arrived: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.kind == "moved_in")
        .filter_map(|r| r.subject.as_deref())
        .collect();
    let in_transit: i64 = rows
        .iter()
        .filter(|r| r.kind == "moved_out")
        .filter(|r| !r.subject.as_deref().is_some_and(|m| arrived.contains(m)))
        .map(|r| r.quantity)
        .sum();
    (
        u64::try_from(units + in_transit).unwrap_or(0),
        u64::try_from(in_transit).unwrap_or(0),
    )
}

/// The repository of the ledger.
#[allow(async_fn_in_trait)]
pub trait LedgerRepo {
    /// Applies the events of `entries` in one transaction; events applied before are
    /// skipped. Nothing is applied if it fails.
    async fn apply(&self, entries: &[Entry]) -> Result<Applied, LedgerError>;
    /// A SKU's settled figures.
    async fn figures(&self, sku: &str) -> Result<LedgerFigures, LedgerError>;
    /// Every reservation of a SKU.
    async fn reservations(&self, sku: &str) -> Result<Vec<LedgerReservation>, LedgerError>;
    /// Every barrier of a SKU: (user, key).
    async fn barriers(&self, sku: &str) -> Result<Vec<(String, String)>, LedgerError>;
    /// Every SKU with its rules.
    async fn skus(&self) -> Result<Vec<LedgerSku>, LedgerError>;
    /// Events applied in all (for tests and reports).
    async fn events_applied(&self) -> Result<u64, LedgerError>;
    /// The newest settled Redis time per stream, `(sku, shard) -> ms`.
    async fn progress(&self) -> Result<HashMap<(String, u16), u64>, LedgerError>;
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
    async fn figures(&self, sku: &str) -> Result<LedgerFigures, LedgerError> {
        dispatch!(self, l => l.figures(sku).await)
    }
    async fn reservations(&self, sku: &str) -> Result<Vec<LedgerReservation>, LedgerError> {
        dispatch!(self, l => l.reservations(sku).await)
    }
    async fn barriers(&self, sku: &str) -> Result<Vec<(String, String)>, LedgerError> {
        dispatch!(self, l => l.barriers(sku).await)
    }
    async fn skus(&self) -> Result<Vec<LedgerSku>, LedgerError> {
        dispatch!(self, l => l.skus().await)
    }
    async fn events_applied(&self) -> Result<u64, LedgerError> {
        dispatch!(self, l => l.events_applied().await)
    }
    async fn progress(&self) -> Result<HashMap<(String, u16), u64>, LedgerError> {
        dispatch!(self, l => l.progress().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, shard: i64, ms: i64, quantity: i64, subject: Option<&str>) -> StockRow {
        StockRow {
            kind: kind.to_owned(),
            shard,
            position: (ms, 0, 0),
            quantity,
            subject: subject.map(str::to_owned),
        }
    }

    #[test]
    fn stock_folds_from_the_latest_base_per_shard() {
        let rows = [
            row("loaded", 0, 1, 10, None),
            row("restocked", 0, 2, 5, None),
            row("loaded", 1, 1, 10, None),
            row("moved_out", 1, 3, 4, Some("m1")),
            row("moved_in", 0, 4, 4, Some("m1")),
            // A restore rebases shard 1 on what it held then (10 - 4).
            row("restored", 1, 5, 6, None),
            row("restocked", 1, 6, 2, None),
        ];
        assert_eq!(stock_from(&rows), (27, 0));
        // Before the move's second half: 4 units in transit, still part of the stock.
        assert_eq!(stock_from(&rows[..4]), (25, 4));
        assert_eq!(stock_from(&rows[..5]), (25, 0));
    }
}
