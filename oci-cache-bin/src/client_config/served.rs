//! The client configuration a running mirror serves at
//! `GET /client-config/KIND` ([`ServedClientConfig`], installed by `serve`),
//! and `client-config KIND --from URL`, which fetches it.
//!
//! The mirror renders with what it really runs: its upstreams, and as the
//! default upstream the one of the listener the request arrived on (so the
//! Docker daemon's configuration, which names no registry, is only given
//! out on a listener whose default is docker.io). No option of the CLI
//! applies: the served form is the plain `client-config KIND --mirror URL`.

use clap::ValueEnum as _;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_http::{ClientConfigRefusal, ClientConfigRenderer, ClientConfigRequest};

use super::{printed, render, select, ClientConfigArgs, ClientKind, MirrorUrl, Request};

/// `client-config` for the mirror's own configuration.
#[derive(Debug)]
pub(crate) struct ServedClientConfig {
    mirrors: MirrorConfig,
    tls: bool,
}

impl ServedClientConfig {
    /// Renders for `mirrors`; `tls`: the listeners speak https.
    pub(crate) fn new(mirrors: MirrorConfig, tls: bool) -> ServedClientConfig {
        ServedClientConfig { mirrors, tls }
    }
}

/// The kinds' names, as in the URL and on the command line.
fn kind_names() -> Vec<String> {
    ClientKind::value_variants()
        .iter()
        .filter_map(|k| k.to_possible_value())
        .map(|v| v.get_name().to_owned())
        .collect()
}

impl ClientConfigRenderer for ServedClientConfig {
    fn render(&self, request: &ClientConfigRequest<'_>) -> Result<String, ClientConfigRefusal> {
        let kind = ClientKind::from_str(request.kind, false).map_err(|_| {
            ClientConfigRefusal::UnknownKind(format!(
                "no client kind {:?}; ask for one of {}",
                request.kind,
                kind_names().join(", ")
            ))
        })?;
        let mirror = MirrorUrl::parse(request.mirror).map_err(ClientConfigRefusal::Unusable)?;
        let default_upstream = request
            .listener_upstream
            .map_or(self.mirrors.default_upstream.as_str(), |u| u.as_str());
        let upstreams = select(&self.mirrors, &[]).map_err(ClientConfigRefusal::Unusable)?;
        let request = Request::plain(mirror, upstreams, default_upstream);
        render::render(kind, &request)
            .map(|files| printed(&files))
            .map_err(ClientConfigRefusal::Unusable)
    }

    fn serves_tls(&self) -> bool {
        self.tls
    }
}

/// `client-config KIND --from URL [--mirror URL]`: what the mirror at URL
/// serves. Plain HTTP without credentials only (the mirror's client
/// authentication, when on, protects this path).
pub(super) fn fetch(args: &ClientConfigArgs, from: &str) -> Result<String, String> {
    let only_mirror = args.output.is_none()
        && !args.path_prefix
        && args.form.is_none()
        && args.local_registry.is_none()
        && args.ca_file.is_none()
        && args.username.is_none()
        && !args.skip_fallback
        && args.workers == 0
        && args.merge.is_none();
    if !only_mirror {
        return Err("--from takes --mirror only: the mirror serves the plain form; for other options run client-config with the mirror's configuration (--config)".to_owned());
    }
    let from = MirrorUrl::parse(from).map_err(|e| e.replace("--mirror", "--from"))?;
    if from.is_https() {
        return Err(format!(
            "--from {}: fetching over https is not supported here; run `curl {}/client-config/KIND`",
            from.base(),
            from.base()
        ));
    }
    let mirror = match &args.mirror {
        Some(text) => MirrorUrl::parse(text)?,
        None => from.clone(),
    };
    let kind = args
        .kind
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    // MirrorUrl admits no space, `?`, `#` or `/`; `&`, `%` and `+` are
    // encoded so the value reads back as given.
    let value: String = mirror
        .base()
        .chars()
        .map(|c| match c {
            '&' | '%' | '+' | '=' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect();
    let path = format!("/client-config/{kind}?mirror={value}");
    let (code, line, body) = crate::healthcheck::http_get(from.authority(), &path)?;
    match code {
        200 => Ok(body),
        401 => Err(format!(
            "{} requires credentials (client authentication): run `curl -u USER {}{path}`, or client-config with its configuration (--config)",
            from.base(),
            from.base()
        )),
        _ => Err(format!(
            "{}{path} answered {line:?}: {}",
            from.base(),
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
                .unwrap_or(body)
        )),
    }
}
