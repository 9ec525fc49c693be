//! The PostgreSQL side of the seam, over the blocking `postgres` client: the statement text
//! rewritten for PostgreSQL (`?N` → `$N`), prepared once per connection, and values
//! converted to and from the types the server inferred for each placeholder and column.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, Statement};

use super::{Column, SqlError, Value};

/// Key of the advisory lock every write transaction takes first (see
/// [`Conn::immediate`](super::Conn::immediate)): "cybrback" in ASCII.
const WRITER_LOCK: i64 = 0x6379_6272_6261_636b;

/// A PostgreSQL connection with its prepared statements. `RefCell`: the seam's reads take
/// `&self`, as rusqlite's do, and a connection is used by one thread at a time. The client
/// is an `Option` only so that [`Drop`] can move it off an async thread (see there).
pub(super) struct PgConn {
    client: RefCell<Option<Client>>,
    statements: RefCell<HashMap<String, Statement>>,
}

impl Drop for PgConn {
    /// The blocking client's own drop runs a runtime to say goodbye to the server, which
    /// panics on a thread that drives async tasks (a catalog handle dropped by a task drops
    /// its idle connections there): such a client is dropped on a thread of its own.
    fn drop(&mut self) {
        let Some(client) = self.client.get_mut().take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("catalog-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl PgConn {
    pub(super) fn connect(url: &crate::catalog::PostgresUrl) -> Result<Self, SqlError> {
        let client = super::tls::connect(url)?;
        Ok(Self {
            client: RefCell::new(Some(client)),
            statements: RefCell::new(HashMap::new()),
        })
    }

    /// Runs `f` on the client.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, SqlError> {
        let mut client = self.client.borrow_mut();
        let client = client.as_mut().ok_or(SqlError::Closed)?;
        Ok(f(client)?)
    }

    /// The prepared statement of `sql` (in the seam's dialect).
    fn statement(&self, sql: &str) -> Result<Statement, SqlError> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.with(|c| c.prepare(&placeholders(sql)))?;
        let mut statements = self.statements.borrow_mut();
        // Lookups of N ids are N different texts: start over rather than keep every one
        // prepared on the server (a dropped statement is closed there).
        if statements.len() >= super::STATEMENT_CACHE {
            statements.clear();
        }
        statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(super) fn execute(&self, sql: &str, values: &[Value]) -> Result<usize, SqlError> {
        let statement = self.statement(sql)?;
        let changed = self.with(|c| c.execute(&statement, &refs(values)))?;
        usize::try_from(changed).map_err(|_| SqlError::Conversion {
            column: None,
            problem: format!("{changed} rows changed"),
        })
    }

    pub(super) fn query(
        &self,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<postgres::Row>, SqlError> {
        let statement = self.statement(sql)?;
        self.with(|c| c.query(&statement, &refs(values)))
    }

    pub(super) fn batch(&self, sql: &str) -> Result<(), SqlError> {
        self.with(|c| c.batch_execute(sql))
    }

    pub(super) fn close(mut self) -> Result<(), SqlError> {
        match self.client.get_mut().take() {
            Some(client) => Ok(client.close()?),
            None => Ok(()),
        }
    }

    pub(super) fn begin_serialized(&self) -> Result<(), SqlError> {
        self.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK});"
        ))
    }
}

fn refs(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// `sql` with SQLite's placeholders in PostgreSQL's form: `?N` becomes `$N`, and a bare `?`
/// the next number. Quoted strings and identifiers are left alone.
pub(super) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut bare = 0;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    bare += 1;
                    out.push_str(&bare.to_string());
                }
            }
            None => out.push(c),
        }
    }
    out
}

