//! `bench-compare`: oci-cache against registry:2 in proxy mode, measured the
//! same way on 127.0.0.1, printed as one table (run: `scripts/bench-compare`).
//!
//! A bench target of oci-cache-bin (harness = false) so it reuses the e2e
//! harness in `tests/support` as is (origin registry with its access log,
//! deterministic image builder, skopeo wrapper, oci-cache process) instead of
//! keeping a second copy of it.
//!
//! Every wrk run is fixed-time, so the faster server does more work in it;
//! the same requests are then sent again as fixed counts with ApacheBench,
//! and "CPU seconds over the run" leaves the fixed-time runs out, so both
//! mirrors are charged for the same work.
//!
//! Environment: `BENCH_LAYER_MIB` (MiB per layer of the 5-layer images,
//! default 24), `BENCH_HUGE_MIB` (single-layer image for the memory check,
//! default 1024, 0 skips it), `BENCH_WRK_SECS` (seconds per wrk run, default 5),
//! `BENCH_WARM_PULLS` (default 5), `BENCH_ONLY=huge` (only the memory check),
//! `BENCH_CONCURRENT_ONLY` (N paired rounds of the 16-concurrent row alone,
//! see `compare/concurrent.rs`); `BENCH_WAN`, `BENCH_WAN_PAIRS` and
//! `BENCH_WAN_ONLY` for the WAN rows (`compare/wan.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "compare/floor.rs"]
mod floor;
#[path = "compare/huge.rs"]
mod huge;
#[path = "compare/nginx.rs"]
mod nginx;

#[path = "compare/concurrent.rs"]
mod concurrent;
#[path = "compare/pulls.rs"]
mod pulls;
#[path = "compare/table.rs"]
mod table;
#[path = "compare/tools.rs"]
mod tools;
#[path = "compare/wan.rs"]
mod wan;

use std::path::Path;
use std::time::Instant;

use pulls::{concurrent_pulls, image_bytes, median, median_f64, origin_bytes_during, pull};
use support::image::{build_image, build_multiarch, ImageSpec, Layout};
use support::mirror::Mirror;
use support::registry::Origin;
use support::skopeo;
use table::{ratio, Table};
use tools::{cpu_seconds, fixed_count, peak_rss, reset_peak_rss, wrk, Phases, Wrk};

/// The Accept header of a client that takes OCI and Docker manifests and indexes.
const ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

const MIB: f64 = 1024.0 * 1024.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn log(msg: &str) {
    eprintln!("[bench-compare {:>7.1?}] {msg}", start_time().elapsed());
}

fn start_time() -> &'static Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now)
}

/// Everything measured through one mirror.
#[derive(Debug, Default, Clone)]
struct Figures {
    /// Median cold pull through the mirror.
    cold_pull: f64,
    /// Median of the paired pulls straight from the origin.
    cold_direct: f64,
    /// Median over images of (mirror pull / paired direct pull).
    cold_vs_origin: f64,
    cold_origin_ratio: f64,
    warm_pull: f64,
    tag: Option<Wrk>,
    digest: Option<Wrk>,
    blob: Option<Wrk>,
    conc_wall: f64,
    conc_origin_ratio: f64,
    peak_rss: f64,
    cpu: f64,
    phases: Phases,
}

struct Corpus {
    /// Same shape as `big`, other bytes: one per cold pull, so the cold pull
    /// figure is a median too.
    cold: Vec<Layout>,
    big: Layout,
    big2: Layout,
    small: Layout,
    multi: Layout,
}

