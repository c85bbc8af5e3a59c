//! The ledger's schema migrations, embedded in the binary and applied by sqlx's migrator as
//! `sqlx::migrate!` would apply them (same versions, same checksums, so a database migrated
//! either way is accepted by the other). The macro is not used: it builds sqlx and SQLite a
//! second time, for the compiler's host, on every clean build.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

/// One dialect's migrations, in order: version, description, SQL. Each is a file
/// `migrations/<dialect>/<version>_<description>.sql`.
#[derive(Debug, Clone, Copy)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

const SQLITE: Embedded = Embedded(&[
    (
        1,
        "ledger",
        include_str!("../../migrations/sqlite/0001_ledger.sql"),
    ),
    (
        2,
        "epoch",
        include_str!("../../migrations/sqlite/0002_epoch.sql"),
    ),
    (
        3,
        "stock index",
        include_str!("../../migrations/sqlite/0003_stock_index.sql"),
    ),
    (
        4,
        "carts",
        include_str!("../../migrations/sqlite/0004_carts.sql"),
    ),
    (
        5,
        "callers",
        include_str!("../../migrations/sqlite/0005_callers.sql"),
    ),
    (
        6,
        "retirement",
        include_str!("../../migrations/sqlite/0006_retirement.sql"),
    ),
]);

const POSTGRES: Embedded = Embedded(&[
    (
        1,
        "ledger",
        include_str!("../../migrations/postgres/0001_ledger.sql"),
    ),
    (
        2,
        "epoch",
        include_str!("../../migrations/postgres/0002_epoch.sql"),
    ),
    (
        3,
        "stock index",
        include_str!("../../migrations/postgres/0003_stock_index.sql"),
    ),
    (
        4,
        "carts",
        include_str!("../../migrations/postgres/0004_carts.sql"),
    ),
    (
        5,
        "callers",
        include_str!("../../migrations/postgres/0005_callers.sql"),
    ),
    (
        6,
        "retirement",
        include_str!("../../migrations/postgres/0006_retirement.sql"),
    ),
]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// SQLite's migrator.
pub async fn sqlite() -> Result<Migrator, MigrateError> {
    Migrator::new(SQLITE).await
}

/// PostgreSQL's migrator.
pub async fn postgres() -> Result<Migrator, MigrateError> {
    Migrator::new(POSTGRES).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `migrations/<dialect>` is embedded, with its version and text.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dialect, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dialect);
            let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|entry| {
                    let path = entry.unwrap().path();
                    let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
                    let (version, description) = name.split_once('_').unwrap();
                    let sql = std::fs::read_to_string(&path).unwrap();
                    (version.parse().unwrap(), description.replace('_', " "), sql)
                })
                .collect();
            files.sort();
            let listed: Vec<(i64, String, String)> = embedded
                .0
                .iter()
                .map(|(v, d, sql)| (*v, (*d).to_owned(), (*sql).to_owned()))
                .collect();
            assert_eq!(listed, files, "{dialect}");
        }
    }
}
