//! The catalog's own tests on both engines: [`TestGuard`] holds a fresh catalog's location
//! and what keeps it alive (a temp directory, a PostgreSQL server of its own), and
//! `on_both_engines!` runs each listed scenario (`async fn name(guard: TestGuard)`) as
//! `on_sqlite::name` and `on_postgres::name`. The PostgreSQL server is the integration
//! tests' own (`tests/postgres_server`), so both kinds of test start it the same way.

#[path = "../../tests/postgres_server/mod.rs"]
pub(crate) mod postgres_server;

use super::{CATALOG_FILE_NAME, Catalog, CatalogLocation};

/// Runs each scenario as two tests, one per engine (the PostgreSQL one skips when
/// PostgreSQL is not installed, unless `CYBERBACKUP_REQUIRE_POSTGRES=1`).
macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(crate::catalog::testing::TestGuard::sqlite()).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(guard) = crate::catalog::testing::TestGuard::postgres() else {
                        return;
                    };
                    super::$scenario(guard).await;
                }
            )*
        }
    };
}

/// A fresh catalog's location, and what must live as long as the test.
pub(crate) struct TestGuard {
    pub(crate) location: CatalogLocation,
    _dir: tempfile::TempDir,
    _server: Option<postgres_server::PgServer>,
}

impl TestGuard {
    /// A SQLite file in a temp directory.
    pub(crate) fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            location: CatalogLocation::Sqlite(dir.path().join(CATALOG_FILE_NAME)),
            _dir: dir,
            _server: None,
        }
    }

    /// A new database on a PostgreSQL server of its own; `None` when not installed.
    pub(crate) fn postgres() -> Option<Self> {
        let server = postgres_server::PgServer::start_or_skip()?;
        Some(Self {
            location: server.database(),
            _dir: tempfile::tempdir().unwrap(),
            _server: Some(server),
        })
    }

    /// The catalog, opened (and migrated).
    pub(crate) async fn open(self) -> (Self, Catalog) {
        let catalog = Catalog::open_at(self.location.clone()).await.unwrap();
        (self, catalog)
    }
}
