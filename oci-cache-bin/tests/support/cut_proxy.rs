//! A TCP proxy on 127.0.0.1 that cuts connections mid-transfer: while armed,
//! a connection is closed once more than `cut_after` response bytes have
//! passed through it ([`CutProxy::resetting`]: every connection, as a link
//! that drops each transfer after a fixed number of bytes does), and
//! [`CutProxy::throttled`] passes responses at a fixed rate shared by every
//! connection, as one slow link does. Counts the bytes it read from the
//! target. Std threads only; stops (and closes every connection) on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::relay::Pacer;

/// Most connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;

#[derive(Debug)]
pub(crate) struct CutProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    counters: Counters,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

/// What one relayed connection shares with the proxy.
#[derive(Debug, Clone)]
struct Counters {
    cuts_left: Arc<AtomicUsize>,
    cuts_done: Arc<AtomicUsize>,
    from_target: Arc<AtomicU64>,
    /// The link all responses share; `None`: unlimited.
    link: Option<Arc<Pacer>>,
}

impl Counters {
    /// Waits until the link has carried `n` more bytes at its rate.
    fn pace(&self, n: usize) {
        if let Some(link) = &self.link {
            link.pace(n);
        }
    }
}

impl CutProxy {
    /// A proxy to `target` (`127.0.0.1:PORT`) that cuts the next `cuts`
    /// connections carrying more than `cut_after` response bytes.
    pub(crate) fn start(target: &str, cut_after: u64, cuts: usize) -> CutProxy {
        CutProxy::start_with_rate(target, cut_after, cuts, None)
    }

    /// A proxy to `target` that never cuts and passes responses at
    /// `bytes_per_second`, shared by all connections.
    pub(crate) fn throttled(target: &str, bytes_per_second: u64) -> CutProxy {
        CutProxy::start_with_rate(target, u64::MAX, 0, Some(bytes_per_second))
    }

    fn start_with_rate(target: &str, cut_after: u64, cuts: usize, rate: Option<u64>) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Counters {
            cuts_left: Arc::new(AtomicUsize::new(cuts)),
            cuts_done: Arc::new(AtomicUsize::new(0)),
            from_target: Arc::new(AtomicU64::new(0)),
            link: rate.map(|r| Arc::new(Pacer::new(r))),
        };
        let open = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicUsize::new(0));
        let target = target.to_owned();
        let (s, c, o) = (stop.clone(), counters.clone(), open.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) if active.load(Ordering::SeqCst) < MAX_CONNECTIONS => client,
                    Ok(_) | Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut open = o.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(upstream.try_clone().unwrap());
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (c, active) = (c.clone(), active.clone());
                std::thread::spawn(move || {
                    relay(client, upstream, cut_after, &c);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CutProxy {
            port,
            stop,
            counters,
            open,
            accept: Some(accept),
        }
    }

    /// A proxy to `target` that cuts every connection once more than
    /// `cut_after` response bytes passed through it.
    pub(crate) fn resetting(target: &str, cut_after: u64) -> CutProxy {
        CutProxy::start(target, cut_after, usize::MAX)
    }

    /// Bytes read from the target so far (all responses, headers included,
    /// and what was read but dropped at a cut).
    pub(crate) fn bytes_from_target(&self) -> u64 {
        self.counters.from_target.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections cut so far.
    pub(crate) fn cuts(&self) -> usize {
        self.counters.cuts_done.load(Ordering::SeqCst)
    }

    /// Cuts the next `n` large transfers.
    pub(crate) fn arm(&self, n: usize) {
        self.counters.cuts_left.store(n, Ordering::SeqCst);
    }
}

/// Copies requests up and responses down; cuts both sides once the response
/// passes `cut_after` bytes while cuts are left.
fn relay(client: TcpStream, upstream: TcpStream, cut_after: u64, counters: &Counters) {
    let (mut c_read, mut u_write) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match u_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counters.from_target.fetch_add(n as u64, Ordering::SeqCst);
        counters.pace(n);
        let after = sent + n as u64;
        if after > cut_after
            && counters
                .cuts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                .is_ok()
        {
            let keep = (cut_after - sent) as usize;
            let _ = c_write.write_all(&buf[..keep]);
            counters.cuts_done.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent = after;
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = u_read.shutdown(Shutdown::Both);
    let _ = up.join();
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}
