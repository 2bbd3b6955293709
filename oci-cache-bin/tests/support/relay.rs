//! A WAN between a client and an origin, as a TCP relay on 127.0.0.1: every
//! byte waits a one-way delay in each direction (half the added round
//! trip), and the origin→client bytes pass at a limited rate, either one
//! rate shared by all connections (one link, [`Shaping::Shared`]) or one
//! rate per connection ([`Shaping::PerConnection`], as CDNs in front of
//! registries throttle each connection). A relay instead of `tc netem`,
//! since network namespaces are not available in every CI container.
//!
//! Std threads only: per connection, one reader and one writer per
//! direction, with a channel between them carrying each chunk and the
//! instant it may leave (so the delay does not slow the rate down). Stops
//! on drop: closes every connection and joins every thread it started.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes per read: at 8 MiB/s, 2 ms of the link.
const CHUNK: usize = 16 * 1024;
/// Chunks read but not yet passed on, per direction (at most 1 MiB).
const IN_FLIGHT: usize = 64;

/// How the origin→client rate is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shaping {
    /// One link: all connections together get this many bytes per second.
    Shared(u64),
    /// Each connection gets this many bytes per second of its own.
    PerConnection(u64),
}

/// Paces bytes at a fixed rate: when the link has sent all handed to it.
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_second: u64,
    free_at: Mutex<Instant>,
}

impl Pacer {
    /// A link of `bytes_per_second`, idle now.
    pub(crate) fn new(bytes_per_second: u64) -> Pacer {
        Pacer {
            bytes_per_second,
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Waits until the link has carried `n` more bytes at its rate.
    pub(crate) fn pace(&self, n: usize) {
        let done = {
            let mut free_at = self.free_at.lock().unwrap();
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
            *free_at
        };
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
    }
}

/// The relay; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct WanRelay {
    port: u16,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// Both sockets of every open connection, to close them on drop.
    open: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    from_target: AtomicU64,
}

impl WanRelay {
    /// A relay to `target` (`127.0.0.1:PORT`) adding `round_trip` (half each
    /// way) and limiting responses as `shaping` says.
    pub(crate) fn start(target: &str, round_trip: Duration, shaping: Shaping) -> WanRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            open: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            from_target: AtomicU64::new(0),
        });
        let one_way = round_trip / 2;
        let (rate, link) = match shaping {
            Shaping::Shared(rate) => (rate, Some(Arc::new(Pacer::new(rate)))),
            Shaping::PerConnection(rate) => (rate, None),
        };
        let target = target.to_owned();
        let (s, sh) = (Arc::clone(&stop), Arc::clone(&shared));
        let accept = std::thread::spawn(move || {
            let mut next_id = 0u64;
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let _ = client.set_nodelay(true);
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = upstream.set_nodelay(true);
                let id = next_id;
                next_id += 1;
                sh.open.lock().unwrap().push((
                    id,
                    client.try_clone().unwrap(),
                    upstream.try_clone().unwrap(),
                ));
                let pacer = link.clone().unwrap_or_else(|| Arc::new(Pacer::new(rate)));
                let (up_r, up_w) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let mut directions = Vec::from(pipe(up_r, up_w, one_way, None, None));
                let counter = Some(Arc::clone(&sh));
                directions.extend(pipe(upstream, client, one_way, Some(pacer), counter));
                // The connection's entry goes once both of its directions are done.
                let sh2 = Arc::clone(&sh);
                let joiner = std::thread::spawn(move || {
                    for t in directions {
                        let _ = t.join();
                    }
                    sh2.open.lock().unwrap().retain(|(i, _, _)| *i != id);
                });
                let mut threads = sh.threads.lock().unwrap();
                threads.retain(|t| !t.is_finished());
                threads.push(joiner);
            }
        });
        WanRelay {
            port,
            stop,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes read from the target so far (responses, headers included).
    pub(crate) fn bytes_from_target(&self) -> u64 {
        self.shared.from_target.load(Ordering::SeqCst)
    }
}

/// One direction of a connection: a reader that stamps each chunk with the
/// instant it may leave, and a writer that waits for it (and the pacer).
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    pacer: Option<Arc<Pacer>>,
    counter: Option<Arc<Shared>>,
) -> [JoinHandle<()>; 2] {
    // Bounded, so a slow link pushes back on the sender as TCP would.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(c) = &counter {
                c.from_target.fetch_add(n as u64, Ordering::SeqCst);
            }
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    let writer = std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if let Some(p) = &pacer {
                p.pace(bytes.len());
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        // The other side sees the end (or the failure) as a relayed close.
        let _ = to.shutdown(Shutdown::Write);
    });
    [reader, writer]
}

impl Drop for WanRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, a, b) in self.shared.open.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.shared.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on 127.0.0.1 that sends `len` pseudo-random bytes to each
    /// of its first `connections` connections and closes them; the bytes.
    fn send(len: usize, connections: usize) -> (String, Vec<u8>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let data: Vec<u8> = (0..len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let sent = data.clone();
        let server = std::thread::spawn(move || {
            for _ in 0..connections {
                let (mut conn, _) = listener.accept().unwrap();
                conn.write_all(&sent).unwrap();
            }
        });
        (host, data, server)
    }

    #[test]
    fn relayed_bytes_are_exact_and_no_faster_than_the_rate_of_one_connection() {
        const LEN: usize = 1024 * 1024;
        let (origin, data, server) = send(LEN, 1);
        // 4 MiB/s per connection: 1 MiB takes at least 250 ms.
        let relay = WanRelay::start(
            &origin,
            Duration::from_millis(20),
            Shaping::PerConnection(4 * 1024 * 1024),
        );
        let start = Instant::now();
        let mut got = Vec::new();
        TcpStream::connect(relay.host())
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        let took = start.elapsed();
        server.join().unwrap();
        assert_eq!(got.len(), LEN);
        assert!(got == data, "the relay changed bytes");
        assert!(
            took >= Duration::from_millis(250 + 10),
            "1 MiB at 4 MiB/s after 10 ms came in {took:?}"
        );
        assert_eq!(relay.bytes_from_target(), LEN as u64);
        drop(relay);
    }

    #[test]
    fn a_shared_link_limits_all_connections_together() {
        const LEN: usize = 512 * 1024;
        let (origin, data, server) = send(LEN, 2);
        // 4 MiB/s for both: 2 × 512 KiB take at least 250 ms.
        let relay = WanRelay::start(&origin, Duration::ZERO, Shaping::Shared(4 * 1024 * 1024));
        let start = Instant::now();
        let host = relay.host();
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let pulls: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut got = Vec::new();
                        let mut conn = TcpStream::connect(&host).unwrap();
                        conn.read_to_end(&mut got).unwrap();
                        got
                    })
                })
                .collect();
            pulls.into_iter().map(|p| p.join().unwrap()).collect()
        });
        let took = start.elapsed();
        server.join().unwrap();
        assert!(got.iter().all(|g| *g == data), "the relay changed bytes");
        assert!(
            took >= Duration::from_millis(250),
            "2 × 512 KiB over one 4 MiB/s link came in {took:?}"
        );
    }
}
