//! A cold blob fetched over several ranged connections at once, from a
//! scripted upstream that records every request's `Range` and can cut one
//! segment's connection mid-body or send wrong bytes in one segment.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use http_body_util::{BodyExt, Empty};
use oci_cache_core::cache::{CacheOptions, FillSegments};
use oci_cache_core::digest::Digest;
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_http::{HyperUpstream, Mirror, OciService, ProxyConfig, UpstreamOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const MIB: usize = 1024 * 1024;

/// What the scripted upstream does to the first request whose range starts
/// in `starts`.
#[derive(Clone)]
enum Mischief {
    /// Sends `after` bytes of the part, then drops the connection.
    Cut { starts: Range<usize>, after: usize },
    /// Flips one byte of the part (every time it is asked for).
    Corrupt { starts: Range<usize> },
}

/// A registry that answers `Range: bytes=A-B` (and `A-`) with a `206` and
/// `ETag: "v1"`, a GET without a range with the whole blob; records each
/// request's range as `(A, B+1)`.
async fn ranged_origin(
    blob: Vec<u8>,
    mischief: Mischief,
) -> (
    String,
    Arc<Mutex<Vec<Range<usize>>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let blob = Arc::new(blob);
    let task = tokio::spawn(async move {
        let mischief_done = Arc::new(Mutex::new(false));
        while let Ok((mut stream, _)) = listener.accept().await {
            let (blob, seen, mischief) = (blob.clone(), seen.clone(), mischief.clone());
            let mischief_done = mischief_done.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let len = blob.len();
                let range = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| {
                        let (a, b) = r.trim().split_once('-')?;
                        let a: usize = a.parse().ok()?;
                        let b = if b.is_empty() {
                            len
                        } else {
                            b.parse::<usize>().ok()? + 1
                        };
                        Some(a..b.min(len))
                    });
                let (status, part) = match range.clone() {
                    Some(part) => (
                        format!(
                            "206 Partial Content\r\nContent-Range: bytes {}-{}/{len}",
                            part.start,
                            part.end - 1
                        ),
                        part,
                    ),
                    None => ("200 OK".to_owned(), 0..len),
                };
                seen.lock().unwrap().push(part.clone());
                let mut body = blob[part.clone()].to_vec();
                let mut send = body.len();
                match &mischief {
                    Mischief::Cut { starts, after } if starts.contains(&part.start) => {
                        let mut done = mischief_done.lock().unwrap();
                        if !*done {
                            *done = true;
                            send = *after;
                        }
                    }
                    Mischief::Corrupt { starts } if starts.contains(&part.start) => {
                        body[1000] ^= 0xff;
                    }
                    _ => {}
                }
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\
                     Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(&body[..send]).await;
                // Dropped: a cut part ends here, short of its length.
            });
        }
    });
    (url, asked, task)
}

/// A service over memory storage, fetching from `url` with blobs over
/// 1 MiB split over four connections.
fn segmented_service(url: &str) -> (OciService, Arc<MemoryStorage>) {
    let options = UpstreamOptions::default()
        .with_proxy(ProxyConfig::Direct)
        .with_read_timeout(Duration::from_secs(5));
    let upstream = HyperUpstream::new(Arc::new(mirrors(url)), options).unwrap();
    let storage = Arc::new(MemoryStorage::new());
    let segments = FillSegments::default()
        .with_connections(4)
        .with_min_size(MIB as u64);
    let svc = Mirror::builder()
        .upstreams(mirrors(url))
        .storage(storage.clone() as Arc<dyn Storage>)
        .upstream(Arc::new(upstream))
        .cache_options(CacheOptions::default().with_fill_segments(segments))
        .build()
        .unwrap()
        .service();
    (svc, storage)
}

/// 4 MiB and a bit: a 1 MiB first answer, then three parts of 1 MiB + 1000.
fn blob() -> Vec<u8> {
    (0..4 * MIB + 3000).map(|i| (i * 31 % 251) as u8).collect()
}

/// Sorted ranges, checked to cover `0..len` exactly once.
fn assert_tiles(mut ranges: Vec<Range<usize>>, len: usize) {
    ranges.sort_by_key(|r| r.start);
    let mut at = 0;
    for r in &ranges {
        assert_eq!(r.start, at, "a gap or an overlap at {at}: {ranges:?}");
        at = r.end;
    }
    assert_eq!(at, len, "{ranges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_blob_comes_over_several_ranged_connections_and_a_cut_part_is_fetched_again_alone() {
    let blob = blob();
    let digest = Digest::sha256_of(&blob);
    let cut_after = 100_000;
    let mischief = Mischief::Cut {
        starts: 2 * MIB..3 * MIB,
        after: cut_after,
    };
    let (url, asked, task) = ranged_origin(blob.clone(), mischief).await;
    let (svc, storage) = segmented_service(&url);

    let answer = get(&svc, &format!("/v2/library/alpine/blobs/{digest}")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), blob.len());
    assert!(answer.body == blob, "the client got other bytes");
    assert_eq!(Digest::sha256_of(&answer.body), digest);

    let asked = asked.lock().unwrap().clone();
    // The probe (the first MiB), three parts, and one re-request.
    assert_eq!(asked.len(), 5, "{asked:?}");
    assert_eq!(asked[0], 0..MIB, "the first GET asks for the first MiB");
    let cut = asked
        .iter()
        .position(|r| (2 * MIB..3 * MIB).contains(&r.start))
        .expect("the part that was cut");
    let again: Vec<_> = asked
        .iter()
        .enumerate()
        .filter(|(_, r)| r.end == asked[cut].end)
        .map(|(i, r)| (i, r.clone()))
        .collect();
    assert_eq!(
        again.len(),
        2,
        "the cut part and its one re-request: {asked:?}"
    );
    let rerequest = again[1].1.clone();
    assert_eq!(
        rerequest.start,
        asked[cut].start + cut_after,
        "the re-request starts where the part broke"
    );
    let mut once = asked.clone();
    once.remove(again[1].0);
    assert_tiles(once, blob.len());

    // Verified and stored whole: the next GET is a hit, without upstream.
    task.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stored = storage.blob_stat(&digest).await.unwrap();
    assert_eq!(stored.map(|s| s.size), Some(blob.len() as u64));
    let again = get(&svc, &format!("/v2/library/alpine/blobs/{digest}")).await;
    assert!(again.status == 200 && again.body == blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_in_one_part_end_the_client_stream_with_an_error_and_store_nothing() {
    let blob = blob();
    let digest = Digest::sha256_of(&blob);
    let mischief = Mischief::Corrupt {
        starts: 3 * MIB..4 * MIB,
    };
    let (url, asked, task) = ranged_origin(blob.clone(), mischief).await;
    let (svc, storage) = segmented_service(&url);

    let request = http::Request::builder()
        .method(Method::GET)
        .uri(format!("/v2/library/alpine/blobs/{digest}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = svc.handle(request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = 0usize;
    let ended = loop {
        match body.frame().await {
            Some(Ok(frame)) => got += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(_)) => break Err(()),
            None => break Ok(()),
        }
    };
    assert!(
        ended.is_err(),
        "the stream must end with an error, not cleanly"
    );
    assert!(
        got < blob.len(),
        "every byte was handed over before the verdict"
    );
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 4, "the probe and three parts: {asked:?}");
    assert_tiles(asked, blob.len());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        storage.blob_stat(&digest).await.unwrap().is_none(),
        "stored wrong bytes"
    );
    task.abort();
}
