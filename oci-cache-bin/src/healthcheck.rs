//! `oci-cache healthcheck`: asks a running mirror's `/healthz`, for container
//! `HEALTHCHECK`s in images without curl. Exit status 0 when it answers 200.
//!
//! It reads the same configuration as `serve` (config file, `OCI_CACHE_*`
//! and `REGISTRY_*` variables), so it asks where `serve` listens, and over
//! TLS when `serve` serves TLS: it then trusts exactly the certificate in
//! `serve`'s certificate file (the leaf it serves), whatever CA issued it
//! and whatever names it holds, since the probe goes to 127.0.0.1. When
//! `serve` requires client certificates it has none to offer, so it asks the
//! metrics listener's `/healthz` instead (plain HTTP, no certificate).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::cli::ServeArgs;
use crate::config;

/// How long to wait for the mirror; Docker's own health timeout is longer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// `oci-cache healthcheck [--address HOST:PORT]`.
#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    /// The mirror's address. Default: where `serve` would listen under the
    /// same environment (`OCI_CACHE_LISTEN`, `REGISTRY_HTTP_ADDR`, …), with
    /// an unspecified IP (0.0.0.0) asked on 127.0.0.1. When `serve`
    /// requires client certificates (`tls.client_ca`), the default is the
    /// metrics listener (`metrics_listen`), asked over plain HTTP.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) address: Option<SocketAddr>,
}

pub(crate) fn run(args: &HealthcheckArgs, err: &mut impl Write) -> ExitCode {
    let outcome = serve_settings().and_then(|settings| {
        let main = || on_loopback(args.address.unwrap_or_else(|| settings.primary_listen()));
        match &settings.tls {
            // A listener that demands client certificates refuses this probe
            // in the handshake; the metrics listener's `/healthz` needs none.
            Some(files) if files.client_ca.is_some() => {
                let address = args
                    .address
                    .or(settings.metrics_listen)
                    .ok_or_else(|| NO_CERTIFICATE_TO_OFFER.to_owned())?;
                probe(on_loopback(address))
            }
            Some(files) => probe_tls(main(), &files.cert),
            None => probe(main()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(err, "unhealthy: {message}");
            ExitCode::FAILURE
        }
    }
}

const NO_CERTIFICATE_TO_OFFER: &str = "serve requires client certificates (tls.client_ca) and \
     healthcheck has none to offer: set metrics_listen (e.g. 127.0.0.1:9090; its /healthz needs \
     no certificate) and healthcheck asks there, or pass --address with that listener";

/// `address`, with an unspecified IP (0.0.0.0, ::) asked on 127.0.0.1.
fn on_loopback(mut address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    address
}

/// The settings `serve` would run with in this environment: its flags at
/// their defaults, read from the same `OCI_CACHE_*` variables.
fn serve_settings() -> Result<config::Settings, String> {
    use clap::{Args as _, FromArgMatches as _};
    let command = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .map_err(|e| format!("the OCI_CACHE_* environment: {e}"))?;
    let args = ServeArgs::from_arg_matches(&matches)
        .map_err(|e| format!("the OCI_CACHE_* environment: {e}"))?;
    config::resolve(&args)
}

/// `GET /healthz` over plain HTTP/1.0; Ok on a 200 status line.
fn probe(address: SocketAddr) -> Result<(), String> {
    healthy(address, http_get(&address.to_string(), "/healthz")?)
}

/// `GET /healthz` over TLS, trusting the leaf certificate of `cert_file`.
fn probe_tls(address: SocketAddr, cert_file: &std::path::Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{address}: {e}");
    let pinned =
        oci_cache_http::tls_server::client_trusting(cert_file).map_err(|e| e.to_string())?;
    let server_name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
    let mut tls = rustls::ClientConnection::new(pinned, server_name)
        .map_err(|e| format!("{address}: {e}"))?;
    let mut socket = TcpStream::connect_timeout(&address, TIMEOUT).map_err(fail)?;
    socket.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    socket.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    let stream = rustls::Stream::new(&mut tls, &mut socket);
    let host = address.ip().to_string();
    healthy(
        address,
        exchange(stream, &address.to_string(), &host, "/healthz")?,
    )
}

/// Ok for a 200 answer.
fn healthy(
    address: SocketAddr,
    (code, status_line, _): (u16, String, String),
) -> Result<(), String> {
    match code {
        200 => Ok(()),
        _ => Err(format!("{address}: GET /healthz answered {status_line:?}")),
    }
}

/// `GET path` over plain HTTP/1.0 to `address` (`host:port`): the status
/// code, the status line and the body (up to 64 KiB). Shared with `doctor`,
/// which asks a mirror's `/v2/` and its probe record.
pub(crate) fn http_get(address: &str, path: &str) -> Result<(u16, String, String), String> {
    use std::net::ToSocketAddrs as _;
    let fail = |e: std::io::Error| format!("{address}: {e}");
    let resolved = address
        .to_socket_addrs()
        .map_err(fail)?
        .next()
        .ok_or_else(|| format!("{address}: the name resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&resolved, TIMEOUT).map_err(fail)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    exchange(stream, address, host, path)
}

/// Sends `GET path` (HTTP/1.0) on `stream` and reads the answer.
fn exchange(
    mut stream: impl Read + Write,
    address: &str,
    host: &str,
    path: &str,
) -> Result<(u16, String, String), String> {
    let fail = |e: std::io::Error| format!("{address}: {e}");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(fail)?;
    // HTTP/1.0: the server closes the connection after the response.
    let mut response = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default().to_owned();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    if response.is_empty() {
        return Err(format!(
            "{address}: the connection closed without an answer"
        ));
    }
    Ok((code, status_line, body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_200_is_healthy_anything_else_is_not() {
        for (answer, healthy) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..], true),
            (&b"HTTP/1.1 503 Service Unavailable\r\n\r\n"[..], false),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut request = [0u8; 64];
                let n = conn.read(&mut request).unwrap();
                conn.write_all(answer).unwrap();
                String::from_utf8_lossy(&request[..n]).into_owned()
            });
            assert_eq!(probe(address).is_ok(), healthy);
            assert!(server.join().unwrap().starts_with("GET /healthz "));
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(closed).unwrap_err().contains(&closed.to_string()));
    }
}
