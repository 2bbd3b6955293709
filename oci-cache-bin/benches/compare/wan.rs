//! Cold pulls over a WAN: the origin behind a relay
//! ([`WanRelay`]: 20 ms added round trip, responses rate-limited), once as
//! one link shared by all connections (40 MiB/s) and once throttled per
//! connection (8 MiB/s each, as CDNs in front of registries do). Each pair
//! is a direct pull through the relay and then the same image cold through
//! a mirror whose upstream is the same relay, registry:2 and oci-cache
//! alike; a fresh image per pair keeps every mirror pull cold. The figure is
//! the median of the paired ratios, and origin bytes ÷ image bytes over the
//! mirrors' pulls.
//!
//! Environment: `BENCH_WAN=0` skips these rows, `BENCH_WAN_PAIRS` (3) is the
//! number of images (pairs) per case, `BENCH_WAN_ONLY=1` measures these rows
//! alone (no loopback rows).

use std::path::Path;
use std::time::Duration;

use crate::support::image::{build_image, ImageSpec, Layout};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::relay::{Shaping, WanRelay};
use crate::support::skopeo;
use crate::{env_or, image_bytes, log, median_f64, origin_bytes_during, pull, Table};

const MIB: u64 = 1024 * 1024;
/// The image: its largest layer first, 120 MiB in all.
const LAYERS_MIB: [u64; 5] = [40, 20, 20, 20, 20];
const ROUND_TRIP: Duration = Duration::from_millis(20);

/// One WAN case: what it is and what it should give.
struct Case {
    what: &'static str,
    shaping: Shaping,
    target: &'static str,
}

const CASES: [Case; 2] = [
    Case {
        what: "shared link, 40 MiB/s for all connections",
        shaping: Shaping::Shared(40 * MIB),
        target: "≤ 1.05× direct",
    },
    Case {
        what: "throttled per connection, 8 MiB/s each",
        shaping: Shaping::PerConnection(8 * MIB),
        target: "≤ 0.67× direct, origin bytes 1.00",
    },
];

/// Whether only the WAN rows are wanted (`BENCH_WAN_ONLY=1`).
pub(crate) fn only() -> bool {
    env_or("BENCH_WAN_ONLY", 0u8) == 1
}

/// What one case measured, every pair kept.
pub(crate) struct WanFigures {
    case: &'static Case,
    /// Seconds per pair: direct, registry:2, oci-cache.
    pairs: Vec<[f64; 3]>,
    /// Origin bytes ÷ image bytes over all mirror pulls: registry:2, oci-cache.
    origin_ratio: [f64; 2],
}

/// Measures both cases (none with `BENCH_WAN=0`), the images pushed to `origin`.
pub(crate) fn measure(origin: &Origin, work: &Path) -> Vec<WanFigures> {
    if env_or("BENCH_WAN", 1u8) == 0 {
        return Vec::new();
    }
    let pairs = env_or("BENCH_WAN_PAIRS", 3u64);
    CASES
        .iter()
        .enumerate()
        .map(|(c, case)| measure_case(case, c as u64, pairs, origin, work))
        .collect()
}

fn measure_case(
    case: &'static Case,
    c: u64,
    pairs: u64,
    origin: &Origin,
    work: &Path,
) -> WanFigures {
    log(&format!(
        "WAN, {}: building and pushing {pairs} images",
        case.what
    ));
    let images: Vec<(String, Layout)> = (0..pairs)
        .map(|i| {
            let spec = ImageSpec {
                seed: 700 + 10 * c + i,
                layer_sizes: LAYERS_MIB.iter().map(|m| m * MIB).collect(),
                config_seed: None,
            };
            let layout = build_image(&work.join(format!("wan{c}-{i}")), "v1", &spec);
            let repo = format!("bench/wan{c}-{i}:v1");
            skopeo::push(&layout, &origin.host(), &repo);
            let _ = std::fs::remove_dir_all(&layout.dir);
            (repo, layout)
        })
        .collect();
    let relay = WanRelay::start(&origin.host(), ROUND_TRIP, case.shaping);
    let relay_url = format!("http://{}", relay.host());
    let registry = Origin::start_proxy(&relay_url);
    let oci = Mirror::start_oci_cache(&[("origin", &relay_url)], "origin", "5m");
    let mut bytes = [0u64; 2];
    let mut figures = Vec::new();
    for (repo, layout) in &images {
        log(&format!(
            "WAN, {}: {repo} direct, registry:2, oci-cache",
            case.what
        ));
        let direct = pull(&relay.host(), repo, &layout.digest, work);
        let mut pair = [direct.as_secs_f64(), 0.0, 0.0];
        for (m, host) in [registry.host(), oci.host()].iter().enumerate() {
            let (took, served) =
                origin_bytes_during(origin, || pull(host, repo, &layout.digest, work));
            pair[m + 1] = took.as_secs_f64();
            bytes[m] += served;
        }
        figures.push(pair);
    }
    let image_total: u64 = images.iter().map(|(_, l)| image_bytes(l)).sum();
    WanFigures {
        case,
        pairs: figures,
        origin_ratio: bytes.map(|b| b as f64 / image_total as f64),
    }
}

/// The rows of every case measured.
pub(crate) fn rows(t: &mut Table, figures: &[WanFigures]) {
    let image_mib: u64 = LAYERS_MIB.iter().sum();
    for f in figures {
        let column = |k: usize| median_f64(f.pairs.iter().map(|p| p[k]).collect());
        let paired = |k: usize| median_f64(f.pairs.iter().map(|p| p[k] / p[0]).collect());
        let every = f
            .pairs
            .iter()
            .map(|p| format!("{:.2}/{:.2}/{:.2} s", p[0], p[1], p[2]))
            .collect::<Vec<_>>()
            .join(", ");
        t.row(
            &format!(
                "WAN cold pull, {}, +{} ms round trip: {image_mib} MiB image ({} MiB layers; median of {} pairs)",
                f.case.what,
                ROUND_TRIP.as_millis(),
                LAYERS_MIB.map(|m| m.to_string()).join(" + "),
                f.pairs.len()
            ),
            format!("{:.2} s", column(0)),
            format!("{:.2} s", column(1)),
            format!("{:.2} s", column(2)),
            format!(
                "vs direct, median of paired ratios: oci-cache {:.2}×, registry:2 {:.2}× (each pair direct/registry:2/oci-cache: {every})",
                paired(2),
                paired(1)
            ),
            f.case.target,
        );
        t.row(
            &format!("WAN origin bytes / image bytes, {}", f.case.what),
            "—".to_owned(),
            format!("{:.3}", f.origin_ratio[0]),
            format!("{:.3}", f.origin_ratio[1]),
            "—".to_owned(),
            "1.00",
        );
    }
}
