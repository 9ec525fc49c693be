//! The byte reader and writer helpers every repository decoder and encoder shares:
//! little-endian integers, length-prefixed byte strings, counts checked against the
//! remaining input before anything is allocated.

use super::error::{ObjectKind, RepoError};

/// A cursor over one object's bytes; every read is bounds-checked and typed.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    object: ObjectKind,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], object: ObjectKind) -> Self {
        Self {
            buf,
            pos: 0,
            object,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], RepoError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(taken) = rest.get(..n) else {
            return Err(RepoError::Truncated {
                object: self.object,
                offset: self.pos,
                needed: n - rest.len(),
            });
        };
        self.pos += n;
        Ok(taken)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RepoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, RepoError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, RepoError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, RepoError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, RepoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, RepoError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Checks the 4-byte magic.
    pub(crate) fn magic(&mut self, expected: [u8; 4]) -> Result<(), RepoError> {
        let found = self.array::<4>()?;
        if found != expected {
            return Err(RepoError::BadMagic {
                object: self.object,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Reads a one-byte format version and refuses any other than `supported`.
    pub(crate) fn version(&mut self, supported: u8) -> Result<(), RepoError> {
        let found = self.u8()?;
        if found != supported {
            return Err(RepoError::UnsupportedVersion {
                object: self.object,
                found: u32::from(found),
                supported: u32::from(supported),
            });
        }
        Ok(())
    }

    /// A byte string with a u16 length prefix, at most `max` long.
    pub(crate) fn bytes16(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], RepoError> {
        let len = usize::from(self.u16()?);
        self.limit(what, len, max)?;
        self.take(len)
    }

    /// A byte string with a u32 length prefix, at most `max` long.
    pub(crate) fn bytes32(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], RepoError> {
        let len = self.len32()?;
        self.limit(what, len, max)?;
        self.take(len)
    }

    /// A u32 item count, at most `max`, whose items (each at least `min_item_len` bytes)
    /// must fit in what is left: checked before the caller allocates for them.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_item_len: usize,
        max: usize,
    ) -> Result<usize, RepoError> {
        let offset = self.pos;
        let count = self.len32()?;
        self.limit(what, count, max)?;
        let needed = count.saturating_mul(min_item_len);
        if needed > self.remaining() {
            return Err(RepoError::Truncated {
                object: self.object,
                offset,
                needed: needed - self.remaining(),
            });
        }
        Ok(count)
    }

    pub(crate) fn malformed(&self, reason: &'static str) -> RepoError {
        RepoError::Malformed {
            object: self.object,
            reason,
        }
    }

    /// Ends the object: no byte may follow.
    pub(crate) fn finish(self) -> Result<(), RepoError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(RepoError::TrailingBytes {
                object: self.object,
                extra,
            }),
        }
    }

    fn len32(&mut self) -> Result<usize, RepoError> {
        let len = self.u32()?;
        usize::try_from(len).map_err(|_| RepoError::LimitExceeded {
            object: self.object,
            what: "length",
            value: u64::from(len),
            max: usize::MAX as u64,
        })
    }

    fn limit(&self, what: &'static str, value: usize, max: usize) -> Result<(), RepoError> {
        check_limit(self.object, what, value, max)
    }
}

/// `value <= max`, else [`RepoError::LimitExceeded`].
pub(crate) fn check_limit(
    object: ObjectKind,
    what: &'static str,
    value: usize,
    max: usize,
) -> Result<(), RepoError> {
    if value > max {
        return Err(RepoError::LimitExceeded {
            object,
            what,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// Appends a u16-length-prefixed byte string of at most `max` bytes.
pub(crate) fn put_bytes16(
    out: &mut Vec<u8>,
    object: ObjectKind,
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<(), RepoError> {
    check_limit(object, what, bytes.len(), max.min(usize::from(u16::MAX)))?;
    let len = u16::try_from(bytes.len()).map_err(|_| RepoError::ApiMisuse("u16 limit"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Appends a u32-length-prefixed byte string of at most `max` bytes.
pub(crate) fn put_bytes32(
    out: &mut Vec<u8>,
    object: ObjectKind,
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<(), RepoError> {
    put_count(out, object, what, bytes.len(), max)?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// Appends a u32 count of at most `max`.
pub(crate) fn put_count(
    out: &mut Vec<u8>,
    object: ObjectKind,
    what: &'static str,
    count: usize,
    max: usize,
) -> Result<(), RepoError> {
    check_limit(object, what, count, max)?;
    let count = u32::try_from(count).map_err(|_| RepoError::LimitExceeded {
        object,
        what,
        value: count as u64,
        max: u64::from(u32::MAX),
    })?;
    out.extend_from_slice(&count.to_le_bytes());
    Ok(())
}
