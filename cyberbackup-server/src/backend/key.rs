//! [`ObjectKey`]: the validated name of an object, the same on every backend.
//!
//! Hand-written because the rules are ours: a key must be a safe relative path on a local
//! disk *and* a plain S3 key, so it is a `/`-separated list of segments drawn from a small
//! alphabet, none starting with `.` (the local backend's temp files start with `.`, so they
//! can never collide with a key or be listed as one).

use std::fmt;

/// Longest key, in bytes (S3 allows 1024 including the configured prefix).
const MAX_KEY_LEN: usize = 512;
/// Longest segment, in bytes (a file name on common local file systems).
const MAX_SEGMENT_LEN: usize = 255;

/// A valid object key: `/`-separated segments of ASCII letters, digits, `.`, `_` and `-`,
/// each 1–255 bytes and not starting with `.`; at most 512 bytes in all. Examples:
/// `data/3f/3f9a…`, `snapshots/2026-12-01`, `config`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

/// Why a string is not an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid object key {key:?}: {reason} (a key is '/'-separated segments of A-Z a-z 0-9 . _ -, \
     each 1-255 bytes, not starting with '.', at most 512 bytes in all)"
)]
pub struct KeyError {
    /// The rejected string (lossy if it was not UTF-8).
    pub key: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

impl ObjectKey {
    /// Validates `key`.
    ///
    /// # Errors
    /// [`KeyError`] naming the rule `key` breaks.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        match violation(&key) {
            Some(reason) => Err(KeyError { key, reason }),
            None => Ok(Self(key)),
        }
    }

    /// The key as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this key lies under `prefix` (segment-wise: `data` covers `data/x`, not
    /// `database`; a key is not under itself).
    #[must_use]
    pub fn is_under(&self, prefix: &Self) -> bool {
        self.0
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The key's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn violation(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Some("it is longer than 512 bytes");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Some("it has an empty segment (a leading, trailing or doubled '/')");
        }
        if segment.len() > MAX_SEGMENT_LEN {
            return Some("a segment is longer than 255 bytes");
        }
        if segment.starts_with('.') {
            return Some("a segment starts with '.'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Some("it has a character outside A-Z a-z 0-9 . _ - /");
        }
    }
    None
}

impl TryFrom<String> for ObjectKey {
    type Error = KeyError;

    fn try_from(key: String) -> Result<Self, KeyError> {
        Self::new(key)
    }
}

impl From<ObjectKey> for String {
    fn from(key: ObjectKey) -> Self {
        key.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_pack_like_keys() {
        for key in ["config", "data/3f/3f9a00", "snapshots/2026-12-01_x.y", "a"] {
            assert_eq!(ObjectKey::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn rejects_keys_that_are_not_safe_paths() {
        for (key, reason) in [
            ("", "it is empty"),
            ("/data", "it has an empty segment"),
            ("data/", "it has an empty segment"),
            ("data//x", "it has an empty segment"),
            ("..", "a segment starts with '.'"),
            ("data/../x", "a segment starts with '.'"),
            (".upload-1", "a segment starts with '.'"),
            ("data\\x", "it has a character outside"),
            ("dätä", "it has a character outside"),
            ("a b", "it has a character outside"),
            ("x\0", "it has a character outside"),
        ] {
            let err = ObjectKey::new(key).unwrap_err();
            assert!(err.reason.starts_with(reason), "{key:?}: {}", err.reason);
            assert!(err.to_string().contains("A-Z a-z 0-9"), "{err}");
        }
        assert!(ObjectKey::new("a".repeat(256)).is_err());
        assert!(ObjectKey::new(["a"; 257].join("/")).is_err());
        assert!(ObjectKey::new("a".repeat(255)).is_ok());
    }

    #[test]
    fn prefixes_are_segment_wise() {
        let key = ObjectKey::new("data/ab/cd").unwrap();
        assert!(key.is_under(&ObjectKey::new("data").unwrap()));
        assert!(key.is_under(&ObjectKey::new("data/ab").unwrap()));
        assert!(!key.is_under(&ObjectKey::new("dat").unwrap()));
        assert!(!key.is_under(&ObjectKey::new("data/ab/cd").unwrap()));
    }

    #[test]
    fn deserializing_validates() {
        let key: ObjectKey = serde_json::from_str("\"data/x\"").unwrap();
        assert_eq!(key.as_str(), "data/x");
        assert!(serde_json::from_str::<ObjectKey>("\"../x\"").is_err());
    }
}
