//! The 16-concurrent-cold-pulls row on its own, repeated and paired:
//! `BENCH_CONCURRENT_ONLY=N` runs N rounds, each a fresh registry:2 proxy
//! and a fresh oci-cache (empty storage, so every pull is cold) against the
//! same origin image, back to back in alternating order, and prints one line
//! per mirror per round: wall time, the mirror's CPU seconds over the pulls,
//! origin bytes per image byte, its peak RSS, and the load average when it ended. On a
//! shared machine single walls drift; pairs and CPU seconds drift less.

use std::path::Path;
use std::time::{Duration, Instant};

use super::support::image::{build_image, ImageSpec};
use super::support::mirror::Mirror;
use super::support::registry::Origin;
use super::support::skopeo;
use super::tools::children_cpu_seconds;
use super::{cpu_seconds, image_bytes, log, origin_bytes_during, peak_rss, pull, MIB};

/// Concurrent pulls per round, as in the full table.
const PULLS: usize = 16;

/// One mirror's figures for one round.
struct Round {
    wall: f64,
    /// The fastest and the slowest single pull: a wide spread with idle CPU
    /// at the end means the mirror served its clients unevenly.
    fastest: f64,
    slowest: f64,
    cpu: f64,
    /// CPU seconds of the 16 skopeo processes (reaped children of this one).
    clients_cpu: f64,
    /// CPU seconds of the origin registry over the pulls.
    origin_cpu: f64,
    origin_ratio: f64,
    /// The mirror's peak RSS (a fresh process each round: over its life).
    peak_rss_mib: f64,
    load: String,
}

/// Runs `rounds` paired rounds with a 5-layer image of `layer_mib` MiB layers.
pub(crate) fn only(work: &Path, rounds: usize, layer_mib: u64) {
    let image = build_image(
        &work.join("conc"),
        "v1",
        &ImageSpec::new(200, 5, layer_mib << 20),
    );
    let origin = Origin::start();
    skopeo::push(&image, &origin.host(), "bench/conc:v1");
    let image_len = image_bytes(&image) as f64;
    let _ = std::fs::remove_dir_all(&image.dir);

    let run = |name: &str, host: &str, pid: u32| -> Round {
        log(&format!("{name}: {PULLS} concurrent cold pulls"));
        let cpu = cpu_seconds(pid);
        let (clients, origin_cpu) = (children_cpu_seconds(), cpu_seconds(origin.pid()));
        let ((wall, pulls), bytes) = origin_bytes_during(&origin, || {
            let start = Instant::now();
            let pulls: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..PULLS)
                    .map(|_| s.spawn(|| pull(host, "bench/conc:v1", &image.digest, work)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().as_secs_f64())
                    .collect()
            });
            (start.elapsed(), pulls)
        });
        Round {
            wall: wall.as_secs_f64(),
            fastest: pulls.iter().copied().fold(f64::INFINITY, f64::min),
            slowest: pulls.iter().copied().fold(0.0, f64::max),
            // Includes the second of idle the origin count waits for: nothing.
            cpu: cpu_seconds(pid) - cpu,
            clients_cpu: children_cpu_seconds() - clients,
            origin_cpu: cpu_seconds(origin.pid()) - origin_cpu,
            origin_ratio: bytes as f64 / image_len,
            peak_rss_mib: peak_rss(pid) as f64 / MIB,
            load: load_average(),
        }
    };
    let registry = |origin: &Origin| -> Round {
        let mirror = Origin::start_proxy(&origin.url());
        run("registry:2", &mirror.host(), mirror.pid())
    };
    let oci_cache = |origin: &Origin| -> Round {
        let mirror = Mirror::start_oci_cache(&[("origin", &origin.url())], "origin", "5m");
        run("oci-cache", &mirror.host(), mirror.pid())
    };

    println!("| round | mirror | wall | single pulls | mirror CPU s | skopeo CPU s | origin CPU s | origin bytes / image | peak RSS | load (1/5/15 min) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // Alternate which goes first, so a drift in load favours neither.
        let (reg, oci) = if round % 2 == 1 {
            let reg = registry(&origin);
            (reg, oci_cache(&origin))
        } else {
            let oci = oci_cache(&origin);
            (registry(&origin), oci)
        };
        for (name, r) in [("registry:2", &reg), ("oci-cache", &oci)] {
            println!(
                "| {round} | {name} | {:.2} s | {:.2}–{:.2} s | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} MiB | {} |",
                r.wall,
                r.fastest,
                r.slowest,
                r.cpu,
                r.clients_cpu,
                r.origin_cpu,
                r.origin_ratio,
                r.peak_rss_mib,
                r.load
            );
        }
        ratios.push(oci.wall / reg.wall);
        // Let the page cache's write-back of the last round settle.
        std::thread::sleep(Duration::from_secs(1));
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
    println!(
        "\nwall oci-cache / registry:2 per round: {}",
        shown.join(", ")
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