fn measure(
    name: &str,
    host: &str,
    pid: u32,
    origin: &Origin,
    corpus: &Corpus,
    work: &Path,
) -> Figures {
    let wrk_secs = env_or("BENCH_WRK_SECS", 5u64);
    let warm_n = env_or("BENCH_WARM_PULLS", 5usize);
    let big_bytes = image_bytes(&corpus.big) as f64;
    let mut f = Figures::default();
    let mut phases = Phases::new(pid);

    // Each cold pull is paired with a pull of the same image straight from
    // the origin just before it, so the ratio compares the two under the
    // same machine load (single pulls here drift by tens of percent within a
    // minute); the origin bytes count only the mirror's pulls.
    log(&format!(
        "{name}: {} cold pulls, each after the same pull from the origin",
        1 + corpus.cold.len()
    ));
    let images: Vec<(String, &Layout)> = std::iter::once(("bench/big:v1".to_owned(), &corpus.big))
        .chain(
            corpus
                .cold
                .iter()
                .enumerate()
                .map(|(i, layout)| (format!("bench/cold{i}:v1"), layout)),
        )
        .collect();
    let pairs = phases.run(COLD_PULLS, || {
        images
            .iter()
            .map(|(repo, layout)| {
                let direct = pull(&origin.host(), repo, &layout.digest, work);
                let (mirror, bytes) =
                    origin_bytes_during(origin, || pull(host, repo, &layout.digest, work));
                (direct, mirror, bytes)
            })
            .collect::<Vec<_>>()
    });
    f.cold_pull = median(pairs.iter().map(|p| p.1).collect()).as_secs_f64();
    f.cold_direct = median(pairs.iter().map(|p| p.0).collect()).as_secs_f64();
    f.cold_vs_origin = median_f64(
        pairs
            .iter()
            .map(|p| p.1.as_secs_f64() / p.0.as_secs_f64())
            .collect(),
    );
    let bytes: u64 = pairs.iter().map(|p| p.2).sum();
    f.cold_origin_ratio = bytes as f64 / (big_bytes * images.len() as f64);

    // The small image and the index, cold then warm: correctness on every shape.
    phases.run("small + index pulls", || {
        for (repo, layout) in [
            ("bench/small:v1", &corpus.small),
            ("bench/multi:v1", &corpus.multi),
        ] {
            pull(host, repo, &layout.digest, work);
            pull(host, repo, &layout.digest, work);
        }
    });

    log(&format!("{name}: {warm_n} warm pulls"));
    let warm = phases.run("warm pulls", || {
        (0..warm_n)
            .map(|_| pull(host, "bench/big:v1", &corpus.big.digest, work))
            .collect()
    });
    f.warm_pull = median(warm).as_secs_f64();

    log(&format!(
        "{name}: wrk manifests and blob, fixed time (rates)"
    ));
    let tag_url = format!("http://{host}/v2/bench/big/manifests/v1");
    let digest_url = format!("http://{host}/v2/bench/big/manifests/{}", corpus.big.digest);
    let blob_url = format!(
        "http://{host}/v2/bench/big/blobs/{}",
        largest_blob(&corpus.big)
    );
    f.tag = Some(phases.run(WRK_TAG, || wrk(&tag_url, 64, wrk_secs)));
    f.digest = Some(phases.run(WRK_DIGEST, || wrk(&digest_url, 64, wrk_secs)));
    f.blob = Some(phases.run(WRK_BLOB, || wrk(&blob_url, 8, wrk_secs)));

    // The fixed-time runs above give the faster server more work; these give
    // both the same, so the CPU seconds over the run compare like with like.
    log(&format!(
        "{name}: wrk manifests and blob, fixed request counts (CPU)"
    ));
    for (phase, url, connections, count) in [
        (SAME_TAG, &tag_url, 64, SAME_WORK_MANIFESTS),
        (SAME_DIGEST, &digest_url, 64, SAME_WORK_MANIFESTS),
        (SAME_BLOB, &blob_url, 8, SAME_WORK_BLOBS),
    ] {
        phases.run(phase, || fixed_count(url, connections, count));
    }

    log(&format!(
        "{name}: 16 concurrent cold pulls of bench/big2:v1"
    ));
    let (wall, bytes) = phases.run("16 concurrent cold pulls", || {
        origin_bytes_during(origin, || {
            concurrent_pulls(host, "bench/big2:v1", &corpus.big2.digest, work, 16)
        })
    });
    f.conc_wall = wall.as_secs_f64();
    f.conc_origin_ratio = bytes as f64 / image_bytes(&corpus.big2) as f64;

    f.peak_rss = phases.peak_rss();
    f.cpu = cpu_seconds(pid);
    f.phases = phases;
    f
}

/// Cold pulls are single shots on a shared machine: the figure is the median
/// over this many images besides `big`, each pulled cold once per mirror.
const COLD_EXTRA_IMAGES: u64 = 4;

