//! Figures read when `/metrics` is scraped, not counted from events: the
//! size cap, what was built, and the process's own resources (from `/proc`
//! on Linux, under the names every Prometheus client library uses; absent
//! where `/proc` is not).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc/<pid>/stat` counts times in `USER_HZ`, which the kernel's ABI
/// fixes at 100 on every architecture (the Prometheus Go client assumes it too).
const USER_HZ: f64 = 100.0;

/// The scrape-time figures, registered once as a collector.
#[derive(Debug, Default)]
pub(super) struct Scraped {
    /// `max_size` in bytes; 0: no cap (then the gauge is absent, so a ratio
    /// against it has no sample rather than a division by zero).
    cap: AtomicU64,
}

impl Scraped {
    pub(super) fn set_cap(&self, cap: Option<u64>) {
        self.cap.store(cap.unwrap_or(0), Ordering::Relaxed);
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cap = self.cap.load(Ordering::Relaxed);
        if cap > 0 {
            gauge(
                &mut encoder,
                "oci_cache_storage_cap_bytes",
                "The size cap on stored blob bytes (max_size); absent without a cap",
                cap as f64,
            )?;
        }
        let build = ConstGauge::new(1i64);
        let mut metric = encoder.encode_descriptor(
            "oci_cache_build_info",
            "Always 1; the labels say what is running",
            None,
            build.metric_type(),
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("os", std::env::consts::OS),
            ("arch", std::env::consts::ARCH),
        ];
        build.encode(metric.encode_family(&labels)?)?;
        if let Some(process) = Process::read() {
            process.encode(&mut encoder)?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// This process as `/proc/self` describes it.
#[derive(Debug, Default, PartialEq)]
struct Process {
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
    cpu_seconds: Option<f64>,
}

impl Process {
    /// `None` where there is no `/proc` (not Linux).
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        Some(Process::parse(&stat, &status, &limits, &boot, open_fds))
    }

    fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: Option<u64>) -> Self {
        // The command name (field 2) may hold spaces and parentheses: the
        // fields that follow start after its last `)`, at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let cpu = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / USER_HZ);
        Process {
            resident_bytes: status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<u64>().ok())
                .map(|kib| kib * 1024),
            open_fds,
            max_fds: limits
                .lines()
                .find_map(|l| l.strip_prefix("Max open files"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|soft| soft.parse().ok()),
            start_time_seconds: boot_time
                .zip(field(22))
                .map(|(boot, ticks)| boot + ticks / USER_HZ),
            cpu_seconds: cpu,
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                self.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                self.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                self.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                self.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                gauge(encoder, name, help, value)?;
            }
        }
        if let Some(cpu) = self.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Process;

    #[test]
    fn proc_files_are_read_with_a_command_name_holding_spaces_and_parens() {
        let stat = "4242 (oci (cache) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 123400 1000000 777 18446744073709551615";
        let status = "Name:\toci-cache\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            65536                1048576              files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let p = Process::parse(stat, status, limits, boot, Some(12));
        assert_eq!(p.resident_bytes, Some(20480 * 1024));
        assert_eq!(p.open_fds, Some(12));
        assert_eq!(p.max_fds, Some(65536));
        assert_eq!(p.start_time_seconds, Some(1_700_000_000.0 + 1234.0));
        assert_eq!(p.cpu_seconds, Some(3.0));
    }

    #[test]
    fn unreadable_proc_files_leave_their_figures_out() {
        let p = Process::parse("garbage", "", "", "", None);
        assert_eq!(p, Process::default());
    }
}
