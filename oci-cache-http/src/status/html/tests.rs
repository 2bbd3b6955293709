use std::collections::BTreeMap;

use super::*;
use crate::status::{Bytes, Disk, ErrorStatus, Fills, Requests};

fn status(image: &str, error_endpoint: &str) -> Status {
    Status {
        version: "0.1.0",
        started_at: 0,
        uptime_seconds: 3725,
        metrics: true,
        requests: Requests {
            total: 4,
            by_cache: BTreeMap::from([("hit".to_owned(), 3), ("miss".to_owned(), 1)]),
            hit_ratio: Some(0.75),
        },
        bytes: Bytes {
            served: 3 * 1024 * 1024,
            fetched: 1024 * 1024,
            saved: 2 * 1024 * 1024,
        },
        upstreams: vec![UpstreamStatus {
            name: "docker.io".to_owned(),
            default: true,
            endpoints: vec![],
            last_success: None,
            last_error: Some(ErrorStatus {
                at: 0,
                endpoint: error_endpoint.to_owned(),
                kind: "unavailable",
            }),
            attempts: BTreeMap::new(),
            hit_ratio: Some(0.5),
            bytes_fetched: 0,
            throttled: 0,
            ratelimit: Some(crate::status::RateLimit {
                remaining: Some(87),
                limit: Some(100),
            }),
        }],
        disk: Disk {
            stored_bytes: 512,
            stored_objects: 2,
            max_size: Some(1024),
            evictions: 0,
            evicted_bytes: 0,
            protected_bytes: 0,
            protected_over_cap: 0,
        },
        fills: Fills {
            in_flight: 0,
            list: vec![],
        },
        most_pulled: vec![Image {
            name: image.to_owned(),
            pulls: 2,
            last_reference: "latest".to_owned(),
            last_pulled: 0,
        }],
        most_recent: vec![],
    }
}

#[test]
fn names_from_clients_and_upstreams_are_escaped() {
    let page = render(&status(
        "docker.io/<script>alert(1)</script>",
        "https://x\"><img src=x onerror=alert(2)>",
    ));
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("docker.io/&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("https://x&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
}

#[test]
fn figures_carry_exact_values_and_the_page_reloads_itself() {
    let page = render(&status("docker.io/library/alpine", "https://e"));
    assert!(page.contains("data-figure=\"bytes_served\" data-value=\"3145728\">3.0 MiB<"));
    assert!(page.contains("data-figure=\"hit_ratio\" data-value=\"0.7500\">75.0%<"));
    assert!(page.contains("data-figure=\"ratelimit_remaining\" data-value=\"87\">87<"));
    assert!(page.contains("data-figure=\"disk_used_percent\" data-value=\"50.0\""));
    assert!(page.contains(&format!(
        "http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\""
    )));
    assert!(page.contains("name=\"viewport\""));
    // No external asset: nothing is loaded from anywhere.
    assert!(!page.contains("src="));
    assert!(!page.contains("<link"));
    assert!(page.contains("up 1h 2m"));
}

#[test]
fn human_bytes_rounds_in_binary_units() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
}