const COLD_PULLS: &str = "cold pulls (paired with direct ones)";
const WRK_TAG: &str = "wrk manifest by tag (fixed time)";
const WRK_DIGEST: &str = "wrk manifest by digest (fixed time)";
const WRK_BLOB: &str = "wrk blob (fixed time)";
/// The fixed-time phases: excluded from the same-work CPU figure.
const RATE_PHASES: [&str; 3] = [WRK_TAG, WRK_DIGEST, WRK_BLOB];
const SAME_TAG: &str = "wrk manifest by tag (same count)";
const SAME_DIGEST: &str = "wrk manifest by digest (same count)";
const SAME_BLOB: &str = "wrk blob (same count)";
/// Requests per same-work manifest run: registry:2 needs seconds for these
/// (each tag GET of a proxy asks the origin).
const SAME_WORK_MANIFESTS: u64 = 2_000;
/// Requests per same-work blob run (the largest blob each time).
const SAME_WORK_BLOBS: u64 = 40;

fn largest_blob(layout: &Layout) -> String {
    layout.images[0]
        .blobs()
        .into_iter()
        .max_by_key(|b| b.size)
        .unwrap()
        .digest
}

fn main() {
    let _ = start_time();
    if !support::tools_available("bench-compare") {
        panic!("bench-compare needs docker-registry, skopeo and wrk (scripts/bench-compare installs them)");
    }
    let layer_mib = env_or("BENCH_LAYER_MIB", 24u64);
    let huge_mib = env_or("BENCH_HUGE_MIB", 1024u64);
    let work_dir = tempfile::Builder::new()
        .prefix("bench-compare-")
        .tempdir()
        .unwrap();
    let work = work_dir.path();
    if std::env::var("BENCH_ONLY").as_deref() == Ok("huge") {
        let mut t = Table { rows: Vec::new() };
        huge::only(work, huge_mib).inspect(|h| h.add_to(&mut t));
        return t.print();
    }
    let concurrent_only = env_or("BENCH_CONCURRENT_ONLY", 0usize);
    if concurrent_only > 0 {
        return concurrent::only(work, concurrent_only, layer_mib);
    }
    if wan::only() {
        let figures = wan::measure(&Origin::start(), work);
        let mut t = Table { rows: Vec::new() };
        wan::rows(&mut t, &figures);
        return t.print();
    }

    log("building the corpus");
    let corpus = Corpus {
        cold: (0..COLD_EXTRA_IMAGES)
            .map(|i| {
                build_image(
                    &work.join(format!("cold{i}")),
                    "v1",
                    &ImageSpec::new(110 + i, 5, layer_mib << 20),
                )
            })
            .collect(),
        big: build_image(
            &work.join("big"),
            "v1",
            &ImageSpec::new(100, 5, layer_mib << 20),
        ),
        big2: build_image(
            &work.join("big2"),
            "v1",
            &ImageSpec::new(200, 5, layer_mib << 20),
        ),
        small: build_image(&work.join("small"), "v1", &ImageSpec::new(1, 3, 5000)),
        multi: build_multiarch(&work.join("multi"), "v1", &ImageSpec::new(2, 2, 3000)),
    };
    let origin = Origin::start();
    log("pushing the corpus to the origin");
    for (i, layout) in corpus.cold.iter().enumerate() {
        skopeo::push(layout, &origin.host(), &format!("bench/cold{i}:v1"));
        let _ = std::fs::remove_dir_all(&layout.dir);
    }
    for (layout, name) in [
        (&corpus.big, "bench/big:v1"),
        (&corpus.big2, "bench/big2:v1"),
        (&corpus.small, "bench/small:v1"),
        (&corpus.multi, "bench/multi:v1"),
    ] {
        skopeo::push(layout, &origin.host(), name);
        let _ = std::fs::remove_dir_all(&layout.dir);
    }

    log("the floor: SHA-256 and a copy through the page cache");
    let floor = floor::Floor::measure(work);

    let registry = Origin::start_proxy(&origin.url());
    let oci = Mirror::start_oci_cache(&[("origin", &origin.url())], "origin", "5m");

    // The origin serving the largest blob directly: the reference for blob
    // throughput (cold pulls are paired with direct ones in `measure`).
    log("origin: wrk on the largest blob (the reference)");
    let wrk_secs = env_or("BENCH_WRK_SECS", 5u64);
    let largest = largest_blob(&corpus.big);
    let direct_blob = wrk(
        &format!("http://{}/v2/bench/big/blobs/{largest}", origin.host()),
        8,
        wrk_secs,
    );

    let reg = measure(
        "registry:2",
        &registry.host(),
        registry.pid(),
        &origin,
        &corpus,
        work,
    );
    let oc = measure("oci-cache", &oci.host(), oci.pid(), &origin, &corpus, work);
    log("oci-cache, then nginx sendfile on the file it stored: wrk on the largest blob");
    let storage = oci.dir().join("storage");
    let vs_nginx = nginx::versus(
        (&oci.host(), oci.pid(), "bench/big"),
        &corpus.big,
        &storage,
        work,
        (8, wrk_secs),
    );
    drop(registry);
    drop(oci);
    let wan = wan::measure(&origin, work);
    let huge = huge::measure(&origin, work, huge_mib);

    let dash = || "—".to_owned();
    let secs = |s: f64| format!("{s:.2} s");
    let mut t = Table { rows: Vec::new() };
    let big_mib = image_bytes(&corpus.big) as f64 / MIB;
    t.row(
        &format!(
            "cold pull, {big_mib:.0} MiB image, 5 layers (skopeo, median of {} images)",
            1 + COLD_EXTRA_IMAGES
        ),
        format!(
            "{} / {} (paired with registry:2 / oci-cache)",
            secs(reg.cold_direct),
            secs(oc.cold_direct)
        ),
        secs(reg.cold_pull),
        secs(oc.cold_pull),
        format!(
            "{} (vs origin, median of paired ratios: oci-cache {:.2}×, registry:2 {:.2}×)",
            ratio(oc.cold_pull, reg.cold_pull),
            oc.cold_vs_origin,
            reg.cold_vs_origin
        ),
        "≤ 1.25× origin (loopback)",
    );
    t.row(
        "origin bytes / image bytes, one cold pull",
        dash(),
        format!("{:.3}", reg.cold_origin_ratio),
        format!("{:.3}", oc.cold_origin_ratio),
        ratio(oc.cold_origin_ratio, reg.cold_origin_ratio),
        "1.00",
    );
    t.row(
        "warm pull (median)",
        dash(),
        secs(reg.warm_pull),
        secs(oc.warm_pull),
        ratio(oc.warm_pull, reg.warm_pull),
        "≤ 1.0×",
    );
    let wrk_rows = [
        ("manifest by tag, 64 conns", reg.tag, oc.tag, "≥ 10×"),
        (
            "manifest by digest, 64 conns",
            reg.digest,
            oc.digest,
            "≥ 5×",
        ),
    ];
    for (what, r, o, target) in wrk_rows {
        let (r, o) = (r.unwrap(), o.unwrap());
        t.row(
            &format!("{what}: req/s"),
            dash(),
            format!("{:.0}", r.req_per_sec),
            format!("{:.0}", o.req_per_sec),
            ratio(o.req_per_sec, r.req_per_sec),
            target,
        );
        t.row(
            &format!("{what}: p99"),
            dash(),
            format!("{:.2} ms", r.p99_ms),
            format!("{:.2} ms", o.p99_ms),
            ratio(o.p99_ms, r.p99_ms),
            "",
        );
    }
    let (rb, ob) = (reg.blob.unwrap(), oc.blob.unwrap());
    t.row(
        &format!("warm blob, {} MiB, 8 conns: MiB/s", layer_mib),
        format!("{:.0}", direct_blob.bytes_per_sec / MIB),
        format!("{:.0}", rb.bytes_per_sec / MIB),
        format!("{:.0}", ob.bytes_per_sec / MIB),
        format!(
            "{} (vs origin {})",
            ratio(ob.bytes_per_sec, rb.bytes_per_sec),
            ratio(ob.bytes_per_sec, direct_blob.bytes_per_sec)
        ),
        "≥ 1.5×, ≥ 1.0× origin",
    );
    vs_nginx.add_to(&mut t);
    t.row(
        "16 concurrent cold pulls: wall time",
        dash(),
        secs(reg.conc_wall),
        secs(oc.conc_wall),
        ratio(oc.conc_wall, reg.conc_wall),
        "≤ 0.7×",
    );
    t.row(
        "16 concurrent cold pulls: origin bytes / image bytes",
        dash(),
        format!("{:.3}", reg.conc_origin_ratio),
        format!("{:.3}", oc.conc_origin_ratio),
        ratio(oc.conc_origin_ratio, reg.conc_origin_ratio),
        "1.00",
    );
    t.row(
        "peak RSS over the run",
        dash(),
        format!("{:.1} MiB", reg.peak_rss / MIB),
        format!("{:.1} MiB", oc.peak_rss / MIB),
        ratio(oc.peak_rss, reg.peak_rss),
        "≤ 0.25×",
    );
    let same_work = |f: &Figures| f.cpu - RATE_PHASES.iter().map(|p| f.phases.cpu(p)).sum::<f64>();
    t.row(
        "CPU seconds over the run: same work for both (all phases but the fixed-time wrk runs)",
        dash(),
        format!("{:.1}", same_work(&reg)),
        format!("{:.1}", same_work(&oc)),
        ratio(same_work(&oc), same_work(&reg)),
        "≤ 0.35×",
    );
    t.row(
        "CPU seconds including the fixed-time wrk runs (more work for the faster server)",
        dash(),
        format!("{:.1}", reg.cpu),
        format!("{:.1}", oc.cpu),
        ratio(oc.cpu, reg.cpu),
        "",
    );
    let per_request = |f: &Figures| {
        let requests =
            (f.tag.unwrap().req_per_sec + f.digest.unwrap().req_per_sec) * wrk_secs as f64;
        (f.phases.cpu(WRK_TAG) + f.phases.cpu(WRK_DIGEST)) / requests * 1e6
    };
    t.row(
        "CPU per manifest request (wrk runs)",
        dash(),
        format!("{:.0} µs", per_request(&reg)),
        format!("{:.0} µs", per_request(&oc)),
        ratio(per_request(&oc), per_request(&reg)),
        "",
    );
    let per_mib = |f: &Figures| {
        f.phases.cpu(WRK_BLOB) / (f.blob.unwrap().bytes_per_sec * wrk_secs as f64 / MIB) * 1e3
    };
    t.row(
        "CPU per warm blob MiB (wrk run)",
        dash(),
        format!("{:.2} ms", per_mib(&reg)),
        format!("{:.2} ms", per_mib(&oc)),
        ratio(per_mib(&oc), per_mib(&reg)),
        "",
    );
    // The mirror's CPU in the cold-pull phase goes to the cold pulls only
    // (the paired direct pulls do not touch it): fill and serve, per MiB.
    let cold_mib = big_mib * (1 + COLD_EXTRA_IMAGES) as f64;
    let fill_per_mib = |f: &Figures| f.phases.cpu(COLD_PULLS) / cold_mib;
    let floor_per_mib = floor.cpu_per_mib();
    for (what, mib_s) in [
        (
            "floor: SHA-256, sha2 crate, 128 KiB updates",
            floor.sha256_mib_s,
        ),
        (
            "floor: copy through the page cache (read a file, write a file)",
            floor.copy_mib_s,
        ),
    ] {
        t.row(
            &format!("{what}: MiB per CPU second (this run)"),
            format!("{mib_s:.0}"),
            dash(),
            dash(),
            dash(),
            "",
        );
    }
    t.row(
        "fill CPU per cold MiB (CPU of the mirror during the cold pulls ÷ MiB filled; origin column: the floor, hash + one copy)",
        format!("{:.2} ms", floor_per_mib * 1e3),
        format!("{:.2} ms", fill_per_mib(&reg) * 1e3),
        format!("{:.2} ms", fill_per_mib(&oc) * 1e3),
        format!(
            "{} (× floor: oci-cache {:.2}×, registry:2 {:.2}×)",
            ratio(fill_per_mib(&oc), fill_per_mib(&reg)),
            fill_per_mib(&oc) / floor_per_mib,
            fill_per_mib(&reg) / floor_per_mib
        ),
        "≤ 1.5× floor",
    );
    wan::rows(&mut t, &wan);
    if let Some(h) = huge {
        h.add_to(&mut t);
    }
    println!();
    t.print();
    println!("\nPer phase (peak RSS during the phase, CPU seconds it used):\n");
    println!("| phase | registry:2 proxy | oci-cache |");
    println!("|---|---|---|");
    for (r, o) in reg.phases.rows.iter().zip(&oc.phases.rows) {
        println!(
            "| {} | {:.1} MiB, {:.2} s | {:.1} MiB, {:.2} s |",
            r.0,
            r.1 / MIB,
            r.2,
            o.1 / MIB,
            o.2
        );
    }
}
