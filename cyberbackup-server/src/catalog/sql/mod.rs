//! The seam between the catalog's queries and the SQL engines under them: SQLite (embedded,
//! the default) and PostgreSQL (the scale-out catalog, issue 16). One connection type,
//! [`Conn`], runs the same statement text on either; the queries are written once, in the
//! dialect both engines share (`?N` placeholders, `ON CONFLICT`, `RETURNING`), and branch on
//! [`Conn::engine`] only where the engines differ (maintenance pragmas, the name index).
//!
//! Written here rather than taken from a crate: the catalog is synchronous (one writer
//! thread, a read pool; see the parent module), and the crates that speak both engines
//! (`sqlx`, `sea-query`) are async or a query builder over the whole catalog. The shape
//! follows rusqlite's (`execute`, `query_row`, `prepare` + `query_map`, `optional`), so the
//! queries read as they did.

mod pg;
mod sqlite;
mod tls;
mod value;

use std::fmt;

pub(crate) use value::{Column, FromColumn, ToParam, Value};

/// Prepared statements each connection keeps, on either engine (the catalog has about a
/// hundred fixed ones, and lookups whose text varies with their number of ids).
const STATEMENT_CACHE: usize = 128;

/// Builds the parameter list of a statement: `params![a, b]`, each an expression whose
/// type is [`ToParam`].
macro_rules! params {
    ($($param:expr),* $(,)?) => {
        &[$(&$param as &dyn $crate::catalog::sql::ToParam),*] as &[&dyn $crate::catalog::sql::ToParam]
    };
}
pub(crate) use params;

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite, embedded: the catalog file in the data directory.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

/// An engine's error, or a value that did not convert.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (or its connection did).
    #[error(transparent)]
    Postgres(#[from] ::postgres::Error),
    /// The connection was closed.
    #[error("the catalog connection is closed")]
    Closed,
    /// The URL or the TLS settings of a PostgreSQL connection are unusable.
    #[error("{0}")]
    Settings(String),
    /// A query that must return a row returned none.
    #[error("the query returned no row")]
    NoRows,
    /// A value did not fit its column or parameter.
    #[error("{}{problem}", column.map(|c| format!("column {c}: ")).unwrap_or_default())]
    Conversion {
        /// The result column, for a read.
        column: Option<usize>,
        /// What was wrong.
        problem: String,
    },
}

impl SqlError {
    /// The engine said its storage is full (`SQLITE_FULL`, PostgreSQL class 53 "disk full").
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            Self::Postgres(e) => e.code() == Some(&::postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }
}

/// `Result<T, SqlError>` with [`SqlError::NoRows`] turned into `None`, as rusqlite's
/// `OptionalExtension`.
pub(crate) trait OptionalExtension<T> {
    /// `Ok(None)` for no row.
    ///
    /// # Errors
    /// Any other error.
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> OptionalExtension<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The parameters of one statement.
pub(crate) trait Params {
    /// The values to bind, in placeholder order.
    ///
    /// # Errors
    /// [`SqlError::Conversion`] for a value no column can hold.
    fn values(&self) -> Result<Vec<Value>, SqlError>;
}

impl Params for () {
    fn values(&self) -> Result<Vec<Value>, SqlError> {
        Ok(Vec::new())
    }
}

impl<T: ToParam, const N: usize> Params for [T; N] {
    fn values(&self) -> Result<Vec<Value>, SqlError> {
        self.iter().map(ToParam::to_param).collect()
    }
}

impl Params for &[&dyn ToParam] {
    fn values(&self) -> Result<Vec<Value>, SqlError> {
        self.iter().map(|p| p.to_param()).collect()
    }
}

impl Params for Vec<Value> {
    fn values(&self) -> Result<Vec<Value>, SqlError> {
        Ok(self.clone())
    }
}

/// A connection to one of the engines.
pub(crate) struct Conn {
    inner: Inner,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(pg::PgConn),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("engine", &self.engine())
            .finish_non_exhaustive()
    }
}

