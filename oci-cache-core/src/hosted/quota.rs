//! Bounds on open upload sessions: how many one client may hold, and how
//! many bytes all of them may hold together, so an anonymous pusher cannot
//! fill the disk with sessions that only expire a day later.
//!
//! Counted in memory, from the process start: a session stored by an
//! earlier run counts (without a client) from its next chunk on.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{HostedOptions, UploadId};
use crate::{Error, PushErrorKind, Result};

/// The open sessions this process knows of.
#[derive(Debug, Default)]
pub(super) struct OpenUploads {
    sessions: HashMap<UploadId, OpenUpload>,
    /// Bytes all of `sessions` hold.
    bytes: u64,
}

#[derive(Debug)]
struct OpenUpload {
    client: Option<IpAddr>,
    bytes: u64,
}

impl OpenUploads {
    /// Counts a new session of `client`, or refuses it when the client
    /// already holds [`max_uploads_per_client`](HostedOptions::max_uploads_per_client).
    pub(super) fn start(
        &mut self,
        id: &UploadId,
        client: Option<IpAddr>,
        options: &HostedOptions,
    ) -> Result<()> {
        if let Some(client) = client {
            let limit = options.max_uploads_per_client;
            let held = self
                .sessions
                .values()
                .filter(|s| s.client == Some(client))
                .count();
            if held >= limit {
                return Err(Error::push(
                    PushErrorKind::TooManyUploads,
                    format!(
                        "{client} already has {held} upload sessions open, the mirror's limit \
                         (max_uploads_per_client = {limit}); finish or cancel one first"
                    ),
                ));
            }
        }
        self.sessions
            .insert(id.clone(), OpenUpload { client, bytes: 0 });
        Ok(())
    }

    /// Counts `bytes` more for session `id`, or refuses them when open
    /// sessions would hold more than [`max_upload_bytes`](HostedOptions::max_upload_bytes).
    pub(super) fn reserve(
        &mut self,
        id: &UploadId,
        bytes: u64,
        options: &HostedOptions,
    ) -> Result<()> {
        let total = self.bytes.saturating_add(bytes);
        if let Some(limit) = options.max_upload_bytes {
            if total > limit {
                return Err(Error::push(
                    PushErrorKind::TooManyUploads,
                    format!(
                        "open uploads already hold {} of the mirror's {limit} bytes \
                         (max_upload_bytes); retry once other pushes have finished",
                        self.bytes
                    ),
                ));
            }
        }
        let session = self.sessions.entry(id.clone()).or_insert(OpenUpload {
            client: None,
            bytes: 0,
        });
        session.bytes = session.bytes.saturating_add(bytes);
        self.bytes = total;
        Ok(())
    }

    /// Gives back `bytes` reserved for session `id` that were not stored.
    pub(super) fn release(&mut self, id: &UploadId, bytes: u64) {
        if let Some(session) = self.sessions.get_mut(id) {
            let bytes = bytes.min(session.bytes);
            session.bytes -= bytes;
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }

    /// Session `id` ended (finished, cancelled or expired).
    pub(super) fn end(&mut self, id: &UploadId) {
        if let Some(session) = self.sessions.remove(id) {
            self.bytes = self.bytes.saturating_sub(session.bytes);
        }
    }
}
