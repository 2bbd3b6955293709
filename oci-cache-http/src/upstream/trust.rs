//! Where an endpoint's requests may lead: which token realms get its
//! credentials and which redirects are followed.
//!
//! The rules (issue 11), for an endpoint `E` and a target URL `T`:
//! - `T` must be `http://` or `https://`; an `https` endpoint never goes to
//!   an `http` target (a realm there would see the password in clear, a
//!   redirect there would hand the content to anyone on the path).
//! - A `T` on a loopback, link-local, private or unspecified address (an IP
//!   literal or `localhost`) is refused unless `E` itself is on such an
//!   address or the operator set `allow_private_targets` on `E`. Host names
//!   are judged by name, not by what they resolve to.
//! - A realm gets credentials only when its host is `E`'s host, on the same
//!   registrable domain (public suffix list, so `auth.docker.io` serves
//!   `registry-1.docker.io` but `evil.co.uk` never serves `registry.co.uk`),
//!   or listed in `E`'s `token_realms`. Anonymous endpoints may use any realm
//!   that passes the two rules above: there is nothing of theirs to leak.
//! - Manifests and tag lists are followed only to `E`'s own origin or a
//!   host in `E`'s `redirect_hosts` (`*.domain` names every host below it); blobs (content-addressed, verified by
//!   digest) may go to any host that passes the first two rules (CDNs).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use http::Uri;
use oci_cache_core::mirror::Endpoint;
use oci_cache_core::observe::{SharedObserver, TrustEvent, TrustTarget};

/// What a target URL is used for, which decides the rules it must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A token server (`realm`), or a redirect while talking to it.
    Realm,
    /// A redirect of a manifest or tag-list request (or a tag-list `Link`).
    Api,
    /// A redirect of a blob download.
    Blob,
}

impl Purpose {
    fn target(self) -> TrustTarget {
        match self {
            Purpose::Realm => TrustTarget::Realm,
            Purpose::Api => TrustTarget::ApiRedirect,
            Purpose::Blob => TrustTarget::BlobRedirect,
        }
    }
}

/// Why a target was refused, for the log and the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal(pub(super) String);

/// Checks `target` for `purpose` on behalf of `endpoint`; `with_credentials`
/// says whether the endpoint's credentials would be sent there.
pub(super) fn check(
    endpoint: &Endpoint,
    purpose: Purpose,
    target: &Uri,
    with_credentials: bool,
) -> Result<(), Refusal> {
    let Ok(base) = endpoint.url.parse::<Uri>() else {
        return Err(Refusal("the endpoint url is invalid".to_owned()));
    };
    let scheme = target.scheme_str().unwrap_or_default();
    if scheme != "http" && scheme != "https" {
        return Err(Refusal(format!("scheme {scheme:?} is not http or https")));
    }
    if base.scheme_str() == Some("https") && scheme == "http" {
        return Err(Refusal(
            "an https endpoint is never sent to plain http".to_owned(),
        ));
    }
    let host = host_of(target);
    let base_host = host_of(&base);
    if is_internal(&host) && !is_internal(&base_host) && !endpoint.allow_private_targets {
        return Err(Refusal(format!(
            "{host} is a loopback, link-local or private address; set allow_private_targets on the endpoint to allow it"
        )));
    }
    let listed = |list: &[String]| list.iter().any(|pattern| host_matches(pattern, &host));
    match purpose {
        Purpose::Realm => {
            if !with_credentials
                || host == base_host
                || same_registrable_domain(&host, &base_host)
                || listed(&endpoint.token_realms)
            {
                Ok(())
            } else {
                Err(Refusal(format!(
                    "realm host {host} is not the endpoint's host or domain; list it in token_realms to send it the credentials"
                )))
            }
        }
        Purpose::Api => {
            if origin_key(target) == origin_key(&base) || listed(&endpoint.redirect_hosts) {
                Ok(())
            } else {
                Err(Refusal(format!(
                    "manifests and tag lists are not followed to another host ({host}); list it in redirect_hosts to allow it"
                )))
            }
        }
        Purpose::Blob => Ok(()),
    }
}

/// The lower-case host of `uri`, without IPv6 brackets or the trailing dot
/// of a fully qualified name (`localhost.` is `localhost`).
pub(super) fn host_of(uri: &Uri) -> String {
    uri.host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `pattern` is `host` or, as `*.domain`, any host below `domain`.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        None => pattern == host,
    }
}

/// `scheme://host:port` with the default port spelled out.
fn origin_key(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{}:{port}", host_of(uri))
}

/// Both hosts are names with the same registrable domain (eTLD+1).
fn same_registrable_domain(a: &str, b: &str) -> bool {
    if a.parse::<IpAddr>().is_ok() || b.parse::<IpAddr>().is_ok() {
        return false;
    }
    match (psl::domain_str(a), psl::domain_str(b)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// Loopback, link-local, private (RFC 1918, ULA), CGNAT or unspecified
/// addresses, and `localhost` names.
///
/// Numeric hosts that are not canonical IP literals (`2130706433`, `127.1`,
/// `0x7f.0.0.1`) count as internal: the resolver reads them as addresses
/// (inet_aton), so they could hide a loopback address.
pub(super) fn is_internal(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let numeric = host.split('.').all(|label| {
        label.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && label
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'x' || b == b'X')
    });
    if numeric && host.parse::<IpAddr>().is_err() {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
        }
        Ok(IpAddr::V6(ip)) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_internal(&v4.to_string());
            }
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

/// Logs each refusal once per (endpoint, target host, reason) and reports
/// every one to the observer.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    seen: Mutex<HashSet<String>>,
}