/// A result row; [`get`](Self::get) reads one column.
pub(crate) enum Row<'a> {
    /// A SQLite row.
    Sqlite(&'a rusqlite::Row<'a>),
    /// A PostgreSQL row.
    Postgres(&'a ::postgres::Row),
}

/// A column's position in a row (from 0): `row.get(0)` as in rusqlite.
pub(crate) trait ColumnIndex {
    /// The position.
    fn position(self) -> usize;
}

impl ColumnIndex for usize {
    fn position(self) -> usize {
        self
    }
}

impl Row<'_> {
    /// Column `index` (from 0) as a `T`.
    ///
    /// # Errors
    /// The engine's error for a missing column, [`SqlError::Conversion`] for a value that is
    /// not a `T`.
    pub(crate) fn get<I: ColumnIndex, T: FromColumn>(&self, index: I) -> Result<T, SqlError> {
        let index = index.position();
        let convert = |column: Column<'_>| {
            T::from_column(column).map_err(|problem| SqlError::Conversion {
                column: Some(index),
                problem,
            })
        };
        match self {
            Row::Sqlite(row) => convert(sqlite::column(row.get_ref(index)?)),
            Row::Postgres(row) => {
                let value: pg::PgValue = row.try_get(index)?;
                convert(value.column())
            }
        }
    }
}

impl Conn {
    /// A connection over an open SQLite database.
    pub(crate) fn sqlite(conn: rusqlite::Connection) -> Self {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Self {
            inner: Inner::Sqlite(conn),
        }
    }

    /// A connection to the PostgreSQL server at `url`, over TLS with `sslmode=require`
    /// (`tls.rs`).
    ///
    /// # Errors
    /// [`SqlError::Postgres`] when the server cannot be reached, refuses the login or its
    /// certificate; [`SqlError::Tls`] when the trusted certificates cannot be read.
    pub(crate) fn postgres(url: &super::PostgresUrl) -> Result<Self, SqlError> {
        Ok(Self {
            inner: Inner::Postgres(pg::PgConn::connect(url)?),
        })
    }

    /// The engine behind this connection.
    pub(crate) fn engine(&self) -> Engine {
        match self.inner {
            Inner::Sqlite(_) => Engine::Sqlite,
            Inner::Postgres(_) => Engine::Postgres,
        }
    }

    /// Closes the connection, reporting what closing found (SQLite: a statement still
    /// open; PostgreSQL: the server's answer to the goodbye).
    ///
    /// # Errors
    /// The engine's error.
    pub(crate) fn close(self) -> Result<(), SqlError> {
        match self.inner {
            Inner::Sqlite(conn) => conn.close().map_err(|(_, e)| e.into()),
            Inner::Postgres(conn) => conn.close(),
        }
    }

    /// Runs one statement; returns the rows it changed.
    ///
    /// # Errors
    /// The engine's error, or a parameter that did not convert.
    pub(crate) fn execute(&self, sql: &str, params: impl Params) -> Result<usize, SqlError> {
        let values = params.values()?;
        match &self.inner {
            Inner::Sqlite(conn) => Ok(conn.execute(sql, sqlite::bind(&values))?),
            Inner::Postgres(conn) => conn.execute(sql, &values),
        }
    }

