//! Issue 27: the pull policy between a real origin and a real client. A
//! denied repository is refused however skopeo or a plain request asks for
//! it, and the origin never hears of it.

use super::fixtures::small_image;
use crate::support::http::{self, CONTAINERD_ACCEPT};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

#[test]
fn a_denied_repository_never_reaches_the_origin() {
    if !tools_available("a_denied_repository_never_reaches_the_origin") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let app = small_image(&work.path().join("app"), 70);
    let blocked = small_image(&work.path().join("blocked"), 71);
    let origin = Origin::with_images(&[(&app, "e2e/app:v1"), (&blocked, "e2e/blocked:v1")]);
    let blocked_digest = origin.manifest_digest("e2e/blocked", "v1");
    let origin_url = origin.url();
    // Stored in the test's own directory, never the working directory.
    let config = format!(
        "[storage]\nkind = \"filesystem\"\ndir = {:?}\n\
         [[policy.rule]]\nname = \"no-blocked\"\naction = \"deny\"\n\
         upstream = \"a.test\"\nrepository = \"e2e/blocked\"\n",
        work.path().join("storage")
    );
    let mirror = Mirror::start_oci_cache_with_config(
        &config,
        &[("a.test", &origin_url)],
        "a.test",
        "5m",
        &[],
    );
    let m = mirror.host();
    let before = origin.records().len();

    let refused = skopeo::copy(&format!("{m}/e2e/blocked:v1"), &work.path().join("b1"));
    let message = refused.expect_err("skopeo copied a denied image");
    assert!(
        message.contains("denied") || message.contains("403"),
        "{message}"
    );
    let layer = &blocked.images[0].layers[0].digest;
    for (method, path) in [
        ("GET", format!("/v2/e2e/blocked/manifests/{blocked_digest}")),
        ("HEAD", "/v2/e2e/blocked/manifests/v1".to_owned()),
        ("GET", format!("/v2/e2e/blocked/blobs/{layer}")),
        ("GET", "/v2/e2e/blocked/tags/list".to_owned()),
    ] {
        let resp = http::request(&m, method, &path, &[("Accept", CONTAINERD_ACCEPT)]).unwrap();
        assert_eq!(resp.status, 403, "{method} {path}");
        if method == "GET" {
            let body = String::from_utf8_lossy(&resp.body);
            assert!(
                body.contains("DENIED") && body.contains("no-blocked"),
                "{body}"
            );
        }
    }
    assert_eq!(
        origin.records().len(),
        before,
        "a denied reference reached the origin"
    );

    let got = skopeo::copy(&format!("{m}/e2e/app:v1"), &work.path().join("a1")).unwrap();
    assert_eq!(got.digest, app.digest, "other repositories are served");
    assert_eq!(origin.count("GET", "/e2e/blocked/"), 0);
}