impl RefusalLog {
    /// Records a refusal of `target` for `purpose` on behalf of `endpoint`.
    pub(super) fn refused(
        &self,
        observer: &SharedObserver,
        endpoint: &Endpoint,
        purpose: Purpose,
        target_host: &str,
        refusal: &Refusal,
    ) {
        let host = target_host.to_owned();
        let key = format!("{}\n{host}\n{}", endpoint.url, refusal.0);
        let first = self.seen.lock().map(|mut s| s.insert(key)).unwrap_or(true);
        if first {
            tracing::warn!(endpoint = %endpoint.url, target = %host, kind = purpose.target().as_str(),
                reason = %refusal.0, "refused an upstream realm or redirect (logged once)");
        }
        observer.trust_refused(&TrustEvent {
            endpoint: endpoint.url.clone(),
            target_host: host,
            target: purpose.target(),
            reason: refusal.0.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn ok(endpoint: &Endpoint, purpose: Purpose, target: &str, creds: bool) -> bool {
        check(endpoint, purpose, &uri(target), creds).is_ok()
    }

    #[test]
    fn realms_get_credentials_only_on_the_endpoints_domain() {
        let hub = Endpoint::new("https://registry-1.docker.io");
        assert!(ok(
            &hub,
            Purpose::Realm,
            "https://auth.docker.io/token",
            true
        ));
        assert!(ok(
            &hub,
            Purpose::Realm,
            "https://registry-1.docker.io/t",
            true
        ));
        assert!(!ok(
            &hub,
            Purpose::Realm,
            "https://auth.evil.example/token",
            true
        ));
        assert!(!ok(
            &hub,
            Purpose::Realm,
            "http://auth.docker.io/token",
            true
        ));
        // Anonymous: any public https realm, still never http.
        assert!(ok(
            &hub,
            Purpose::Realm,
            "https://auth.evil.example/token",
            false
        ));
        assert!(!ok(
            &hub,
            Purpose::Realm,
            "http://auth.docker.io/token",
            false
        ));
        // Public suffixes are not registrable domains.
        let uk = Endpoint::new("https://registry.co.uk");
        assert!(!ok(&uk, Purpose::Realm, "https://evil.co.uk/token", true));
        let gh = Endpoint::new("https://a.github.io");
        assert!(!ok(&gh, Purpose::Realm, "https://b.github.io/token", true));
        // Operator-listed realm hosts.
        let mut listed = Endpoint::new("https://registry.example");
        listed.token_realms = vec!["Login.Other.Example".into()];
        assert!(ok(
            &listed,
            Purpose::Realm,
            "https://login.other.example/t",
            true
        ));
        assert!(!ok(
            &listed,
            Purpose::Realm,
            "https://other.example/t",
            true
        ));
    }

    #[test]
    fn internal_targets_need_an_internal_endpoint_or_permission() {
        let public = Endpoint::new("https://registry.example");
        for target in [
            "https://127.0.0.1/t",
            "https://10.1.2.3/t",
            "https://169.254.169.254/latest",
            "https://[::1]:5000/t",
            "https://[fd00::1]/t",
            "https://[::ffff:192.168.1.1]/t",
            "https://localhost/t",
            "https://LOCALHOST./t",
            "https://a.localhost./t",
            "https://100.64.0.1/t",
            "https://2130706433/t",
            "https://127.1/t",
            "https://0x7f.0.0.1/t",
            "https://0.0.0.0/t",
        ] {
            assert!(!ok(&public, Purpose::Blob, target, false), "{target}");
            assert!(!ok(&public, Purpose::Realm, target, false), "{target}");
        }
        assert!(ok(&public, Purpose::Blob, "https://8.8.8.8/b", false));
        assert!(ok(&public, Purpose::Blob, "https://1e100.net/b", false));
        let mut allowed = public.clone();
        allowed.allow_private_targets = true;
        assert!(ok(&allowed, Purpose::Blob, "https://10.1.2.3/b", false));
        let local = Endpoint::new("http://127.0.0.1:5000");
        assert!(ok(
            &local,
            Purpose::Realm,
            "http://127.0.0.2:9000/token",
            false
        ));
        assert!(ok(&local, Purpose::Blob, "http://192.168.0.9/b", false));
        // An IP is never "the same domain" as another IP.
        assert!(!ok(
            &local,
            Purpose::Realm,
            "http://127.0.0.2:9000/token",
            true
        ));
    }

    #[test]
    fn redirects_by_purpose_and_scheme() {
        let ep = Endpoint::new("https://registry.example");
        assert!(ok(
            &ep,
            Purpose::Blob,
            "https://cdn.other.example/x?sig=1",
            false
        ));
        assert!(!ok(&ep, Purpose::Blob, "http://cdn.other.example/x", false));
        assert!(!ok(&ep, Purpose::Blob, "ftp://cdn.other.example/x", false));
        assert!(ok(
            &ep,
            Purpose::Api,
            "https://registry.example:443/v2/x",
            false
        ));
        assert!(!ok(
            &ep,
            Purpose::Api,
            "https://registry.example:8443/v2/x",
            false
        ));
        assert!(!ok(&ep, Purpose::Api, "https://cdn.other.example/x", false));
        let mut listed = ep.clone();
        listed.redirect_hosts = vec!["cdn.other.example".into()];
        assert!(ok(
            &listed,
            Purpose::Api,
            "https://cdn.other.example/x",
            false
        ));
        // http endpoints may be redirected to https.
        let plain = Endpoint::new("http://registry.example");
        assert!(ok(
            &plain,
            Purpose::Blob,
            "https://cdn.other.example/x",
            false
        ));
    }
}
