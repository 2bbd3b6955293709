//! Images shared by the e2e tests.
//!
//! Small images are cheap, so each test builds its own. The big image (≥ 100 MiB
//! in ≥ 4 layers) is built once per test process, lazily, into cargo's
//! per-target temp dir (`target/tmp`), and only read afterwards, so parallel tests can push it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::image::{build_image, build_multiarch, ImageSpec, Layout};

/// Layers of the big image; `E2E_BIG_LAYERS` overrides.
const BIG_LAYERS: usize = 4;
/// MiB per layer of the big image; `E2E_BIG_LAYER_MIB` overrides (4 × 26 MiB = 104 MiB).
const BIG_LAYER_MIB: u64 = 26;

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The big image and how long building it took.
pub(crate) fn big_image() -> &'static (Layout, Duration) {
    static BIG: OnceLock<(Layout, Duration)> = OnceLock::new();
    BIG.get_or_init(|| {
        let layers = env_or("E2E_BIG_LAYERS", BIG_LAYERS);
        let mib = env_or("E2E_BIG_LAYER_MIB", BIG_LAYER_MIB);
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-big-{layers}x{mib}"));
        // Rebuilt on every run (one fixed place, no leftovers piling up): a
        // half-written layout from an interrupted run must never be reused.
        let _ = std::fs::remove_dir_all(&dir);
        let start = Instant::now();
        let layout = build_image(&dir, "big", &ImageSpec::new(100, layers, mib << 20));
        let took = start.elapsed();
        eprintln!(
            "e2e fixture: built big image {} ({layers} x {mib} MiB) in {took:.2?}",
            layout.digest
        );
        (layout, took)
    })
}

/// A small single-platform image (3 layers of a few KiB) in `dir`, seeded by `seed`.
pub(crate) fn small_image(dir: &std::path::Path, seed: u64) -> Layout {
    build_image(dir, "v1", &ImageSpec::new(seed, 3, 5000))
}

/// A small multi-arch index (linux/amd64 + linux/arm64, 2 layers each) in `dir`.
pub(crate) fn multiarch_image(dir: &std::path::Path, seed: u64) -> Layout {
    build_multiarch(dir, "v1", &ImageSpec::new(seed, 2, 3000))
}
