//! The SQLite side of the seam: binding [`Value`]s and reading columns with rusqlite.

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{Column, Value};

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Self::Null => ValueRef::Null,
            Self::Integer(i) => ValueRef::Integer(*i),
            Self::Text(text) => ValueRef::Text(text.as_bytes()),
            Self::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

/// `values` as rusqlite parameters.
pub(super) fn bind(values: &[Value]) -> rusqlite::ParamsFromIter<std::slice::Iter<'_, Value>> {
    rusqlite::params_from_iter(values.iter())
}

/// A rusqlite column as a [`Column`]. Text that is not UTF-8 reads as a blob (the catalog
/// stores names as blobs; a text column with other bytes fails where text is expected).
pub(super) fn column(value: ValueRef<'_>) -> Column<'_> {
    match value {
        ValueRef::Null => Column::Null,
        ValueRef::Integer(i) => Column::Integer(i),
        ValueRef::Real(r) => Column::Real(r),
        ValueRef::Text(bytes) => {
            std::str::from_utf8(bytes).map_or(Column::Blob(bytes), Column::Text)
        }
        ValueRef::Blob(bytes) => Column::Blob(bytes),
    }
}
