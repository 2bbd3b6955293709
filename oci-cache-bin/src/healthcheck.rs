//! `oci-cache healthcheck`: asks a running mirror's `/healthz`, for container
//! `HEALTHCHECK`s in images without curl. Exit status 0 when it answers 200.

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
    /// an unspecified IP (0.0.0.0) asked on 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) address: Option<SocketAddr>,
}

pub(crate) fn run(args: &HealthcheckArgs, err: &mut impl Write) -> ExitCode {
    let address = match args.address {
        Some(address) => Ok(address),
        None => config::resolve(&ServeArgs {
            config: crate::cli::ConfigArgs {
                config: std::env::var_os("OCI_CACHE_CONFIG").map(Into::into),
                ..Default::default()
            },
            listen: std::env::var("OCI_CACHE_LISTEN").ok(),
            ..ServeArgs::default()
        })
        .map(|settings| settings.primary_listen()),
    };
    let outcome = address.and_then(|mut address| {
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        probe(address)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(err, "unhealthy: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /healthz` over plain HTTP/1.0; Ok on a 200 status line.
fn probe(address: SocketAddr) -> Result<(), String> {
    match http_get(&address.to_string(), "/healthz")? {
        (200, _, _) => Ok(()),
        (_, status_line, _) => Err(format!("{address}: GET /healthz answered {status_line:?}")),
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
    let mut stream = TcpStream::connect_timeout(&resolved, TIMEOUT).map_err(fail)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
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
