//! The counted figures of the status page, read from the
//! [`Metrics`](crate::metrics::Metrics) exposition itself, so that the page
//! and `/metrics` cannot disagree: every figure is counted in one place.

/// One sample of the exposition: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    /// The value of `label`, if the sample has it.
    pub(crate) fn label(&self, label: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == label)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of an OpenMetrics text exposition (comments skipped; a line
/// that does not parse is skipped too: the page shows what it can read).
pub(crate) fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(rest) => parse_labels(rest)?,
        None => (Vec::new(), rest),
    };
    // `value [timestamp]`.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",…}` and what follows the closing brace; values unescaped
/// (`\\`, `\"`, `\n`).
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        rest = &after[end + 1..];
    }
}

/// Sums the samples named `name` whose labels pass `keep`, as a whole number
/// (counters and gauges here are integers).
pub(crate) fn sum(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> u64 {
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .sum();
    // Saturating: a negative gauge (never expected) reads as 0.
    total.max(0.0) as u64
}

/// The value of the sample named `name` with `label` = `value`, if there is one.
pub(crate) fn get(samples: &[Sample], name: &str, label: &str, value: &str) -> Option<u64> {
    samples
        .iter()
        .find(|s| s.name == name && s.label(label) == Some(value))
        .map(|s| s.value.max(0.0) as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_and_values_with_escapes() {
        let samples = parse(
            "# HELP x y\n\
             oci_cache_storage_bytes 42\n\
             oci_cache_requests_total{route=\"blob\",cache=\"hit\",code=\"200\"} 3\n\
             odd{v=\"a\\\"b\\\\c,}\"} 1.0\n\
             # EOF\n",
        );
        assert_eq!(samples.len(), 3);
        assert_eq!(sum(&samples, "oci_cache_storage_bytes", |_| true), 42);
        assert_eq!(samples[1].label("cache"), Some("hit"));
        assert_eq!(samples[2].label("v"), Some("a\"b\\c,}"));
        assert_eq!(
            get(&samples, "oci_cache_requests_total", "route", "blob"),
            Some(3)
        );
        assert_eq!(
            get(&samples, "oci_cache_requests_total", "route", "x"),
            None
        );
    }
}
