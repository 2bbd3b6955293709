//! The doctor's end-to-end probe: the reserved repository
//! `oci-cache-doctor/probe`, under any upstream, is answered from memory with
//! one tiny image (linux/amd64, one empty layer) for every tag, and is never
//! fetched upstream. The tags are the doctor's nonces: each pull of one is
//! recorded, and `GET /doctor/probe/<nonce>` says whether the mirror saw it,
//! so a node's runtime that pulled the nonce reference proves it went through
//! the mirror. A bypassing runtime asks the registry itself, which has no
//! such image.
//!
//! The record holds nonces only (the last [`MAX_NONCES`]), so answering
//! `/doctor/probe/<nonce>` without credentials tells nothing but whether a
//! random name the asker chose was pulled.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http::{Response, StatusCode};
use oci_cache_core::digest::Digest;
use oci_cache_core::reference::ManifestRef;

use super::RequestInfo;
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::response::{blob_headers, json_response, set_digest, with_body};
use crate::routes::{Route, DOCTOR_PROBE_REPOSITORY as PROBE_REPOSITORY};

/// How many nonces are remembered.
pub(crate) const MAX_NONCES: usize = 256;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The nonces pulled lately, with what was asked for each.
#[derive(Debug, Default)]
pub(crate) struct ProbeLog {
    seen: Mutex<VecDeque<(String, Vec<String>)>>,
}

impl ProbeLog {
    fn record(&self, nonce: &str, what: String) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if let Some((_, requests)) = seen.iter_mut().find(|(n, _)| n == nonce) {
            if requests.len() < 16 {
                requests.push(what);
            }
            return;
        }
        if seen.len() == MAX_NONCES {
            seen.pop_front();
        }
        seen.push_back((nonce.to_owned(), vec![what]));
    }

    fn requests(&self, nonce: &str) -> Vec<String> {
        self.seen
            .lock()
            .ok()
            .and_then(|seen| {
                seen.iter()
                    .find(|(n, _)| n == nonce)
                    .map(|(_, r)| r.clone())
            })
            .unwrap_or_default()
    }
}

/// The probe image: manifest, config and layer, with their digests.
struct ProbeImage {
    manifest: (Bytes, Digest),
    config: (Bytes, Digest),
    layer: (Bytes, Digest),
}

/// CRC-32 (IEEE), for the gzip trailer.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a gzip member of one stored (uncompressed) deflate block;
/// `data` must be under 64 KiB.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // BFINAL, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data.get(..usize::from(len)).unwrap_or(data));
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn probe_image() -> &'static ProbeImage {
    static IMAGE: OnceLock<ProbeImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // An empty tar archive: two zero blocks.
        let tar = [0u8; 1024];
        let layer = Bytes::from(gzip_stored(&tar));
        let layer_digest = Digest::sha256_of(&layer);
        let config = Bytes::from(
            serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(&tar).to_string()]},
            })
            .to_string(),
        );
        let config_digest = Digest::sha256_of(&config);
        let manifest = Bytes::from(
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": config_digest.to_string(), "size": config.len()},
                "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest.to_string(), "size": layer.len()}],
            })
            .to_string(),
        );
        let manifest_digest = Digest::sha256_of(&manifest);
        ProbeImage {
            manifest: (manifest, manifest_digest),
            config: (config, config_digest),
            layer: (layer, layer_digest),
        }
    })
}

fn agent(info: &RequestInfo<'_>) -> String {
    info.headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// Answers a pull of the probe repository from memory.
pub(crate) fn answer_pull(
    route: &Route,
    info: &RequestInfo<'_>,
    log: &ProbeLog,
) -> Result<Response<Body>, OciError> {
    let image = probe_image();
    let head = info.method == http::Method::HEAD;
    let respond = |(bytes, digest): &(Bytes, Digest), content_type: &str| {
        let mut response = with_body(
            StatusCode::OK,
            content_type,
            if head { Bytes::new() } else { bytes.clone() },
        );
        blob_headers(response.headers_mut(), digest, bytes.len() as u64);
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        set_digest(response.headers_mut(), digest);
        response
    };
    match route {
        Route::Manifest { target, reference } => {
            match reference {
                ManifestRef::Tag(tag) => log.record(
                    tag.as_str(),
                    format!(
                        "{} manifest via {} by {}",
                        info.method,
                        target.upstream,
                        agent(info)
                    ),
                ),
                ManifestRef::Digest(d) if *d != image.manifest.1 => {
                    return Err(OciError::new(
                        StatusCode::NOT_FOUND,
                        OciErrorCode::ManifestUnknown,
                        "the doctor's probe repository holds one manifest",
                    ))
                }
                ManifestRef::Digest(_) => {}
            }
            Ok(respond(&image.manifest, MANIFEST_TYPE))
        }
        Route::Blob { digest, .. } if *digest == image.config.1 => {
            Ok(respond(&image.config, CONFIG_TYPE))
        }
        Route::Blob { digest, .. } if *digest == image.layer.1 => {
            Ok(respond(&image.layer, LAYER_TYPE))
        }
        Route::Tags { .. } => Ok(json_response(
            &serde_json::json!({"name": PROBE_REPOSITORY, "tags": []}),
        )),
        _ => Err(OciError::new(
            StatusCode::NOT_FOUND,
            OciErrorCode::BlobUnknown,
            "the doctor's probe repository holds one image",
        )),
    }
}

/// `GET /doctor/probe/<nonce>`: `{"nonce", "seen", "requests"}`.
pub(crate) fn seen(nonce: &str, log: &ProbeLog) -> Response<Body> {
    let requests = log.requests(nonce);
    json_response(&serde_json::json!({
        "nonce": nonce,
        "seen": !requests.is_empty(),
        "requests": requests,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_layer_is_a_gzip_of_an_empty_tar() {
        // `printf '' | gzip` style check: the standard CRC of "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let image = probe_image();
        let layer = &image.layer.0;
        assert_eq!(&layer[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(layer.len(), 10 + 5 + 1024 + 8);
    }

    #[test]
    fn the_log_keeps_the_last_nonces() {
        let log = ProbeLog::default();
        for n in 0..=MAX_NONCES {
            log.record(&format!("n{n}"), "GET".to_owned());
        }
        assert!(log.requests("n0").is_empty());
        assert_eq!(log.requests(&format!("n{MAX_NONCES}")), ["GET"]);
    }
}
