//! SIGHUP: reloading a running `serve`'s configuration.
//!
//! The configuration is read again from the same sources (flags and
//! environment as given at start, the config file and registry:2 files as
//! they are now) and validated exactly as at start. Then either all of it
//! that can change while serving takes effect at once, or nothing does:
//!
//! - reloaded: upstreams (endpoint chains, credentials, the default
//!   upstream), the upstream client's options, cache options other than the
//!   size cap and pins, client authentication (the htpasswd file is read
//!   again even when its path is unchanged), the pull policy, local
//!   prefixes and hosted limits, the TLS certificate and key (read again,
//!   also from unchanged paths);
//! - kept until a restart, with a warning naming them: listeners,
//!   `metrics_listen`, storage, `[limits]`, fleet settings, TLS on/off and
//!   the client CA, `max_size` and pins (the evictor holds them).
//!
//! The new mirror is built beside the running one
//! ([`MirrorBuilder::reload_of`]) and swapped in for new requests;
//! requests and fills under way finish on the old one.

use std::sync::Arc;

use oci_cache_core::mirror::MirrorConfig;
use oci_cache_http::tls_server::ServingCert;
use oci_cache_http::{Mirror, ReloadablePipeline};

use crate::cli::ServeArgs;
use crate::config::{self, Settings};
use crate::serve::MirrorParts;

/// What a reload needs: how the configuration was given, what runs now,
/// and the handles the new parts are swapped into.
pub(crate) struct Reloader {
    /// The command line (and environment) `serve` started with.
    pub(crate) args: ServeArgs,
    /// The settings in force.
    pub(crate) running: Settings,
    /// The mirror in force.
    pub(crate) mirror: Mirror,
    /// What the listeners serve.
    pub(crate) pipeline: ReloadablePipeline,
    /// The serving certificate, when serving TLS.
    pub(crate) serving_cert: Option<Arc<ServingCert>>,
    /// What every mirror is built with besides its settings.
    pub(crate) parts: MirrorParts,
}

impl Reloader {
    /// Reloads on every SIGHUP, until the process ends.
    pub(crate) fn spawn(mut self) {
        #[cfg(unix)]
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(hangups) => hangups,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off (restart to apply changes)");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                self.reload();
            }
        });
        #[cfg(not(unix))]
        drop(self);
    }

    /// Reads and applies the configuration once; on any error the running
    /// configuration stays whole, and the log says why.
    pub(crate) fn reload(&mut self) {
        tracing::info!("SIGHUP received: reloading the configuration");
        let mut next = match config::resolve(&self.args) {
            Ok(next) => next,
            Err(message) => return refused(&message),
        };
        for section in keep_restart_only(&self.running, &mut next) {
            tracing::warn!(
                section,
                "configuration reload: {section} changed, which needs a restart; \
                 the running {section} stays until then"
            );
        }
        let built = crate::serve::mirror_builder(&next, &self.parts)
            .reload_of(&self.mirror)
            .build();
        let mirror = match built {
            Ok(mirror) => mirror,
            Err(e) => return refused(&oci_cache_core::ErrorChain(&e).to_string()),
        };
        if let (Some(serving), Some(files)) = (&self.serving_cert, &next.tls) {
            if let Err(e) = serving.reload(files) {
                return refused(&e.to_string());
            }
        }
        self.pipeline.replace(mirror.pipeline());
        self.mirror = mirror;
        let changes = changed_sections(&self.running, &next);
        if changes.is_empty() {
            tracing::info!("configuration reloaded: no setting changed (htpasswd and certificate files read again)");
        }
        for (section, detail) in changes {
            tracing::info!(
                section,
                "configuration reloaded: {section} changed: {detail}"
            );
        }
        self.running = next;
    }
}

/// Logs a refused reload.
fn refused(why: &str) {
    tracing::error!(
        error = %why,
        "configuration reload refused; still serving the previous configuration: {why}"
    );
}

/// Puts the running value back into `next` for every part that cannot
/// change while serving, and names those that differed.
fn keep_restart_only(running: &Settings, next: &mut Settings) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut keep = |section: &'static str, differs: bool| {
        if differs {
            kept.push(section);
        }
    };
    keep("listeners", running.listeners != next.listeners);
    next.listeners.clone_from(&running.listeners);
    keep(
        "metrics_listen",
        running.metrics_listen != next.metrics_listen,
    );
    next.metrics_listen = running.metrics_listen;
    keep("storage", running.storage != next.storage);
    next.storage = running.storage.clone();
    keep("limits", running.server != next.server);
    next.server = running.server.clone();
    keep(
        "fleet",
        format!("{:?}", running.fleet) != format!("{:?}", next.fleet),
    );
    next.fleet.clone_from(&running.fleet);
    let (cap, pins) = (&running.cache.max_size, &running.cache.pin);
    keep(
        "cache.max_size",
        *cap != next.cache.max_size || format!("{pins:?}") != format!("{:?}", next.cache.pin),
    );
    next.cache.max_size = *cap;
    next.cache.pin.clone_from(pins);
    match (&running.tls, &mut next.tls) {
        (Some(running), Some(next)) => {
            keep("tls.client_ca", running.client_ca != next.client_ca);
            next.client_ca.clone_from(&running.client_ca);
        }
        (None, None) => {}
        (running, next) => {
            keep("tls (on or off)", true);
            next.clone_from(running);
        }
    }
    kept
}

