//! RFC 3339 UTC timestamps as stored in the catalog (`2024-05-01T12:34:56.789Z`).
//!
//! All catalog timestamps use this one fixed-width format, so text comparison in SQL is
//! chronological comparison.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, millisecond precision).
///
/// Times before 1970 are clamped to the epoch.
#[must_use]
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000Z"),
            (1_700_000_000, 123, "2023-11-14T22:13:20.123Z"),
            (4_102_444_799, 999, "2099-12-31T23:59:59.999Z"),
        ];
        for (secs, millis, expected) in cases {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(format_rfc3339(t), expected);
        }
    }

    #[test]
    fn text_order_is_time_order() {
        let a = format_rfc3339(UNIX_EPOCH + Duration::from_secs(999_999_999));
        let b = format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_000_000_000));
        assert!(a < b, "{a} !< {b}");
    }
}
