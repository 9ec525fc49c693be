//! The values that cross the seam: [`Value`] (a parameter, owned), [`Column`] (a result
//! column, borrowed) and the conversions of the Rust types the catalog stores. Both engines
//! bind and read through these, so a type is stored and read back the same way on SQLite
//! and on PostgreSQL: integers as 64-bit, text as UTF-8, bytes as blobs (`BYTEA`).

use super::SqlError;

/// A parameter value: SQLite's storage classes, which PostgreSQL's `BIGINT`, `TEXT` and
/// `BYTEA` columns mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer (booleans are 0 and 1).
    Integer(i64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A result column as the engine returned it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Column<'a> {
    /// SQL `NULL`.
    Null,
    /// An integer (PostgreSQL: `SMALLINT`, `INTEGER`, `BIGINT`, `BOOLEAN`, or an integral
    /// `NUMERIC` such as a `SUM`).
    Integer(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

impl Column<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Column::Null => "NULL",
            Column::Integer(_) => "an integer",
            Column::Real(_) => "a real number",
            Column::Text(_) => "text",
            Column::Blob(_) => "a blob",
        }
    }
}

/// A Rust value the catalog binds as a parameter.
pub(crate) trait ToParam {
    /// The value to bind.
    ///
    /// # Errors
    /// [`SqlError::Conversion`] for an integer beyond `i64`.
    fn to_param(&self) -> Result<Value, SqlError>;
}

/// A Rust value the catalog reads from a result column.
pub(crate) trait FromColumn: Sized {
    /// The value of `column`.
    ///
    /// # Errors
    /// A message naming what the column held instead (the caller adds its index).
    fn from_column(column: Column<'_>) -> Result<Self, String>;
}

fn wrong(column: Column<'_>, wanted: &str) -> String {
    format!("expected {wanted}, found {}", column.kind())
}

impl<T: ToParam + ?Sized> ToParam for &T {
    fn to_param(&self) -> Result<Value, SqlError> {
        (**self).to_param()
    }
}

impl<T: ToParam> ToParam for Option<T> {
    fn to_param(&self) -> Result<Value, SqlError> {
        self.as_ref().map_or(Ok(Value::Null), ToParam::to_param)
    }
}

impl ToParam for Value {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(self.clone())
    }
}

impl ToParam for str {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(Value::Text(self.to_owned()))
    }
}

impl ToParam for String {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(Value::Text(self.clone()))
    }
}

impl ToParam for [u8] {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl ToParam for Vec<u8> {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(Value::Blob(self.clone()))
    }
}

impl<const N: usize> ToParam for [u8; N] {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl ToParam for bool {
    fn to_param(&self) -> Result<Value, SqlError> {
        Ok(Value::Integer(i64::from(*self)))
    }
}

macro_rules! integer_param {
    ($($t:ty),*) => {$(
        impl ToParam for $t {
            fn to_param(&self) -> Result<Value, SqlError> {
                i64::try_from(*self).map(Value::Integer).map_err(|_| SqlError::Conversion {
                    column: None,
                    problem: format!("integer {self} does not fit a 64-bit column"),
                })
            }
        }
    )*};
}
integer_param!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

/// A column as it is, for copying rows between catalogs (real numbers, which the catalog
/// never stores, are refused).
impl FromColumn for Value {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        Ok(match column {
            Column::Null => Self::Null,
            Column::Integer(i) => Self::Integer(i),
            Column::Text(text) => Self::Text(text.to_owned()),
            Column::Blob(bytes) => Self::Blob(bytes.to_vec()),
            Column::Real(_) => return Err(wrong(column, "an integer, text or a blob")),
        })
    }
}

impl<T: FromColumn> FromColumn for Option<T> {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        match column {
            Column::Null => Ok(None),
            other => T::from_column(other).map(Some),
        }
    }
}

impl FromColumn for String {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        match column {
            Column::Text(text) => Ok(text.to_owned()),
            other => Err(wrong(other, "text")),
        }
    }
}

impl FromColumn for Vec<u8> {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        match column {
            Column::Blob(bytes) => Ok(bytes.to_vec()),
            other => Err(wrong(other, "a blob")),
        }
    }
}

impl<const N: usize> FromColumn for [u8; N] {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        match column {
            Column::Blob(bytes) => bytes
                .try_into()
                .map_err(|_| format!("expected a blob of {N} bytes, found {}", bytes.len())),
            other => Err(wrong(other, "a blob")),
        }
    }
}

impl FromColumn for bool {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        match column {
            Column::Integer(i) => Ok(i != 0),
            other => Err(wrong(other, "an integer")),
        }
    }
}

impl FromColumn for f64 {
    fn from_column(column: Column<'_>) -> Result<Self, String> {
        match column {
            Column::Real(r) => Ok(r),
            #[allow(clippy::cast_precision_loss)]
            Column::Integer(i) => Ok(i as Self),
            other => Err(wrong(other, "a number")),
        }
    }
}

macro_rules! integer_column {
    ($($t:ty),*) => {$(
        impl FromColumn for $t {
            fn from_column(column: Column<'_>) -> Result<Self, String> {
                match column {
                    Column::Integer(i) => <$t>::try_from(i)
                        .map_err(|_| format!("integer {i} is out of range for {}", stringify!($t))),
                    other => Err(wrong(other, "an integer")),
                }
            }
        }
    )*};
}
integer_column!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_out_of_range_are_errors_both_ways() {
        assert!(u64::MAX.to_param().is_err());
        assert_eq!(7u64.to_param().unwrap(), Value::Integer(7));
        assert!(u32::from_column(Column::Integer(-1)).is_err());
        assert_eq!(u32::from_column(Column::Integer(9)), Ok(9));
    }

    #[test]
    fn fixed_arrays_need_their_exact_length() {
        assert!(<[u8; 4]>::from_column(Column::Blob(&[1, 2, 3])).is_err());
        assert_eq!(
            <[u8; 3]>::from_column(Column::Blob(&[1, 2, 3])),
            Ok([1, 2, 3])
        );
    }

    #[test]
    fn null_is_none_and_a_wrong_kind_is_named() {
        assert_eq!(Option::<String>::from_column(Column::Null), Ok(None));
        let err = String::from_column(Column::Integer(1)).unwrap_err();
        assert!(err.contains("expected text, found an integer"), "{err}");
    }
}
