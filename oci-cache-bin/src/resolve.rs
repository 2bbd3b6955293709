//! `oci-cache resolve`: how a reference parses and normalises, and where the
//! cache would fetch it from under the loaded configuration.

use std::io::Write;
use std::process::ExitCode;

use oci_cache_core::mirror::{Addressing, MirrorConfig};
use oci_cache_core::reference::{ManifestRef, Reference};
use serde_json::json;

use crate::cli::ResolveArgs;
use crate::config;

/// Exit status for a reference that does not parse, or unusable configuration.
const EXIT_INVALID: u8 = 2;
/// Exit status for a valid reference the cache would refuse to fetch: no
/// configured upstream serves its registry.
const EXIT_REFUSED: u8 = 3;

pub(crate) fn run(args: &ResolveArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    let reference = match args.reference.parse::<Reference>() {
        Ok(reference) => reference,
        Err(e) => {
            let written = if args.json {
                let body = json!({"error": {
                    "kind": e.kind().as_str(),
                    "message": e.to_string(),
                    "offset": e.offset(),
                }});
                writeln!(out, "{body}")
            } else {
                writeln!(err, "error: {e}")
            };
            return match written {
                Ok(()) => ExitCode::from(EXIT_INVALID),
                Err(_) => ExitCode::FAILURE,
            };
        }
    };
    let mirrors = match config::resolve_config(&args.config) {
        Ok(settings) => settings.mirrors,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let route = route(&mirrors, &reference);
    let written = if args.json {
        writeln!(out, "{}", describe(&args.reference, &reference, &route))
    } else {
        human(out, &reference, &route)
    };
    match (written, &route) {
        (Err(_), _) => ExitCode::FAILURE,
        (Ok(()), Route::Upstream { .. }) => ExitCode::SUCCESS,
        (Ok(()), Route::Unconfigured(_)) => ExitCode::from(EXIT_REFUSED),
    }
}

/// Where a reference is fetched from.
enum Route {
    /// The configured upstream and the manifest URLs tried, in order.
    Upstream { name: String, urls: Vec<String> },
    /// No configured upstream has the reference's registry name.
    Unconfigured(String),
}

/// The manifest request URLs HyperUpstream would try for `reference`:
/// tags skip digest-only mirrors, mirrors get `ns`, Docker Hub names get `library/`.
fn route(mirrors: &MirrorConfig, reference: &Reference) -> Route {
    let registry = reference.registry();
    let Some(upstream) = mirrors.lookup(registry.as_str()) else {
        return Route::Unconfigured(format!(
            "no configured upstream is named {registry}: the cache refuses to fetch it; add it with --upstream, the config file, --talos-config or --containerd-hosts"
        ));
    };
    let manifest = reference.manifest_ref();
    let addressing = match manifest {
        ManifestRef::Tag(_) => Addressing::Tag,
        ManifestRef::Digest(_) => Addressing::Digest,
    };
    let repository = match upstream.upstream_repository(reference.repository()) {
        Ok(repository) => repository,
        Err(e) => return Route::Unconfigured(e.to_string()),
    };
    let urls = upstream
        .chain_for(addressing)
        .into_iter()
        .map(|endpoint| {
            endpoint.request_url(
                &upstream.name,
                &repository,
                &format!("manifests/{manifest}"),
                None,
                !upstream.is_origin(endpoint),
            )
        })
        .collect();
    Route::Upstream {
        name: upstream.name.to_string(),
        urls,
    }
}

fn describe(input: &str, reference: &Reference, route: &Route) -> serde_json::Value {
    let mut body = json!({
        "input": input,
        "canonical": reference.to_string(),
        "familiar": reference.familiar(),
        "registry": reference.registry().as_str(),
        "repository": reference.repository().as_str(),
        "tag": reference.tag().map(|t| t.as_str()),
        "digest": reference.digest().map(|d| d.as_str()),
    });
    let (upstream, endpoints, note) = match route {
        Route::Upstream { name, urls } => (json!(name), json!(urls), None),
        Route::Unconfigured(why) => (serde_json::Value::Null, json!([]), Some(why)),
    };
    if let Some(map) = body.as_object_mut() {
        map.insert("upstream".into(), upstream);
        map.insert("endpoints".into(), endpoints);
        if let Some(note) = note {
            map.insert("upstream_error".into(), json!(note));
        }
    }
    body
}

fn human(out: &mut impl Write, reference: &Reference, route: &Route) -> std::io::Result<()> {
    writeln!(
        out,
        "canonical: {reference}\nfamiliar:  {}",
        reference.familiar()
    )?;
    match route {
        Route::Upstream { name, urls } => {
            writeln!(out, "upstream:  {name}")?;
            writeln!(out, "endpoints (tried in order):")?;
            for (i, url) in urls.iter().enumerate() {
                writeln!(out, "  {}. {url}", i + 1)?;
            }
            Ok(())
        }
        Route::Unconfigured(why) => writeln!(out, "upstream:  none ({why})"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use oci_cache_core::mirror::{Endpoint, UpstreamConfig};

    fn urls(mirrors: &MirrorConfig, reference: &str) -> Vec<String> {
        match route(mirrors, &reference.parse().unwrap()) {
            Route::Upstream { urls, .. } => urls,
            Route::Unconfigured(why) => panic!("{why}"),
        }
    }

    #[test]
    fn routes_follow_the_chain_the_client_builds() {
        let hub = MirrorConfig::common().lookup("docker.io").unwrap().clone();
        let mirrors = MirrorConfig::common().with_upstream(
            hub.with_endpoint(Endpoint::new("http://m:5000").with_resolve(false))
                .with_endpoint(Endpoint::new("https://h/v2/hub").with_override_path(true)),
        );
        assert_eq!(
            urls(&mirrors, "alpine:3"),
            [
                "https://h/v2/hub/library/alpine/manifests/3?ns=docker.io",
                "https://registry-1.docker.io/v2/library/alpine/manifests/3",
            ]
        );
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let by_digest = urls(&mirrors, &format!("alpine@{digest}"));
        assert_eq!(by_digest.len(), 3);
        assert_eq!(
            by_digest[0],
            format!("http://m:5000/v2/library/alpine/manifests/{digest}?ns=docker.io")
        );
    }

    #[test]
    fn unconfigured_registries_say_so() {
        let mirrors = MirrorConfig::common().with_upstream(UpstreamConfig::new(
            "x.test".parse().unwrap(),
            "http://127.0.0.1:1",
        ));
        let reference: Reference = "evil.example/app:1".parse().unwrap();
        let route = route(&mirrors, &reference);
        let body = describe("evil.example/app:1", &reference, &route);
        assert_eq!(body["upstream"], serde_json::Value::Null);
        assert_eq!(body["endpoints"], json!([]));
        assert!(body["upstream_error"]
            .as_str()
            .unwrap()
            .contains("no configured upstream is named evil.example"));
        let mut text = Vec::new();
        human(&mut text, &reference, &route).unwrap();
        assert!(String::from_utf8(text)
            .unwrap()
            .contains("upstream:  none ("));
    }
}
