//! Issue 24: behind a link that resets every connection after a fixed number
//! of bytes, a cold pull of an image whose layers are each larger than that
//! completes, verified, and the origin sends the image about once — on the
//! filesystem and on S3 (moto).

use crate::support::cut_proxy::CutProxy;
use crate::support::image::{build_image, ImageSpec, Layout};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::s3::S3Server;
use crate::support::{skopeo, tools_available};

/// Where the link drops every connection.
const CUT: u64 = 2 << 20;
/// Each layer: three connections' worth.
const LAYER: u64 = 6 << 20;
/// What the origin may send in all, as a multiple of the image.
const MAX_AMPLIFICATION: f64 = 1.10;

/// The origin with `app` pushed, the resetting link in front of it.
fn origin_behind_resetting_link(app: &Layout) -> (Origin, CutProxy) {
    let origin = Origin::start();
    skopeo::push(app, &origin.host(), "e2e/app:v1");
    let link = CutProxy::resetting(&origin.host(), CUT);
    (origin, link)
}

/// Pulls `app` cold through `mirror`, checks what arrived and what the
/// origin sent, and returns the origin bytes per image byte.
fn cold_pull(
    mirror: &Mirror,
    origin: &Origin,
    link: &CutProxy,
    app: &Layout,
    dest: &std::path::Path,
) -> f64 {
    let logged_before = origin.bytes_served();
    let got = skopeo::copy(&format!("{}/e2e/app:v1", mirror.host()), dest).unwrap();
    assert_eq!(got.digest, app.digest);
    let blobs = app.all_blobs();
    let pulled = skopeo::layout_blobs(dest);
    for blob in &blobs {
        assert!(pulled.contains(&blob.digest), "{} missing", blob.digest);
    }
    let image: u64 = blobs.iter().map(|b| b.size).sum();
    let layers = &app.images[0].layers;
    assert!(
        link.cuts() >= 2 * layers.len(),
        "the link cut only {} connections",
        link.cuts()
    );
    let sent = link.bytes_from_target();
    let amplification = sent as f64 / image as f64;
    // The origin's access log counts more: what its writes left in socket
    // buffers when the link dropped the connection, which never crossed it.
    eprintln!(
        "resetting link: image {image} B, origin sent {sent} B over the link ({amplification:.3}x), \
         {} cuts; origin access log {} B",
        link.cuts(),
        origin.bytes_served() - logged_before
    );
    assert!(
        amplification <= MAX_AMPLIFICATION,
        "origin sent {amplification:.3}x the image"
    );
    // Everything is cached: a second pull sends no blob over the link.
    let again = skopeo::copy(
        &format!("{}/e2e/app:v1", mirror.host()),
        &dest.with_extension("again"),
    )
    .unwrap();
    assert_eq!(again.digest, app.digest);
    let resent = link.bytes_from_target() - sent;
    assert!(
        resent < 64 * 1024,
        "{resent} B over the link for a warm pull"
    );
    amplification
}

fn image(dir: &std::path::Path, seed: u64) -> Layout {
    let app = build_image(dir, "v1", &ImageSpec::new(seed, 3, LAYER));
    for layer in &app.images[0].layers {
        assert!(layer.size > CUT, "every layer must outgrow the cut");
    }
    app
}

#[test]
fn a_cold_pull_through_a_link_resetting_every_connection_completes_on_the_filesystem() {
    if !tools_available(
        "a_cold_pull_through_a_link_resetting_every_connection_completes_on_the_filesystem",
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = image(&work.path().join("app"), 2401);
    let (origin, link) = origin_behind_resetting_link(&app);
    let url = format!("http://{}", link.host());
    let mirror = Mirror::start_oci_cache(&[("origin.test", &url)], "origin.test", "5m");
    cold_pull(&mirror, &origin, &link, &app, &work.path().join("c1"));
}

#[test]
fn a_cold_pull_through_a_link_resetting_every_connection_completes_on_s3() {
    let test = "a_cold_pull_through_a_link_resetting_every_connection_completes_on_s3";
    if !tools_available(test) {
        return;
    }
    let Some(s3) = S3Server::start(test) else {
        return;
    };
    s3.create_bucket("oci-cache-resume");
    let work = tempfile::tempdir().unwrap();
    let app = image(&work.path().join("app"), 2402);
    let (origin, link) = origin_behind_resetting_link(&app);
    let config = format!(
        "[storage]\nkind = \"s3\"\nbucket = \"oci-cache-resume\"\nendpoint = \"{}\"\n\
         region = \"us-east-1\"\npath_style = true\n",
        s3.endpoint()
    );
    let url = format!("http://{}", link.host());
    let mirror = Mirror::start_oci_cache_with_config(
        &config,
        &[("origin.test", &url)],
        "origin.test",
        "5m",
        &[
            ("AWS_ACCESS_KEY_ID", "e2e"),
            ("AWS_SECRET_ACCESS_KEY", "e2e-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    cold_pull(&mirror, &origin, &link, &app, &work.path().join("c1"));
    let keys = s3.keys("oci-cache-resume");
    for layer in &app.images[0].layers {
        let hex = layer.digest.trim_start_matches("sha256:");
        assert!(
            keys.iter().any(|k| k.ends_with(hex)),
            "layer {} is not in the bucket: {keys:?}",
            layer.digest
        );
    }
}
