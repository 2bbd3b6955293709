//! Blob upload sessions: start, append chunks, report progress, finish with
//! a verified write, cancel, and clean up abandoned ones.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{Hosted, UploadId};
use crate::digest::Digest;
use crate::reference::Repository;
use crate::storage::{ByteStream, Record, RecordKey, RecordPrefix, RecordWrite, Storage};
use crate::{Error, PushErrorKind, Result};

/// Where an upload session stands, as `GET` on it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    /// The session's id.
    pub id: UploadId,
    /// The repository it was started in.
    pub repository: Repository,
    /// Bytes received and stored so far.
    pub offset: u64,
}

/// The session record `uploads/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    repository: String,
    /// Seconds since the epoch of the last change; abandoned sessions are found by it.
    updated: u64,
    pieces: Vec<Piece>,
}

/// One stored piece of the upload: a blob under its own digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Piece {
    digest: Digest,
    size: u64,
    /// The blob existed before this upload stored it (another upload's piece,
    /// a pushed or cached blob): it is not this session's to remove.
    #[serde(default)]
    shared: bool,
}

impl Session {
    fn offset(&self) -> u64 {
        self.pieces.iter().map(|p| p.size).sum()
    }
}

/// Marks an upload as being written by one request of this process; a
/// second request for it is refused until the first ends, so two chunks
/// can never both read the session, append, and overwrite each other.
struct Writing {
    busy: Arc<Mutex<HashSet<UploadId>>>,
    id: UploadId,
}

