//! Issue 28: a cold pull of an image whose layer is larger than
//! `fill_segments.min_size` comes through the mirror byte-exact, fetched
//! from the real origin over several ranged GETs, and the origin sends each
//! byte of it once.

use crate::support::image::{build_image, ImageSpec};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

/// One layer: the 16 MiB first answer and three parts of the rest.
const LAYER: u64 = 24 << 20;

#[test]
fn a_large_cold_layer_comes_over_several_ranged_gets_and_the_origin_sends_it_once() {
    let test = "a_large_cold_layer_comes_over_several_ranged_gets_and_the_origin_sends_it_once";
    if !tools_available(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = build_image(
        &work.path().join("app"),
        "v1",
        &ImageSpec::new(2801, 1, LAYER),
    );
    let origin = Origin::with_images(&[(&app, "e2e/big:v1")]);
    let pushed = origin.blob_gets().len();
    let url = format!("http://{}", origin.host());
    let mirror = Mirror::start_oci_cache(&[("origin.test", &url)], "origin.test", "5m");

    let dest = work.path().join("pulled");
    let got = skopeo::copy(&format!("{}/e2e/big:v1", mirror.host()), &dest).unwrap();
    assert_eq!(got.digest, app.digest);
    let pulled = skopeo::layout_blobs(&dest);
    for blob in app.all_blobs() {
        assert!(pulled.contains(&blob.digest), "{} missing", blob.digest);
    }

    let layer = &app.images[0].layers[0];
    let gets: Vec<_> = origin
        .blob_gets()
        .into_iter()
        .skip(pushed)
        .filter(|r| r.path.contains(&layer.digest))
        .collect();
    assert_eq!(gets.len(), 4, "the first 16 MiB and three parts: {gets:?}");
    assert!(gets.iter().all(|r| r.status == 206), "{gets:?}");
    let sent: u64 = gets.iter().map(|r| r.bytes).sum();
    eprintln!(
        "segmented cold pull: layer {} B, origin sent {sent} B in {} ranged GETs ({:.3}x)",
        layer.size,
        gets.len(),
        sent as f64 / layer.size as f64
    );
    assert_eq!(
        sent, layer.size,
        "the origin sent the layer other than once"
    );
}
