//! Blob upload sessions: start, append chunks, report progress, finish with
//! a verified write, cancel, and clean up abandoned ones.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::quota::OpenUploads;
use super::Hosted;
use crate::digest::Digest;
use crate::reference::Repository;
use crate::storage::{
    now_secs, ByteStream, Record, RecordKey, RecordPrefix, RecordWrite, Storage, UploadId,
};
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
    /// The size of each stored piece, in order: piece `i` is the record
    /// `upload-pieces/<id>/<i>`.
    #[serde(default)]
    parts: Vec<u64>,
    /// Pieces as an older version stored them (as blobs): such a session
    /// cannot be continued, the client starts a new one.
    #[serde(default, rename = "pieces", skip_serializing)]
    legacy_pieces: Vec<serde::de::IgnoredAny>,
}

impl Session {
    fn offset(&self) -> u64 {
        self.parts.iter().sum()
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

/// A verified write that found other bytes than `digest`, as the client's error.
fn upload_content_error(e: Error, digest: &Digest) -> Error {
    match e {
        Error::DigestMismatch { actual, .. } => Error::push(
            PushErrorKind::DigestInvalid,
            format!("the uploaded content hashes to {actual}, not {digest}"),
        ),
        Error::SizeMismatch { .. } => Error::push(
            PushErrorKind::DigestInvalid,
            format!("the uploaded content does not match {digest}"),
        ),
        other => other,
    }
}

fn unknown(id: &UploadId) -> Error {
    Error::push(
        PushErrorKind::UploadUnknown,
        format!("upload {id} is unknown (finished, cancelled or expired); start a new one"),
    )
}

impl<S: Storage + ?Sized> Hosted<S> {
    /// Starts an upload session in `repository` for `client` (its address,
    /// when known: the per-client cap counts by it).
    pub async fn start_upload(
        &self,
        repository: &Repository,
        client: Option<IpAddr>,
    ) -> Result<UploadState> {
        self.maybe_cleanup();
        let id = UploadId::random();
        self.open_uploads().start(&id, client, &self.options)?;
        let session = Session {
            repository: repository.to_string(),
            updated: now_secs(),
            parts: Vec::new(),
            legacy_pieces: Vec::new(),
        };
        if let Err(e) = self.save(&id, &session, RecordWrite::Create).await {
            self.open_uploads().end(&id);
            return Err(e);
        }
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

    /// Finishes an upload: streams the stored pieces, in order, then `data`
    /// (the `PUT` body, possibly empty) into a verified write of the blob
    /// `digest`. Each piece is removed as soon as it has been read, and the
    /// body is never stored as pieces, so the upload's bytes are on disk
    /// once, not twice. The session ends either way: on a digest or size
    /// mismatch nothing becomes visible, and after a failed write the
    /// pieces already handed over are gone, so the client uploads again.
    /// Returns the blob's size.
    pub async fn finish(
        &self,
        repository: &Repository,
        id: &UploadId,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        let _writing = Writing::claim(&self.busy, id)?;
        let session = self.load(repository, id).await?;
        let stored = session.offset();
        self.protect_pushed(digest).await?;
        let pieces = self.consume_pieces(id, session.parts.len());
        let (stream, expected) = match data {
            Some(body) => (
                pieces.chain(self.limit_blob_size(body, stored)).boxed(),
                None,
            ),
            None => (pieces, Some(stored)),
        };
        let result = self
            .storage
            .blob_write(digest, expected, stream)
            .await
            .map_err(|e| upload_content_error(e, digest));
        self.remove(id, &session).await;
        let size = result?;
        self.stored(digest, size);
        tracing::info!(upload = %id, %repository, %digest, size, "blob pushed");
        Ok(size)
    }

    /// The pieces of upload `id` in order, each read whole (one piece in
    /// memory) and removed once read: from then on the blob write holds
    /// its bytes.
    fn consume_pieces(&self, id: &UploadId, count: usize) -> ByteStream {
        let storage = Arc::clone(&self.storage);
        let id = id.clone();
        futures::stream::iter(0..count as u64)
            .then(move |index| {
                let storage = Arc::clone(&storage);
                let key = RecordKey::upload_piece(&id, index);
                let id = id.clone();
                async move {
                    let record = storage.record_get(&key).await?.ok_or_else(|| {
                        Error::push(
                            PushErrorKind::UploadInvalid,
                            format!("piece {index} of upload {id} is gone; upload the blob again"),
                        )
                    })?;
                    storage.record_delete(&key).await?;
                    Ok(record.bytes)
                }
            })
            .boxed()
    }

    /// Cancels an upload, removing what it stored (its own pieces only:
    /// they were never blobs, so nothing else can be using them).
    pub async fn cancel(&self, repository: &Repository, id: &UploadId) -> Result<()> {
        let _writing = Writing::claim(&self.busy, id)?;
        let session = self.load(repository, id).await?;
        self.remove(id, &session).await;
        Ok(())
    }

    /// Writes a whole blob in one go (`POST …?digest=` or a `PUT` without
    /// a session): verified, visible only on a match.
    pub async fn put_blob(&self, digest: &Digest, data: ByteStream) -> Result<u64> {
        let data = self.limit_blob_size(data, 0);
        self.protect_pushed(digest).await?;
        let size = self
            .storage
            .blob_write(digest, None, data)
            .await
            .map_err(|e| upload_content_error(e, digest))?;
        self.stored(digest, size);
        Ok(size)
    }

    /// `data` cut off with a size error once `already` plus its bytes pass
    /// [`max_blob_size`](super::HostedOptions::max_blob_size).
    fn limit_blob_size(&self, data: ByteStream, already: u64) -> ByteStream {
        let this = self.clone();
        let mut seen = already;
        data.and_then(move |chunk| {
            seen = seen.saturating_add(chunk.len() as u64);
            let checked = this.check_blob_size(seen).map(|()| chunk);
            async move { checked }
        })
        .boxed()
    }

    /// Removes upload sessions untouched for [`upload_max_age`](super::HostedOptions::upload_max_age),
    /// with the pieces they stored, and pieces no session owns (left by a
    /// crash between storing a piece and its session). Returns how many
    /// sessions were removed.
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
        for id in &ids {
            if self.is_busy(id) {
                continue;
            }
            let Some(session) = self.read(id).await? else {
                continue;
            };
            if session.updated <= cutoff {
                self.remove(id, &session).await;
                removed += 1;
            }
        }
        let stray: Vec<RecordKey> = self
            .storage
            .record_list(&RecordPrefix::upload_pieces())
            .try_filter(|key| {
                let owned = key
                    .upload_piece_index()
                    .is_some_and(|(id, _)| ids.contains(&id) || self.is_busy(&id));
                async move { !owned }
            })
            .try_collect()
            .await?;
        for key in &stray {
            // A session started after the listing above has its record by now.
            let session = key
                .upload_piece_index()
                .map(|(id, _)| RecordKey::upload(&id));
            if let Some(session) = session {
                if self.storage.record_get(&session).await?.is_some() {
                    continue;
                }
            }
            self.storage.record_delete(key).await?;
        }
        let ended_graces = self.sweep_ended_graces().await?;
        if removed > 0 || !stray.is_empty() || ended_graces > 0 {
            tracing::info!(
                removed,
                stray_pieces = stray.len(),
                ended_graces,
                "removed abandoned upload sessions"
            );
        }
        Ok(removed)
    }

    /// Whether a request of this process is writing upload `id` right now.
    fn is_busy(&self, id: &UploadId) -> bool {
        self.busy.lock().map(|set| set.contains(id)).unwrap_or(true)
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

    /// Stores `piece` as the next piece of upload `id` (a record under the
    /// upload's own prefix, never a blob), then the session that counts it.
    /// Refused when open sessions would hold more than
    /// [`max_upload_bytes`](super::HostedOptions::max_upload_bytes).
    async fn store_piece(&self, id: &UploadId, session: &mut Session, piece: Bytes) -> Result<()> {
        let size = piece.len() as u64;
        self.open_uploads().reserve(id, size, &self.options)?;
        let key = RecordKey::upload_piece(id, session.parts.len() as u64);
        let stored = self
            .storage
            .record_put(&key, Record::new(piece), RecordWrite::Overwrite)
            .await;
        if let Err(e) = stored {
            self.open_uploads().release(id, size);
            return Err(e);
        }
        session.parts.push(size);
        session.updated = now_secs();
        self.save(id, session, RecordWrite::Overwrite).await
    }

    fn open_uploads(&self) -> MutexGuard<'_, OpenUploads> {
        // The counts stay consistent under a panic elsewhere: use them.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
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
            // An id is only valid in the repository it was started in; a
            // session an older version stored as blobs cannot be continued.
            Some(session)
                if session.repository == repository.as_str()
                    && session.legacy_pieces.is_empty() =>
            {
                Ok(session)
            }
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

    /// Removes the session record, then its pieces. Failures are logged:
    /// the record goes first, so a piece left behind belongs to no session
    /// and [`cleanup_abandoned`](Self::cleanup_abandoned) removes it.
    async fn remove(&self, id: &UploadId, session: &Session) {
        self.open_uploads().end(id);
        if let Err(e) = self.storage.record_delete(&RecordKey::upload(id)).await {
            tracing::warn!(upload = %id, error = %e, "cannot remove upload record");
            return;
        }
        for index in 0..session.parts.len() as u64 {
            if let Err(e) = self
                .storage
                .record_delete(&RecordKey::upload_piece(id, index))
                .await
            {
                tracing::warn!(upload = %id, index, error = %e, "cannot remove upload piece; a later clean-up removes it");
            }
        }
    }
}