impl Writing {
    fn claim(busy: &Arc<Mutex<HashSet<UploadId>>>, id: &UploadId) -> Result<Writing> {
        let claimed = busy
            .lock()
            .map(|mut set| set.insert(id.clone()))
            .unwrap_or(false);
        if claimed {
            Ok(Writing {
                busy: Arc::clone(busy),
                id: id.clone(),
            })
        } else {
            Err(Error::push(
                PushErrorKind::UploadInvalid,
                format!("another request is writing upload {id}; wait for it, then resume"),
            ))
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Ok(mut set) = self.busy.lock() {
            set.remove(&self.id);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unknown(id: &UploadId) -> Error {
    Error::push(
        PushErrorKind::UploadUnknown,
        format!("upload {id} is unknown (finished, cancelled or expired); start a new one"),
    )
}

/// Every blob an open upload session stores its bytes in, sorted: eviction
/// must not remove them while the session lives (they are removed with it,
/// or by [`Hosted::cleanup_abandoned`]).
pub async fn upload_pieces<S: Storage + ?Sized>(storage: &S) -> Result<Vec<Digest>> {
    let keys: Vec<RecordKey> = storage
        .record_list(&RecordPrefix::uploads())
        .try_collect()
        .await?;
    let mut pieces = std::collections::BTreeSet::new();
    for key in keys {
        let Some(record) = storage.record_get(&key).await? else {
            continue;
        };
        // A record that does not parse is skipped here; cleanup reports it.
        if let Ok(session) = serde_json::from_slice::<Session>(&record.bytes) {
            pieces.extend(session.pieces.into_iter().map(|p| p.digest));
        }
    }
    Ok(pieces.into_iter().collect())
}

impl<S: Storage + ?Sized> Hosted<S> {
    /// Starts an upload session in `repository`.
    pub async fn start_upload(&self, repository: &Repository) -> Result<UploadState> {
        self.maybe_cleanup();
        let id = UploadId::random();
        let session = Session {
            repository: repository.to_string(),
            updated: now_secs(),
            pieces: Vec::new(),
        };
        self.save(&id, &session, RecordWrite::Create).await?;
        tracing::debug!(upload = %id, %repository, "upload started");
        Ok(UploadState {
            id,
            repository: repository.clone(),
            offset: 0,
        })
    }

    /// The state of an upload of `repository`.
    pub async fn upload(&self, repository: &Repository, id: &UploadId) -> Result<UploadState> {
        let session = self.load(repository, id).await?;
        Ok(UploadState {
            id: id.clone(),
            repository: repository.clone(),
            offset: session.offset(),
        })
    }

    /// Appends `data` to an upload. `start`, when the client sent a
    /// `Content-Range`, must be the current end of the upload; `end`
    /// (inclusive), when given, must be where `data` ends. Bytes are stored
    /// piece by piece as they arrive, so a body that breaks off keeps what
    /// was stored and the client resumes from [`UploadState::offset`].
    pub async fn append(
        &self,
        repository: &Repository,
        id: &UploadId,
        range: Option<(u64, u64)>,
        data: ByteStream,
    ) -> Result<UploadState> {
        let _writing = Writing::claim(&self.busy, id)?;
        self.append_claimed(repository, id, range, data).await
    }

    async fn append_claimed(
        &self,
        repository: &Repository,
        id: &UploadId,
        range: Option<(u64, u64)>,
        mut data: ByteStream,
    ) -> Result<UploadState> {
        let mut session = self.load(repository, id).await?;
        let offset = session.offset();
        if let Some((start, end)) = range {
            if start != offset || end < start {
                return Err(Error::push(
                    PushErrorKind::OutOfOrder { offset },
                    format!(
                        "chunk {start}-{end} does not follow the {offset} bytes received; \
                         send the range starting at {offset}"
                    ),
                ));
            }
        }
        let piece_size = self.options.piece_size;
        let mut buffer = BytesMut::new();
        let mut received = 0_u64;
        let mut failure = None;
        loop {
            match data.next().await {
                Some(Ok(chunk)) => {
                    received = received.saturating_add(chunk.len() as u64);
                    self.check_blob_size(offset.saturating_add(received))?;
                    buffer.extend_from_slice(&chunk);
                    while buffer.len() >= piece_size {
                        let piece = buffer.split_to(piece_size).freeze();
                        self.store_piece(id, &mut session, piece).await?;
                    }
                }
                Some(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                None => break,
            }
        }
        if failure.is_none() && !buffer.is_empty() {
            self.store_piece(id, &mut session, buffer.freeze()).await?;
        }
        if let Some(e) = failure {
            // What was stored stays: the client resumes from the offset.
            return Err(e);
        }
        if let Some((start, end)) = range {
            let expected = end.saturating_sub(start).saturating_add(1);
            if received != expected {
                tracing::debug!(upload = %id, received, expected, "chunk length differs from its Content-Range");
            }
        }
        Ok(UploadState {
            id: id.clone(),
            repository: repository.clone(),
            offset: session.offset(),
        })
    }

    /// Finishes an upload: appends `data` (the `PUT` body, possibly empty),
    /// then writes the blob `digest` from the stored pieces through the
    /// verified write. On a digest or size mismatch nothing becomes visible
    /// and the session is removed. Returns the blob's size.
    pub async fn finish(
        &self,
        repository: &Repository,
        id: &UploadId,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        let _writing = Writing::claim(&self.busy, id)?;
        if let Some(data) = data {
            self.append_claimed(repository, id, None, data).await?;
        }
        let session = self.load(repository, id).await?;
        let size = session.offset();
        let result = match session.pieces.as_slice() {
            // One piece that is the blob itself was verified when it was stored.
            [only] if &only.digest == digest => Ok(only.size),
            pieces => {
                let storage = Arc::clone(&self.storage);
                let digests: Vec<Digest> = pieces.iter().map(|p| p.digest.clone()).collect();
                let stream = futures::stream::iter(digests)
                    .then(move |piece| {
                        let storage = Arc::clone(&storage);
                        async move {
                            let read = storage.blob_read(&piece, None).await.map_err(|e| {
                                if e.is_not_found() {
                                    Error::push(
                                        PushErrorKind::UploadInvalid,
                                        format!("a stored piece ({piece}) of the upload is gone; upload the blob again"),
                                    )
                                } else {
                                    e
                                }
                            })?;
                            Ok::<_, Error>(read.stream)
                        }
                    })
                    .try_flatten()
                    .boxed();
                self.storage.blob_write(digest, Some(size), stream).await
            }
        };
        let result = result.map_err(|e| match e {
            Error::DigestMismatch { actual, .. } => Error::push(
                PushErrorKind::DigestInvalid,
                format!("the uploaded content hashes to {actual}, not {digest}"),
            ),
            Error::SizeMismatch { .. } => Error::push(
                PushErrorKind::DigestInvalid,
                format!("the uploaded content does not match {digest}"),
            ),
            other => other,
        });
        let keep = match &result {
            Ok(_) => Some(digest),
            Err(Error::Push { .. }) => None,
            // A storage failure: leave the session so the client may retry the PUT.
            Err(_) => return result,
        };
        self.remove(id, &session, keep).await;
        if result.is_ok() {
            // A blob that is its only piece was counted as that piece.
            if !matches!(session.pieces.as_slice(), [only] if &only.digest == digest) {
                self.stored(digest, size);
            }
            tracing::info!(upload = %id, %repository, %digest, size, "blob pushed");
        }
        result
    }

    /// Cancels an upload, removing what it stored.
    pub async fn cancel(&self, repository: &Repository, id: &UploadId) -> Result<()> {
        let _writing = Writing::claim(&self.busy, id)?;
        let session = self.load(repository, id).await?;
        self.remove(id, &session, None).await;
        Ok(())
    }

    /// Writes a whole blob in one go (`POST …?digest=` or a `PUT` without
    /// a session): verified, visible only on a match.
    pub async fn put_blob(&self, digest: &Digest, data: ByteStream) -> Result<u64> {
        let limit = self.options.max_blob_size;
        let mut seen = 0_u64;
        let data = data
            .and_then(move |chunk| {
                seen = seen.saturating_add(chunk.len() as u64);
                let over = limit.is_some_and(|l| seen > l);
                async move {
                    if over {
                        Err(Error::push(
                            PushErrorKind::SizeInvalid,
                            "the blob is over the mirror's size limit",
                        ))
                    } else {
                        Ok(chunk)
                    }
                }
            })
            .boxed();
        let size = self
            .storage
            .blob_write(digest, None, data)
            .await
            .map_err(|e| match e {
                Error::DigestMismatch { actual, .. } => Error::push(
                    PushErrorKind::DigestInvalid,
                    format!("the uploaded content hashes to {actual}, not {digest}"),
                ),
                other => other,
            })?;
        self.stored(digest, size);
        Ok(size)
    }

    /// Removes upload sessions untouched for [`upload_max_age`](super::HostedOptions::upload_max_age),
    /// with the pieces they stored. Returns how many were removed.
    pub async fn cleanup_abandoned(&self) -> Result<usize> {
        let max_age = self.options.upload_max_age.as_secs();
        let cutoff = now_secs().saturating_sub(max_age);
        let ids: Vec<UploadId> = self
            .storage
            .record_list(&RecordPrefix::uploads())
            .try_filter_map(|key| async move { Ok(key.upload_id()) })
            .try_collect()
            .await?;
        let mut removed = 0;
        for id in ids {
            let Some(session) = self.read(&id).await? else {
                continue;
            };
            if session.updated <= cutoff {
                self.remove(&id, &session, None).await;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed abandoned upload sessions");
        }
        Ok(removed)
    }

    /// Runs [`cleanup_abandoned`](Self::cleanup_abandoned) in the background
    /// when it has not run for a quarter of the maximum age: sessions are
    /// started often enough on a registry in use, and no timer task is needed.
    fn maybe_cleanup(&self) {
        let interval = (self.options.upload_max_age / 4).max(Duration::from_secs(1));
        let due = match self.last_cleanup.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= interval);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let this = self.clone();
                runtime.spawn(async move {
                    if let Err(e) = this.cleanup_abandoned().await {
                        tracing::warn!(error = %e, "cleaning up abandoned uploads failed");
                    }
                });
            }
        }
    }

    fn check_blob_size(&self, size: u64) -> Result<()> {
        match self.options.max_blob_size {
            Some(limit) if size > limit => Err(Error::push(
                PushErrorKind::SizeInvalid,
                format!("the blob is over the mirror's size limit of {limit} bytes"),
            )),
            _ => Ok(()),
        }
    }

    async fn store_piece(&self, id: &UploadId, session: &mut Session, piece: Bytes) -> Result<()> {
        let digest = Digest::sha256_of(&piece);
        let size = piece.len() as u64;
        let shared = self.storage.blob_stat(&digest).await?.is_some();
        if !shared {
            let stream = futures::stream::once(async move { Ok(piece) }).boxed();
            self.storage.blob_write(&digest, Some(size), stream).await?;
            self.stored(&digest, size);
        }
        session.pieces.push(Piece {
            digest,
            size,
            shared,
        });
        session.updated = now_secs();
        self.save(id, session, RecordWrite::Overwrite).await
    }

    async fn read(&self, id: &UploadId) -> Result<Option<Session>> {
        let Some(record) = self.storage.record_get(&RecordKey::upload(id)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&record.bytes)
            .map(Some)
            .map_err(|e| Error::Storage {
                backend: "records",
                message: format!("upload record {id} is not valid JSON; delete it"),
                source: Some(Box::new(e)),
            })
    }

    async fn load(&self, repository: &Repository, id: &UploadId) -> Result<Session> {
        match self.read(id).await? {
            // An id is only valid in the repository it was started in.
            Some(session) if session.repository == repository.as_str() => Ok(session),
            _ => Err(unknown(id)),
        }
    }

    async fn save(&self, id: &UploadId, session: &Session, mode: RecordWrite) -> Result<()> {
        let bytes = serde_json::to_vec(session).map_err(|e| Error::Storage {
            backend: "records",
            message: format!("cannot encode upload record {id}"),
            source: Some(Box::new(e)),
        })?;
        self.storage
            .record_put(&RecordKey::upload(id), Record::new(bytes), mode)
            .await?;
        Ok(())
    }

    /// Removes the session record and the pieces it owns (but never `keep`,
    /// nor a piece another open session stored the same bytes in: two
    /// uploads of one layer cut identical pieces). Failures are logged: the
    /// record goes first, so a piece left behind is an unreferenced blob,
    /// never a session pointing at nothing.
    async fn remove(&self, id: &UploadId, session: &Session, keep: Option<&Digest>) {
        if let Err(e) = self.storage.record_delete(&RecordKey::upload(id)).await {
            tracing::warn!(upload = %id, error = %e, "cannot remove upload record");
            return;
        }
        let owned = session
            .pieces
            .iter()
            .any(|piece| !piece.shared && Some(&piece.digest) != keep);
        if !owned {
            return;
        }
        let in_use = match upload_pieces(self.storage.as_ref()).await {
            Ok(pieces) => pieces,
            Err(e) => {
                tracing::warn!(upload = %id, error = %e, "cannot list open uploads; leaving this upload's pieces for a later clean-up");
                return;
            }
        };
        for piece in &session.pieces {
            if piece.shared
                || Some(&piece.digest) == keep
                || in_use.binary_search(&piece.digest).is_ok()
            {
                continue;
            }
            match self.storage.blob_delete(&piece.digest).await {
                Ok(()) => self.unstored(piece.size),
                Err(e) => {
                    tracing::warn!(upload = %id, piece = %piece.digest, error = %e, "cannot remove upload piece");
                }
            }
        }
    }
}
