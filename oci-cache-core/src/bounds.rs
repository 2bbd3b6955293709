//! The allowed range of each duration and size setting, checked when the
//! configuration is read.
//!
//! A value far outside what a site could mean is a typo or an attack on the
//! process: `breaker_cooldown = "18446744073709551615s"` used to pass every
//! check and then panic a worker on each request that opened the breaker
//! (the deadline overflowed). The options types call these from their
//! `validate` methods, naming the key as the operator writes it.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::duration::format_duration;
use crate::{Error, Result};

/// One day, for ranges.
pub const DAY: Duration = Duration::from_secs(86_400);
/// One year of days, the longest duration any setting takes.
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);
/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 TiB.
pub const TIB: u64 = 1 << 40;
/// 1 PiB.
pub const PIB: u64 = 1 << 50;
/// 1 EiB: the largest size any setting takes (a tenth of `u64::MAX`, so
/// percentages of it do not overflow).
pub const EIB: u64 = 1 << 60;

/// `value` when it lies in `range`, else a [`Error::Config`] naming `key` and the range.
///
/// ```
/// # use std::time::Duration;
/// # use oci_cache_core::bounds::{duration_in, DAY};
/// assert!(duration_in("breaker_cooldown", Duration::from_secs(30), Duration::ZERO..=DAY).is_ok());
/// let e = duration_in("breaker_cooldown", Duration::MAX, Duration::ZERO..=DAY).unwrap_err();
/// assert!(e.to_string().contains("breaker_cooldown"));
/// ```
pub fn duration_in(
    key: &str,
    value: Duration,
    range: RangeInclusive<Duration>,
) -> Result<Duration> {
    within(key, value, range, "a duration", format_duration)
}

/// A byte size in `range`, else a [`Error::Config`] naming `key` and the range.
pub fn size_in(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<u64> {
    within(key, value, range, "a size", format_size)
}

/// A count (connections, tags, redirects) in `range`, else a
/// [`Error::Config`] naming `key` and the range.
pub fn count_in(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<u64> {
    within(key, value, range, "a number", |n| n.to_string())
}

/// The check behind the three: `what` and `show` say how the range is written.
fn within<T: PartialOrd + Copy>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    what: &str,
    show: impl Fn(T) -> String,
) -> Result<T> {
    if range.contains(&value) {
        return Ok(value);
    }
    Err(Error::Config(format!(
        "{key} = {} is out of range: write {what} from {} to {}",
        show(value),
        show(*range.start()),
        show(*range.end()),
    )))
}

/// `bytes` in the largest binary unit that divides it (`4MiB`), else in bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [
        ("EiB", EIB),
        ("PiB", PIB),
        ("TiB", TIB),
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", KIB),
    ] {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_in_range_pass_and_others_name_key_and_range() {
        assert_eq!(
            duration_in("k", Duration::from_secs(5), Duration::ZERO..=DAY).unwrap(),
            Duration::from_secs(5)
        );
        let e = duration_in(
            "[upstream_client] breaker_cooldown",
            Duration::from_secs(u64::MAX),
            Duration::ZERO..=DAY,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[upstream_client] breaker_cooldown = "), "{e}");
        assert!(e.contains("from 0 to 1d"), "{e}");
        let e = size_in("max_size", u64::MAX, MIB..=PIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("from 1MiB to 1PiB"), "{e}");
        assert_eq!(size_in("max_size", 4 * MIB, MIB..=PIB).unwrap(), 4 * MIB);
        let e = count_in("max_redirects", 1000, 0..=50)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_redirects = 1000 is out of range: write a number from 0 to 50"),
            "{e}"
        );
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(3 * GIB), "3GiB");
    }
}
