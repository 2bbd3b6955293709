//! Where a key the parser refused belongs: `max_size` at the top level is
//! `[cache] max_size`. serde's "unknown field" lists only the keys of the
//! table the key was found in; the table it belongs to is found by asking
//! the parser itself (one probe file per table), so no list of keys is kept
//! here to drift from the code.

use super::FileConfig;

/// Each table a key can be written in: its name for the message, and the
/// lines that open it in a probe file.
const TABLES: &[(&str, &str)] = &[
    ("the top level (above the first [table] line)", ""),
    ("the [cache] table", "[cache]\n"),
    ("the [upstream_client] table", "[upstream_client]\n"),
    ("the [limits] table", "[limits]\n"),
    ("the [storage] table", "[storage]\nkind = \"filesystem\"\n"),
    (
        "the [storage] table (kind = \"s3\")",
        "[storage]\nkind = \"s3\"\nbucket = \"b\"\n",
    ),
    ("the [tls] table", "[tls]\n"),
    ("the [auth] table", "[auth]\n"),
    (
        "an [[upstream]] table",
        "[[upstream]]\nname = \"a.example\"\nurl = \"https://a.example\"\n",
    ),
    (
        "a [[listener]] table",
        "[[listener]]\naddr = \"127.0.0.1:5000\"\n",
    ),
];

/// For a parse error about an unknown key, the sentence that says which
/// table takes that key, if one does.
pub(super) fn hint(message: &str) -> Option<String> {
    let key = unknown_key(message)?;
    let refused = format!("unknown field `{key}`");
    let places: Vec<&str> = TABLES
        .iter()
        .filter(|(_, opening)| {
            let probe = format!("{opening}{key} = 0\n");
            match toml::from_str::<FileConfig>(&probe) {
                Ok(_) => true,
                Err(e) => !e.to_string().contains(&refused),
            }
        })
        .map(|(name, _)| *name)
        .collect();
    match places.as_slice() {
        [] => None,
        [only] => Some(format!("`{key}` belongs in {only}; move it there")),
        several => Some(format!(
            "`{key}` belongs in {}; move it to the one you meant",
            several.join(" or ")
        )),
    }
}

/// The key of serde's "unknown field `KEY`, expected …".
fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    let key = rest.split('`').next()?;
    // A key is a bare word; anything else cannot be probed safely.
    key.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        .then_some(key)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refusal(file: &str) -> String {
        toml::from_str::<FileConfig>(file).unwrap_err().to_string()
    }

    #[test]
    fn a_key_in_the_wrong_table_names_the_right_one() {
        let e = refusal("max_size = \"50GiB\"\n");
        assert_eq!(
            hint(&e).unwrap(),
            "`max_size` belongs in the [cache] table; move it there"
        );
        let e = refusal("[cache]\nlisten = \"0.0.0.0:5000\"\n");
        assert_eq!(
            hint(&e).unwrap(),
            "`listen` belongs in the top level (above the first [table] line); move it there"
        );
        let e = refusal("[limits]\nconnect_timeout = \"5s\"\n");
        assert!(hint(&e).unwrap().contains("the [upstream_client] table"));
    }

    #[test]
    fn a_key_no_table_takes_gets_no_hint() {
        assert_eq!(hint(&refusal("max_sise = 1\n")), None);
    }
}