    /// Runs several statements without parameters (schema changes).
    ///
    /// # Errors
    /// The engine's error.
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        match &self.inner {
            Inner::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Inner::Postgres(conn) => conn.batch(sql),
        }
    }

    /// The first row of a query, mapped by `f`; [`SqlError::NoRows`] when there is none.
    ///
    /// # Errors
    /// The engine's error, `f`'s, or [`SqlError::NoRows`].
    pub(crate) fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let values = params.values()?;
        match &self.inner {
            Inner::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = stmt.query(sqlite::bind(&values))?;
                match rows.next()? {
                    Some(row) => f(&Row::Sqlite(row)),
                    None => Err(SqlError::NoRows),
                }
            }
            Inner::Postgres(conn) => match conn.query(sql, &values)?.first() {
                Some(row) => f(&Row::Postgres(row)),
                None => Err(SqlError::NoRows),
            },
        }
    }

    /// Every row of a query, each mapped by `f`, in the query's order.
    ///
    /// # Errors
    /// The engine's error or the first of `f`'s.
    pub(crate) fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        let values = params.values()?;
        match &self.inner {
            Inner::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = stmt.query(sqlite::bind(&values))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Inner::Postgres(conn) => conn
                .query(sql, &values)?
                .iter()
                .map(|row| f(&Row::Postgres(row)))
                .collect(),
        }
    }

    /// Calls `f` on every row of a query until it returns `false`; for scans that stop
    /// early without collecting every row. (PostgreSQL still fetches the whole result.)
    ///
    /// # Errors
    /// The engine's error or `f`'s.
    pub(crate) fn query_each(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<bool, SqlError>,
    ) -> Result<(), SqlError> {
        let values = params.values()?;
        match &self.inner {
            Inner::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = stmt.query(sqlite::bind(&values))?;
                while let Some(row) = rows.next()? {
                    if !f(&Row::Sqlite(row))? {
                        break;
                    }
                }
                Ok(())
            }
            Inner::Postgres(conn) => {
                for row in &conn.query(sql, &values)? {
                    if !f(&Row::Postgres(row))? {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// A statement to run, perhaps several times (rusqlite's shape; both engines cache the
    /// prepared form per connection).
    ///
    /// # Errors
    /// None today; kept fallible as rusqlite's, where a syntax error shows here.
    pub(crate) fn prepare(&self, sql: &str) -> Result<Statement<'_>, SqlError> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    /// Starts a write transaction: SQLite's `BEGIN IMMEDIATE` (the write lock at once), and
    /// on PostgreSQL a transaction that first takes the catalog's advisory writer lock, so
    /// the transactions of several servers on one database run one at a time, as SQLite's
    /// do. Rolled back when dropped without [`Tx::commit`].
    ///
    /// # Errors
    /// The engine's error.
    pub(crate) fn immediate(&mut self) -> Result<Tx<'_>, SqlError> {
        match &self.inner {
            Inner::Sqlite(conn) => conn.execute_batch("BEGIN IMMEDIATE")?,
            Inner::Postgres(conn) => conn.begin_serialized()?,
        }
        Ok(Tx {
            conn: self,
            open: true,
        })
    }
}

/// A statement of a connection (see [`Conn::prepare`]).
pub(crate) struct Statement<'c> {
    conn: &'c Conn,
    sql: String,
}

impl Statement<'_> {
    /// Runs it; returns the rows it changed.
    ///
    /// # Errors
    /// As [`Conn::execute`].
    pub(crate) fn execute(&mut self, params: impl Params) -> Result<usize, SqlError> {
        self.conn.execute(&self.sql, params)
    }

    /// Its first row, mapped by `f`.
    ///
    /// # Errors
    /// As [`Conn::query_row`].
    pub(crate) fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Its rows, each mapped by `f` (all read before this returns).
    ///
    /// # Errors
    /// As [`Conn::query_map`].
    pub(crate) fn query_map<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T, SqlError>,
    ) -> Result<std::vec::IntoIter<Result<T, SqlError>>, SqlError> {
        let rows = self.conn.query_map(&self.sql, params, f)?;
        Ok(rows.into_iter().map(Ok).collect::<Vec<_>>().into_iter())
    }
}

/// A write transaction (see [`Conn::immediate`]); derefs to its connection.
pub(crate) struct Tx<'c> {
    conn: &'c mut Conn,
    open: bool,
}

impl Tx<'_> {
    /// Commits: durable when this returns.
    ///
    /// # Errors
    /// The engine's error; the transaction is rolled back then.
    pub(crate) fn commit(mut self) -> Result<(), SqlError> {
        self.open = false;
        let committed = self.conn.execute_batch("COMMIT");
        if committed.is_err() {
            // SQLite keeps a transaction open when its COMMIT fails (busy); end it.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        committed
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Best effort: a connection that failed mid-transaction has rolled back already.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}
