//! The status page as server-rendered HTML: no script, no external asset, a
//! little inline CSS that lays out on a laptop and on a phone, and a
//! `<meta http-equiv="refresh">` that reloads it.
//!
//! Every text that is not a literal here goes through [`escape`]: image
//! names, references and error texts come from clients and upstreams. Each
//! counted figure carries its exact value in `data-figure`/`data-value`
//! attributes beside the rounded text, for scripts and tests.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Image, Status, UpstreamStatus};

/// Seconds between reloads.
pub(crate) const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = "\
:root{color-scheme:light dark;--muted:#777;--line:#8884;--bad:#c0392b;--good:#1e8449}\
*{box-sizing:border-box}\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:1rem;max-width:70rem}\
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}\
.muted{color:var(--muted)}.bad{color:var(--bad);font-weight:600}.good{color:var(--good)}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.6rem}\
.card{border:1px solid var(--line);border-radius:.5rem;padding:.6rem .8rem}\
.card b{display:block;font-size:1.35rem;font-variant-numeric:tabular-nums}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
code{font-size:.85em;word-break:break-all}\
progress{width:8rem}";

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MiB`: bytes in binary units, one decimal above 1 KiB.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3m 5s ago`-style durations.
fn human_duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn ago(at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} ago", human_duration(now.saturating_sub(at)))
}

/// A figure: its rounded text, with the exact value in attributes.
fn figure(name: &str, value: u64, text: &str) -> String {
    format!(
        "<span data-figure=\"{}\" data-value=\"{value}\">{}</span>",
        escape(name),
        escape(text)
    )
}

/// A ratio as a percentage; its `data-value` is the ratio (empty: none yet).
fn ratio_figure(name: &str, ratio: Option<f64>) -> String {
    match ratio {
        Some(ratio) => format!(
            "<span data-figure=\"{}\" data-value=\"{ratio:.4}\">{:.1}%</span>",
            escape(name),
            ratio * 100.0
        ),
        None => format!(
            "<span data-figure=\"{}\" data-value=\"\">–</span>",
            escape(name)
        ),
    }
}

fn bytes_figure(name: &str, value: u64) -> String {
    figure(name, value, &human_bytes(value))
}

fn count_figure(name: &str, value: u64) -> String {
    figure(name, value, &value.to_string())
}

fn card(out: &mut String, title: &str, value: &str, note: &str) {
    let _ = write!(
        out,
        "<div class=\"card\"><span class=\"muted\">{}</span><b>{value}</b><span class=\"muted\">{note}</span></div>",
        escape(title)
    );
}

/// The whole page.
pub(crate) fn render(status: &Status) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>oci-cache status</title><style>{STYLE}</style></head><body>\
         <h1>oci-cache</h1><p class=\"muted\">version {} · up {} · this page reloads every {REFRESH_SECONDS}s · \
         <a href=\"status.json\">status.json</a> · <a href=\"metrics\">metrics</a></p>",
        escape(status.version),
        human_duration(status.uptime_seconds),
    );
    if !status.metrics {
        out.push_str("<p class=\"bad\">Metrics are off on this server: nothing is counted.</p>");
    }
    summary(&mut out, status);
    out.push_str("<h2>Upstreams</h2>");
    for upstream in &status.upstreams {
        upstream_section(&mut out, upstream);
    }
    disk(&mut out, status);
    fills(&mut out, status);
    images(
        &mut out,
        "Most pulled images",
        "most_pulled",
        &status.most_pulled,
    );
    images(
        &mut out,
        "Most recent images",
        "most_recent",
        &status.most_recent,
    );
    out.push_str("</body></html>\n");
    out
}

fn summary(out: &mut String, status: &Status) {
    let r = &status.requests;
    let b = &status.bytes;
    out.push_str("<div class=\"cards\">");
    card(out, "requests", &count_figure("requests", r.total), "");
    let ratio = ratio_figure("hit_ratio", r.hit_ratio);
    let hits = r.by_cache.get("hit").copied().unwrap_or(0);
    let misses = r.by_cache.get("miss").copied().unwrap_or(0);
    card(
        out,
        "hit ratio",
        &ratio,
        &format!("{hits} hits, {misses} misses"),
    );
    card(
        out,
        "served",
        &bytes_figure("bytes_served", b.served),
        "manifests and blobs",
    );
    card(
        out,
        "fetched upstream",
        &bytes_figure("bytes_fetched", b.fetched),
        "",
    );
    card(
        out,
        "saved",
        &bytes_figure("bytes_saved", b.saved),
        "served − fetched",
    );
    out.push_str("</div>");
}

