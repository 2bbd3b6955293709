//! Tests of key derivation: round trips, and hostile segments staying one safe segment.

use super::*;

#[test]
fn blob_and_manifest_keys() {
    let digest = Digest::sha256_of(b"");
    assert_eq!(
        blob(&digest),
        "blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(parse_blob(&blob(&digest)), Some(digest.clone()));
    assert!(manifest(&digest).starts_with("manifests/sha256/e3/e3b0"));
    assert!(media_type_sidecar(&manifest(&digest))
        .unwrap()
        .ends_with("b855.media-type"));
    for bad in [
        "blobs/sha256/e3/nothex",
        "blobs/sha256/ff/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "manifests/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "blobs/sha256/e3",
    ] {
        assert_eq!(parse_blob(bad), None, "{bad}");
    }
}

#[test]
fn tag_keys_round_trip() {
    let key = TagKey {
        upstream: Registry::new("localhost:5000").unwrap(),
        repository: Repository::new("library/alpine").unwrap(),
        tag: Tag::new("3.20").unwrap(),
    };
    let text = tag(&key);
    assert_eq!(text, "tags/localhost%3A5000/library/alpine/_tags/3.20");
    assert_eq!(parse_tag(&text), Some(key));
    assert_eq!(parse_tag("tags/x/_tags/latest"), None);
    // Its sidecar name would be tag `3.20.media-type`: no sidecar there.
    assert_eq!(media_type_sidecar(&text), None);
    // Non-canonical escapes are not keys this module derives.
    assert!(is_record(&text));
    assert!(!is_record(
        "tags/localhost%3A5000/library/%61lpine/_tags/3.20"
    ));
    assert_eq!(parse_tag("tags/docker.io/a/_tags/%zz"), None);
}

#[test]
fn hosted_and_upload_keys_round_trip() {
    let repository = Repository::new("local/app").unwrap();
    let digest = Digest::sha256_of(b"m");
    let tag_key = HostedKey::Tag(repository.clone(), Tag::new("v1").unwrap());
    let manifest_key = HostedKey::Manifest(repository.clone(), digest.clone());
    assert_eq!(hosted(&tag_key), "hosted/local/app/_tags/v1");
    assert_eq!(
        hosted(&manifest_key),
        format!("hosted/local/app/_manifests/sha256/{}", digest.hex())
    );
    for key in [tag_key, manifest_key] {
        assert_eq!(parse_hosted(&hosted(&key)), Some(key.clone()));
        assert!(is_record(&hosted(&key)));
    }
    let id: UploadId = "0123456789abcdef0123456789abcdef".parse().unwrap();
    assert_eq!(parse_upload(&upload(&id)), Some(id.clone()));
    assert!(is_record(&upload(&id)));
    assert!(!is_record("uploads/nothex"));
    let piece = upload_piece(&id, 12);
    assert_eq!(piece, format!("upload-pieces/{id}/12"));
    assert_eq!(parse_upload_piece(&piece), Some((id.clone(), 12)));
    assert!(is_record(&piece));
    assert!(!is_record(&format!("upload-pieces/{id}/012")));
    assert!(!is_record(&format!("upload-pieces/{id}/x")));
    assert!(!is_record(&format!("upload-pieces/{id}")));
    assert!(!is_record("hosted/local/app"));
    assert!(!is_record("hosted/local/app/_tags/v1/x"));
}

#[test]
fn referrer_keys_round_trip() {
    let repository = Repository::new("local/app/sub").unwrap();
    let subject = Digest::sha256_of(b"image");
    let manifest = Digest::sha256_of(b"signature");
    let key = HostedKey::Referrer {
        repository: repository.clone(),
        subject: subject.clone(),
        manifest: manifest.clone(),
    };
    let text = hosted(&key);
    assert_eq!(
        text,
        format!(
            "hosted/local/app/sub/_referrers/sha256/{}/sha256/{}",
            subject.hex(),
            manifest.hex()
        )
    );
    assert!(text.starts_with(&format!("{}/", hosted_referrers(&repository, &subject))));
    assert_eq!(parse_hosted(&text), Some(key));
    assert!(is_record(&text));
    // Not a referrer link: the subject directory, a key one segment too
    // long, a digest that is not hex, a non-canonical escape.
    assert!(!is_record(&hosted_referrers(&repository, &subject)));
    assert!(!is_record(&format!("{text}/x")));
    assert!(!is_record(&format!(
        "hosted/local/app/_referrers/sha256/{}/sha256/zz",
        subject.hex()
    )));
    assert!(!is_record(&format!(
        "hosted/local/%61pp/_referrers/sha256/{}/sha256/{}",
        subject.hex(),
        manifest.hex()
    )));
}

#[test]
fn cached_referrer_keys_round_trip() {
    let upstream = Registry::new("localhost:5000").unwrap();
    let repository = Repository::new("org/app").unwrap();
    let subject = Digest::sha256_of(b"image");
    let text = cached_referrers(&upstream, &repository, &subject);
    assert_eq!(
        text,
        format!(
            "referrers/localhost%3A5000/org/app/_referrers/sha256/{}",
            subject.hex()
        )
    );
    assert_eq!(
        parse_cached_referrers(&text),
        Some((upstream, repository, subject.clone()))
    );
    assert!(is_record(&text));
    assert!(!is_record(&format!("{text}/x")));
    assert!(!is_record("referrers/x/org/app/_referrers/sha256/zz"));
    assert!(!is_record(&format!(
        "referrers/x/%61pp/_referrers/sha256/{}",
        subject.hex()
    )));
}

#[test]
fn hostile_segments_stay_one_safe_segment() {
    for raw in [
        "..",
        ".",
        "",
        "../../etc/passwd",
        "/abs",
        "a/b",
        "_tags",
        "_staging",
        "%2e%2e",
        "a\0b",
        "ä",
        "..\\..",
    ] {
        let encoded = segment(raw);
        assert!(!encoded.is_empty(), "{raw:?}");
        assert!(
            !encoded.contains('/') && !encoded.contains('\\'),
            "{raw:?} → {encoded}"
        );
        assert!(encoded != "." && encoded != "..", "{raw:?} → {encoded}");
        assert!(
            !encoded.starts_with('_') && !encoded.starts_with('.'),
            "{raw:?}"
        );
        assert!(!encoded.contains('\0'), "{raw:?}");
        if !raw.is_empty() {
            assert_eq!(unsegment(&encoded).as_deref(), Some(raw), "{raw:?}");
        }
    }
}

#[test]
fn upload_marker_keys_round_trip() {
    let digest = Digest::sha256_of(b"layer");
    let key = upload_marker(&digest, "0123abcd");
    assert_eq!(
        key,
        format!(
            "leases/uploads/sha256/{}/{}/0123abcd",
            &digest.hex()[..2],
            digest.hex()
        )
    );
    assert!(key.starts_with(&format!("{}/", upload_markers(&digest))));
    assert_eq!(parse_upload_marker(&key), Some(digest.clone()));
    assert_eq!(parse_upload_marker(&upload_markers(&digest)), None);
    assert_eq!(parse_upload_marker(&format!("{key}/x")), None);
    assert_eq!(parse_upload_marker(&fill_lease(&digest)), None);
}
