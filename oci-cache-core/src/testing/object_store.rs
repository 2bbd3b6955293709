//! [`CountingStore`]: an `ObjectStore` decorator that counts requests by
//! kind (what a bucket bills) and can behave like a bucket without
//! conditional writes or a slow one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// Requests an object store received, by kind: `put`, `put_create`
/// (`If-None-Match: *`), `put_update` (`If-Match`), `get`, `head`,
/// `delete`, `list`, `copy`, `multipart_create`, `multipart_part`,
/// `multipart_complete`, `multipart_abort`.
pub type RequestCounts = BTreeMap<&'static str, u64>;

/// An `ObjectStore` over another that counts every request, as a bucket
/// bills them; optionally ignores `PutMode` conditions (an S3-compatible
/// server that does not honour `If-None-Match` / `If-Match`) or delays
/// conditional puts (a slow lease call).
#[derive(Debug, Clone)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<Mutex<RequestCounts>>,
    ignore_conditions: bool,
    conditional_delay: Option<Duration>,
    hidden_get: Arc<Mutex<Option<String>>>,
}

impl CountingStore {
    /// Counts the requests to `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        CountingStore {
            inner,
            counts: Arc::new(Mutex::new(RequestCounts::new())),
            ignore_conditions: false,
            conditional_delay: None,
            hidden_get: Arc::new(Mutex::new(None)),
        }
    }

    /// Writes every put unconditionally, like a server that ignores the
    /// conditional headers.
    pub fn ignoring_conditions(mut self) -> Self {
        self.ignore_conditions = true;
        self
    }

    /// Waits `delay` before each conditional put.
    pub fn with_conditional_delay(mut self, delay: Duration) -> Self {
        self.conditional_delay = Some(delay);
        self
    }

    /// Answers the next `GET` of an object whose path ends with `suffix`
    /// with "not found", as a read that raced another writer's commit saw
    /// it.
    pub fn hide_next_get(&self, suffix: &str) {
        *self
            .hidden_get
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(suffix.to_owned());
    }

    /// The requests so far.
    pub fn counts(&self) -> RequestCounts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests so far, all kinds together.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Forgets the counts so far.
    pub fn reset(&self) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn count(&self, kind: &'static str) {
        count(&self.counts, kind);
    }
}

fn count(counts: &Mutex<RequestCounts>, kind: &'static str) {
    *counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(kind)
        .or_default() += 1;
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let kind = match opts.mode {
            PutMode::Overwrite => "put",
            PutMode::Create => "put_create",
            PutMode::Update(_) => "put_update",
        };
        self.count(kind);
        if kind != "put" {
            if let Some(delay) = self.conditional_delay {
                tokio::time::sleep(delay).await;
            }
            if self.ignore_conditions {
                opts.mode = PutMode::Overwrite;
            }
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.count("multipart_create");
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner: upload,
            counts: Arc::clone(&self.counts),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.count(if options.head { "head" } else { "get" });
        if !options.head {
            let mut hidden = self
                .hidden_get
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if hidden
                .as_deref()
                .is_some_and(|suffix| location.as_ref().ends_with(suffix))
            {
                *hidden = None;
                return Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "hidden by the test (a read before the commit)".into(),
                });
            }
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counts = Arc::clone(&self.counts);
        let locations = locations.inspect(move |_| count(&counts, "delete")).boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.count("list");
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.count("list");
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.count("copy");
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counts: Arc<Mutex<RequestCounts>>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        count(&self.counts, "multipart_part");
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        count(&self.counts, "multipart_complete");
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        count(&self.counts, "multipart_abort");
        self.inner.abort().await
    }
}
