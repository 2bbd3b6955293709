//! Byte sizes as operators write them: `150MiB`, `50GiB`, `2TB`, `1048576`.

use serde::Deserialize;

use crate::{Error, Result};

/// Parses a byte size: a whole number with an optional unit, `B`, `K`/`KB`
/// (1000), `KiB` (1024), and so on up to `E`/`EB`/`EiB`; case does not
/// matter, a space before the unit is allowed.
///
/// ```
/// # use oci_cache_core::evict::parse_size;
/// assert_eq!(parse_size("150MiB")?, 150 * 1024 * 1024);
/// assert_eq!(parse_size("2 GB")?, 2_000_000_000);
/// # Ok::<_, oci_cache_core::Error>(())
/// ```
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        Error::Config(format!(
            "size `{text}` is not a whole number with an optional unit, such as 150MiB, 50GiB or 1073741824"
        ))
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        "p" | "pb" => 1000 * 1000 * 1000 * 1000 * 1000,
        "pib" => 1 << 50,
        "e" | "eb" => 1000 * 1000 * 1000 * 1000 * 1000 * 1000,
        "eib" => 1 << 60,
        _ => return Err(bad()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| Error::Config(format!("size `{text}` does not fit in 64 bits")))
}

/// Deserializes a size from a string (`"16MiB"`) or a number of bytes.
pub(crate) fn deserialize<'de, D>(deserializer: D) -> Result<u64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    deserialize_opt(deserializer)?.ok_or_else(|| {
        serde::de::Error::custom("expected a size such as \"16MiB\" or a number of bytes")
    })
}

/// Deserializes an optional size from a string (`"150MiB"`) or a number of bytes.
pub(crate) fn deserialize_opt<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Size::Bytes(bytes)) => Ok(Some(bytes)),
        Some(Size::Text(text)) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}
