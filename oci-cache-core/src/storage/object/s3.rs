//! [`S3Config`] and [`ObjectStorage::s3`]: the S3 convenience over
//! [`ObjectStorage::new`].

use std::fmt;
use std::sync::Arc;

use super::ObjectStorage;
use crate::{Error, Result};

/// Where and how to reach an S3 or S3-compatible bucket.
///
/// Fields left `None` fall back to the usual AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT`), and then to the
/// instance or web-identity credentials `object_store` discovers.

#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `oci-cache`; none by default.
    pub prefix: Option<String>,
    /// Endpoint URL for S3-compatible servers, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// The region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Address the bucket as `endpoint/bucket` instead of `bucket.endpoint`;
    /// most S3-compatible servers need this.
    pub path_style: bool,
    /// Access key ID.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish()
    }
}

impl ObjectStorage {
    /// Storage in an S3 or S3-compatible bucket.
    ///
    /// Builds the client only; the first request shows whether the bucket
    /// and credentials work.
    pub fn s3(config: &S3Config) -> Result<Self> {
        use object_store::aws::AmazonS3Builder;

        if config.bucket.is_empty() {
            return Err(Error::Config(
                "the s3 storage needs a bucket name; set storage.s3.bucket".to_owned(),
            ));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(|e| {
            Error::Config(format!(
                "cannot set up s3 bucket {:?}: {e}; check the endpoint, region and credentials",
                config.bucket
            ))
        })?;
        let name = match &config.endpoint {
            Some(endpoint) => format!("s3 bucket {} at {endpoint}", config.bucket),
            None => format!("s3 bucket {}", config.bucket),
        };
        let store = Arc::new(store);
        let multipart = Arc::clone(&store) as _;
        Ok(Self::with_store(
            store,
            config.prefix.as_deref().unwrap_or_default(),
            name,
            Some(multipart),
        ))
    }
}
