//! Measuring a server process from outside: its peak RSS and CPU seconds
//! from `/proc` (per phase of the run), and load from wrk (fixed time, for
//! rates) and ApacheBench (fixed counts, for the same work).

use std::process::Command;

use crate::{ACCEPT, MIB};

/// Peak resident set (VmHWM) of `pid`, in bytes.
pub(crate) fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap()
}

/// Reset `pid`'s VmHWM to its current RSS (Linux `clear_refs` value 5).
pub(crate) fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// User + system CPU seconds `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds from a `/proc/…/stat` file (a process's or a thread's).
pub(crate) fn stat_cpu_seconds(path: &str) -> f64 {
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    stat_seconds(path, 11, 12)
}

/// User + system CPU seconds of this process's reaped children (cutime,
/// cstime: fields 16 and 17 of `/proc/self/stat`).
pub(crate) fn children_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", 13, 14)
}

/// The sum of two clock-tick fields of a `/proc/…/stat` file, counted after
/// the parenthesised command name, in seconds.
fn stat_seconds(path: &str, first: usize, second: usize) -> f64 {
    // Before the read, so the one `getconf` falls before a starting reading.
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(path).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let a: f64 = fields[first].parse().unwrap();
    let b: f64 = fields[second].parse().unwrap();
    (a + b) / ticks
}

/// `CLK_TCK`, asked once: a `getconf` per reading would be charged to the
/// thread whose CPU the floor measures.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wrk {
    pub(crate) req_per_sec: f64,
    pub(crate) p99_ms: f64,
    pub(crate) bytes_per_sec: f64,
}

/// `secs` seconds of wrk against `url`: rates and latency.
pub(crate) fn wrk(url: &str, connections: u32, secs: u64) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s")])
        .args(["--latency", "--timeout", "30s", "-H", ACCEPT, url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk {url} failed:\n{text}");
    // Non-2xx answers would make any rate meaningless.
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk {url} saw errors:\n{text}"
    );
    let field = |prefix: &str| -> &str {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk output:\n{text}"))
            .trim()
    };
    Wrk {
        req_per_sec: field("Requests/sec:").parse().unwrap(),
        p99_ms: parse_duration_ms(field("99%")),
        bytes_per_sec: parse_size(field("Transfer/sec:")),
    }
}

/// Exactly `n` keep-alive GETs of `url` over `connections` connections, all
/// 2xx: the same work for every server, for CPU seconds. ApacheBench, since
/// wrk cannot stop after a count.
pub(crate) fn fixed_count(url: &str, connections: u32, n: u64) {
    let out = Command::new("ab")
        .args([
            "-q",
            "-k",
            "-n",
            &n.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-s", "60", "-H", ACCEPT, url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ab {url} failed:\n{text}");
    let field = |prefix: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(field("Complete requests:"), Some(n), "ab {url}:\n{text}");
    assert_eq!(field("Failed requests:"), Some(0), "ab {url}:\n{text}");
    assert!(!text.contains("Non-2xx"), "ab {url} saw errors:\n{text}");
}

/// wrk durations: `812.00us`, `1.23ms`, `2.01s`, `1.5m`.
pub(crate) fn parse_duration_ms(s: &str) -> f64 {
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap() * factor
}

/// wrk sizes: `1.23MB` (binary multiples), `512.00B`.
pub(crate) fn parse_size(s: &str) -> f64 {
    let units = [
        ("GB", MIB * 1024.0),
        ("MB", MIB),
        ("KB", 1024.0),
        ("B", 1.0),
    ];
    for (suffix, factor) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap() * factor;
        }
    }
    panic!("wrk size {s:?}")
}

/// Peak RSS and CPU seconds of one mirror per phase of the run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Phases {
    pub(crate) pid: u32,
    pub(crate) rows: Vec<(&'static str, f64, f64)>,
}

impl Phases {
    pub(crate) fn new(pid: u32) -> Phases {
        // Whatever start-up cost counts too.
        let rows = vec![("start-up", peak_rss(pid) as f64, cpu_seconds(pid))];
        Phases { pid, rows }
    }

    /// Runs `f` as phase `name`, recording the process's peak RSS during it
    /// (VmHWM reset first) and the CPU seconds it used.
    pub(crate) fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        reset_peak_rss(self.pid);
        let cpu = cpu_seconds(self.pid);
        let out = f();
        self.rows
            .push((name, peak_rss(self.pid) as f64, cpu_seconds(self.pid) - cpu));
        out
    }

    pub(crate) fn peak_rss(&self) -> f64 {
        self.rows.iter().map(|r| r.1).fold(0.0, f64::max)
    }

    pub(crate) fn cpu(&self, name: &str) -> f64 {
        self.rows.iter().filter(|r| r.0 == name).map(|r| r.2).sum()
    }
}