/// The reloadable sections that differ, each with a short description.
/// Option types without equality are compared in their `Debug` form: plain
/// data whose secrets (none here) would be redacted.
fn changed_sections(running: &Settings, next: &Settings) -> Vec<(&'static str, String)> {
    let mut changes = Vec::new();
    if running.mirrors != next.mirrors {
        changes.push((
            "upstreams",
            upstream_changes(&running.mirrors, &next.mirrors),
        ));
    }
    let debug_differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if debug_differs(&running.upstream_client, &next.upstream_client) {
        changes.push(("upstream_client", "new options in force".to_owned()));
    }
    if debug_differs(&running.cache, &next.cache) {
        changes.push(("cache", "new options in force".to_owned()));
    }
    if debug_differs(&running.client_auth, &next.client_auth) {
        let detail = match &next.client_auth {
            Some(auth) => format!("htpasswd {}", auth.htpasswd.display()),
            None => "off".to_owned(),
        };
        changes.push(("auth", detail));
    }
    if running.policy != next.policy {
        changes.push(("policy", "new rules in force".to_owned()));
    }
    if running.local_prefixes != next.local_prefixes || debug_differs(&running.hosted, &next.hosted)
    {
        changes.push((
            "hosted",
            format!("local prefixes {:?}", next.local_prefixes),
        ));
    }
    if let (Some(was), Some(now)) = (&running.tls, &next.tls) {
        if (&was.cert, &was.key) != (&now.cert, &now.key) {
            changes.push(("tls", format!("certificate {}", now.cert.display())));
        }
    }
    changes
}

/// `added a, b; removed c; changed d; default upstream e`.
fn upstream_changes(was: &MirrorConfig, now: &MirrorConfig) -> String {
    let names = |config: &MirrorConfig, other: &MirrorConfig, same: bool| -> Vec<String> {
        config
            .upstreams
            .iter()
            .filter(|u| {
                let twin = other.upstreams.iter().find(|o| o.name == u.name);
                match (twin, same) {
                    (None, false) => true,
                    (Some(twin), true) => twin != *u,
                    _ => false,
                }
            })
            .map(|u| u.name.to_string())
            .collect()
    };
    let mut parts = Vec::new();
    for (label, list) in [
        ("added", names(now, was, false)),
        ("removed", names(was, now, false)),
        ("changed", names(now, was, true)),
    ] {
        if !list.is_empty() {
            parts.push(format!("{label} {}", list.join(", ")));
        }
    }
    if was.default_upstream != now.default_upstream {
        parts.push(format!("default upstream {}", now.default_upstream));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::cli::ServeArgs;
    use crate::config::resolve;

    fn settings(listen: &str, upstream: &str, tag_ttl: &str) -> crate::config::Settings {
        resolve(&ServeArgs {
            listen: Some(listen.to_owned()),
            tag_ttl: Some(tag_ttl.to_owned()),
            config: crate::cli::ConfigArgs {
                upstreams: vec![format!("reload.test={upstream}")],
                default_upstream: Some("reload.test".to_owned()),
                ..Default::default()
            },
            ..ServeArgs::default()
        })
        .unwrap()
    }

    /// A new listening address is named as needing a restart and the
    /// running one stays; the reloadable sections are reported, one each.
    #[test]
    fn a_listener_change_waits_for_a_restart_and_the_rest_is_named() {
        let running = settings("127.0.0.1:5000", "http://127.0.0.1:1", "5m");
        let mut next = settings("127.0.0.1:5001", "http://127.0.0.1:2", "1m");
        assert_eq!(super::keep_restart_only(&running, &mut next), ["listeners"]);
        assert_eq!(next.listeners, running.listeners);
        let changed: Vec<_> = super::changed_sections(&running, &next)
            .into_iter()
            .map(|(section, detail)| format!("{section}: {detail}"))
            .collect();
        assert_eq!(
            changed,
            [
                "upstreams: changed reload.test",
                "cache: new options in force"
            ]
        );
        let same = settings("127.0.0.1:5000", "http://127.0.0.1:1", "5m");
        let mut again = settings("127.0.0.1:5000", "http://127.0.0.1:1", "5m");
        assert!(super::keep_restart_only(&same, &mut again).is_empty());
        assert!(super::changed_sections(&same, &again).is_empty());
    }
}