fn out_of_range(value: i64, ty: &Type) -> Box<dyn Error + Sync + Send> {
    format!("integer {value} does not fit a {ty} parameter").into()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)
                    .map_err(|_| out_of_range(*i, ty))?
                    .to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)
                    .map_err(|_| out_of_range(*i, ty))?
                    .to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            },
            Self::Text(text) => text.as_str().to_sql(ty, out),
            Self::Blob(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`: which types a value fits depends on the value.
        true
    }

    to_sql_checked!();
}

/// A column as PostgreSQL returned it, owned (see [`PgValue::column`]).
pub(super) enum PgValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl PgValue {
    pub(super) fn column(&self) -> Column<'_> {
        match self {
            Self::Null => Column::Null,
            Self::Integer(i) => Column::Integer(*i),
            Self::Real(r) => Column::Real(*r),
            Self::Text(text) => Column::Text(text),
            Self::Blob(bytes) => Column::Blob(bytes),
        }
    }
}

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT2 => Self::Integer(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Self::Integer(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Self::Integer(i64::from_sql(ty, raw)?),
            Type::BOOL => Self::Integer(bool::from_sql(ty, raw)?.into()),
            Type::NUMERIC => Self::Integer(integral_numeric(raw)?),
            Type::FLOAT4 => Self::Real(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Self::Real(f64::from_sql(ty, raw)?),
            Type::BYTEA => Self::Blob(raw.to_vec()),
            _ => Self::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Self::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::BOOL
                | Type::NUMERIC
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::BYTEA
        ) || <String as FromSql>::accepts(ty)
    }
}

/// An integral `NUMERIC` in PostgreSQL's binary form (what `SUM` of a `BIGINT` returns):
/// digit count, weight, sign, display scale, then base-10000 digits, most significant
/// first, the first one worth 10000^weight.
fn integral_numeric(raw: &[u8]) -> Result<i64, Box<dyn Error + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn Error + Sync + Send>> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated NUMERIC".into())
    };
    let digits = usize::from(word(0)?);
    let weight = i32::from(i16::from_be_bytes(word(1)?.to_be_bytes()));
    let sign = word(2)?;
    let mut value: i128 = 0;
    for i in 0..digits {
        let place = weight - i32::try_from(i)?;
        let digit = i128::from(word(4 + i)?);
        if place < 0 {
            if digit != 0 {
                return Err("a NUMERIC with a fraction where an integer was expected".into());
            }
            continue;
        }
        value = value
            .checked_add(
                digit
                    * 10_000i128
                        .checked_pow(u32::try_from(place)?)
                        .ok_or("NUMERIC too large")?,
            )
            .ok_or("NUMERIC too large")?;
    }
    // Trailing zero groups are not sent: the digits end above the units.
    let value = match sign {
        0x0000 => value,
        0x4000 => -value,
        _ => return Err("NUMERIC NaN or infinity where an integer was expected".into()),
    };
    Ok(i64::try_from(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?2 AND c = ?1"),
            "SELECT a FROM t WHERE b = $2 AND c = $1"
        );
        assert_eq!(
            placeholders("x > ? AND y = ? AND z = '?' AND \"w?\" = ?"),
            "x > $1 AND y = $2 AND z = '?' AND \"w?\" = $3"
        );
    }

    fn numeric(digits: &[u16], weight: i16, sign: u16) -> Vec<u8> {
        let mut raw = Vec::new();
        for word in [
            u16::try_from(digits.len()).unwrap(),
            u16::from_be_bytes(weight.to_be_bytes()),
            sign,
            0,
        ]
        .into_iter()
        .chain(digits.iter().copied())
        {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        raw
    }

    #[test]
    fn integral_numerics_decode_with_their_weight_and_sign() {
        // 12_3456_0000 = [12, 3456] with weight 2 (the trailing zero group is not sent).
        assert_eq!(
            integral_numeric(&numeric(&[12, 3456], 2, 0)).unwrap(),
            1_234_560_000
        );
        assert_eq!(integral_numeric(&numeric(&[7], 0, 0x4000)).unwrap(), -7);
        assert_eq!(integral_numeric(&numeric(&[], 0, 0)).unwrap(), 0);
        assert!(integral_numeric(&numeric(&[1, 5], 0, 0)).is_err(), "1.0005");
        assert!(integral_numeric(&numeric(&[1], 5, 0)).is_err(), "10^20");
        assert!(integral_numeric(&numeric(&[1], 0, 0xC000)).is_err(), "NaN");
        assert!(integral_numeric(&[0, 1]).is_err(), "truncated");
    }
}