fn upstream_section(out: &mut String, u: &UpstreamStatus) {
    let any_open = u.endpoints.iter().any(|e| e.breaker_open);
    let _ = write!(
        out,
        "<div class=\"card\" data-upstream=\"{name}\"><strong>{name}</strong>{default} · {state}<br>",
        name = escape(&u.name),
        default = if u.default { " <span class=\"muted\">(default)</span>" } else { "" },
        state = if any_open {
            "<span class=\"bad\">breaker open</span>"
        } else {
            "<span class=\"good\">breakers closed</span>"
        },
    );
    let success = u.last_success.map_or_else(|| "never".to_owned(), ago);
    let _ = write!(out, "last success: {}", escape(&success));
    match &u.last_error {
        Some(e) => {
            let _ = write!(
                out,
                " · last error: <span class=\"bad\">{}</span> on <code>{}</code>, {}",
                escape(e.kind),
                escape(&e.endpoint),
                escape(&ago(e.at))
            );
        }
        None => out.push_str(" · no errors"),
    }
    let attempts: u64 = u.attempts.values().sum();
    let ok = u.attempts.get("ok").copied().unwrap_or(0);
    let ratio = ratio_figure("upstream_hit_ratio", u.hit_ratio);
    let _ = write!(
        out,
        "<br>hit ratio {ratio} · attempts: {} ({ok} ok) · fetched {} · throttled {}",
        count_figure("upstream_attempts", attempts),
        bytes_figure("upstream_bytes", u.bytes_fetched),
        count_figure("upstream_throttled", u.throttled),
    );
    if let Some(limit) = &u.ratelimit {
        let remaining = limit.remaining.map_or_else(
            || "?".to_owned(),
            |r| figure("ratelimit_remaining", r, &r.to_string()),
        );
        let of = limit.limit.map_or_else(
            || "?".to_owned(),
            |l| figure("ratelimit_limit", l, &l.to_string()),
        );
        let _ = write!(out, "<br>pull allowance left: {remaining} of {of}");
    }
    out.push_str("<div class=\"scroll\"><table><tr><th>endpoint</th><th>breaker</th></tr>");
    for e in &u.endpoints {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            escape(&e.url),
            if e.breaker_open {
                "<span class=\"bad\">open</span>"
            } else {
                "closed"
            }
        );
    }
    out.push_str("</table></div></div>");
}

fn disk(out: &mut String, status: &Status) {
    let d = &status.disk;
    out.push_str("<h2>Disk</h2><div class=\"cards\">");
    let cap = match d.max_size {
        Some(max) => format!(
            "of {} (<span data-figure=\"disk_used_percent\" data-value=\"{pct:.1}\">{pct:.1}%</span>) \
             <progress max=\"{max}\" value=\"{}\"></progress>",
            bytes_figure("max_size", max),
            d.stored_bytes.min(max),
            pct = d.stored_bytes as f64 * 100.0 / max.max(1) as f64,
        ),
        None => "no cap (max_size unset)".to_owned(),
    };
    card(
        out,
        "stored",
        &bytes_figure("stored_bytes", d.stored_bytes),
        &cap,
    );
    card(
        out,
        "blobs stored",
        &count_figure("stored_objects", d.stored_objects),
        "",
    );
    card(
        out,
        "evicted",
        &count_figure("evictions", d.evictions),
        &format!("blobs, {}", bytes_figure("evicted_bytes", d.evicted_bytes)),
    );
    let over = if d.protected_over_cap > 0 {
        format!(
            "<span class=\"bad\">{} passes found pinned content alone over the cap</span>",
            count_figure("protected_over_cap", d.protected_over_cap)
        )
    } else {
        "pinned and hosted, never evicted".to_owned()
    };
    card(
        out,
        "protected",
        &bytes_figure("protected_bytes", d.protected_bytes),
        &over,
    );
    out.push_str("</div>");
}

fn fills(out: &mut String, status: &Status) {
    let f = &status.fills;
    let _ = write!(
        out,
        "<h2>Fills in flight: {}</h2>",
        count_figure("fills_in_flight", f.in_flight)
    );
    if f.list.is_empty() {
        out.push_str("<p class=\"muted\">None right now.</p>");
        return;
    }
    out.push_str("<div class=\"scroll\"><table><tr><th>blob</th><th>upstream</th><th>progress</th><th>started</th></tr>");
    for fill in &f.list {
        let progress = match fill.size {
            Some(size) => format!(
                "<progress max=\"{size}\" value=\"{}\"></progress> {} of {}",
                fill.received.min(size),
                human_bytes(fill.received),
                human_bytes(size)
            ),
            None => human_bytes(fill.received),
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{progress}</td><td>{}</td></tr>",
            escape(&fill.digest),
            escape(fill.upstream.as_deref().unwrap_or("")),
            escape(&fill.started_at.map(ago).unwrap_or_default()),
        );
    }
    out.push_str("</table></div>");
}

fn images(out: &mut String, title: &str, id: &str, list: &[Image]) {
    let _ = write!(out, "<h2>{}</h2>", escape(title));
    if list.is_empty() {
        out.push_str("<p class=\"muted\">No pulls yet.</p>");
        return;
    }
    let _ = write!(
        out,
        "<div class=\"scroll\"><table id=\"{}\"><tr><th>image</th><th>last asked for</th><th>pulls</th><th>last</th></tr>",
        escape(id)
    );
    for image in list {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&image.name),
            escape(&image.last_reference),
            image.pulls,
            escape(&ago(image.last_pulled)),
        );
    }
    out.push_str("</table></div>");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
