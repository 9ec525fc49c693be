//! [`S3Backend`]: objects in any S3-compatible store (AWS S3, Garage, Ceph RGW, MinIO, …)
//! through `object_store`'s `AmazonS3` client, which signs requests and retries 5xx answers,
//! connection failures and timeouts with exponential back-off ([`S3Config::max_retries`],
//! [`S3Config::retry_timeout`]).
//!
//! Key `data/ab/abcd` is the S3 key `PREFIX/data/ab/abcd`. A put hashes the bytes first and
//! sends one `PUT` only if they match; an upload is an S3 multipart upload whose `UploadId`
//! and part `ETag`s are the [`Upload`]'s durable offset, and `CompleteMultipartUpload` is
//! sent only once the parts' BLAKE3 hash matches. The durability point is the store's
//! acknowledgement of the `PUT` or of the `CompleteMultipartUpload`. A cancelled put aborts
//! its multipart upload in the background; configure the bucket's
//! `AbortIncompleteMultipartUpload` lifecycle rule as well, for uploads a crash left behind.
//! Hand-written here: only the mapping of `object_store` errors to [`BackendError`] (the
//! HTTP status is not public in `object_store`'s error type, see `map_error`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use zeroize::Zeroizing;

use super::hash::hash_part;
use super::local::check_part_len;
use super::{
    Backend, BackendError, ContentHash, ObjectInfo, ObjectKey, Upload, check_range,
    hash_off_runtime,
};

/// S3's smallest part (all but the last part of a multipart upload).
const MIN_PART_LEN: u64 = 5 << 20;

/// Configuration of an [`S3Backend`]. Fields left `None` come from the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT`, …) and then from the usual AWS credential sources
/// (web identity, ECS/EC2 instance metadata). `Debug` never prints the secrets.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket (it must exist).
    pub bucket: String,
    /// Endpoint URL for stores other than AWS (`http://127.0.0.1:3900` for a local Garage).
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when neither this nor `AWS_REGION` is set; Garage: its `s3_region`).
    pub region: Option<String>,
    /// Key prefix inside the bucket (`cyberbackup/site-a`), so one bucket can hold several
    /// repositories; the same rules as an [`ObjectKey`].
    pub prefix: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key (zeroized on drop).
    pub secret_access_key: Option<Zeroizing<String>>,
    /// Session token for temporary credentials (zeroized on drop).
    pub session_token: Option<Zeroizing<String>>,
    /// Allow a plain `http://` endpoint (local test servers; never across a network).
    pub allow_http: bool,
    /// Length of every part of a multipart upload but the last: a power of two ≥ 5 MiB.
    pub part_len: u64,
    /// How often a failed request (5xx, connection failure, timeout) is retried.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
    /// First back-off between retries; it doubles up to 15 s.
    pub initial_backoff: Duration,
    /// Timeout of one request (a part of `part_len` must fit in it).
    pub request_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
}

impl S3Config {
    /// The defaults for `bucket`: 8 MiB parts, 10 retries within 3 minutes starting at
    /// 100 ms, 60 s requests, 5 s connects, HTTPS only, the rest from the environment.
    #[must_use]
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            prefix: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            part_len: super::local::DEFAULT_PART_LEN,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            initial_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<Zeroizing<String>>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("part_len", &self.part_len)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Objects in an S3 bucket (see the module docs).
#[derive(Debug, Clone)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    prefix: Option<ObjectKey>,
    part_len: u64,
    name: String,
}

impl S3Backend {
    /// A client for the bucket of `config` (no request is sent yet).
    ///
    /// # Errors
    /// [`BackendError::Config`] for a bad prefix or part length, or settings the S3 client
    /// refuses (a malformed endpoint, no bucket).
    pub fn new(config: &S3Config) -> Result<Self, BackendError> {
        check_part_len(config.part_len, MIN_PART_LEN)?;
        // object_store's HTTP client is built on rustls without a compiled-in crypto provider
        // (Cargo.toml: no aws-lc-sys); install ring's for the process. An error only means a
        // provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prefix = config
            .prefix
            .as_deref()
            .map(|p| ObjectKey::new(p.trim_matches('/')))
            .transpose()?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: config.initial_backoff,
                    ..BackoffConfig::default()
                },
                max_retries: config.max_retries,
                retry_timeout: config.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(config.allow_http)
                    .with_timeout(config.request_timeout)
                    .with_connect_timeout(config.connect_timeout),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret.as_str());
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token.as_str());
        }
        let store = builder
            .build()
            .map_err(|e| BackendError::Config(format!("S3 bucket {:?}: {e}", config.bucket)))?;
        let name = match &prefix {
            Some(prefix) => format!("s3 {}/{prefix}", config.bucket),
            None => format!("s3 {}", config.bucket),
        };
        Ok(Self {
            store: Arc::new(store),
            prefix,
            part_len: config.part_len,
            name,
        })
    }

    fn path_of(&self, key: &ObjectKey) -> Path {
        match &self.prefix {
            Some(prefix) => Path::from(format!("{prefix}/{key}")),
            None => Path::from(key.as_str()),
        }
    }

    fn key_of(&self, path: &Path) -> Result<ObjectKey, BackendError> {
        let full = path.as_ref();
        let relative = match &self.prefix {
            Some(prefix) => full
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(full),
            None => full,
        };
        Ok(ObjectKey::new(relative)?)
    }

    fn error(&self, key: &ObjectKey) -> impl Fn(object_store::Error) -> BackendError + '_ {
        let key = key.clone();
        move |e| map_error(&self.name, &key, e)
    }

    /// Length of the object, for a range the store refused.
    async fn len_of(&self, key: &ObjectKey) -> Result<u64, BackendError> {
        let meta = self
            .store
            .head(&self.path_of(key))
            .await
            .map_err(self.error(key))?;
        Ok(meta.size)
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn part_len(&self) -> u64 {
        self.part_len
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        let actual = hash_off_runtime(bytes.clone()).await?;
        if actual != expected {
            return Err(BackendError::HashMismatch {
                key: key.clone(),
                expected,
                actual,
            });
        }
        self.store
            .put(&self.path_of(key), PutPayload::from(bytes))
            .await
            .map_err(self.error(key))?;
        Ok(())
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        let path = self.path_of(key);
        let Some(range) = range else {
            let result = self.store.get(&path).await.map_err(self.error(key))?;
            return result.bytes().await.map_err(self.error(key));
        };
        if range.start >= range.end {
            // S3 has no empty range; check the bounds against the object's length.
            check_range(key, &range, self.len_of(key).await?)?;
            return Ok(Bytes::new());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackendError::NotFound { key: key.clone() });
            }
            Err(e) => {
                // A range starting past the end is refused by the store (416).
                check_range(key, &range, self.len_of(key).await?)?;
                return Err(map_error(&self.name, key, e));
            }
        };
        check_range(key, &range, result.meta.size)?;
        result.bytes().await.map_err(self.error(key))
    }

    fn list(&self, prefix: Option<&ObjectKey>) -> BoxStream<'_, Result<ObjectInfo, BackendError>> {
        let path = match (&self.prefix, prefix) {
            (_, Some(p)) => Some(self.path_of(p)),
            (Some(root), None) => Some(Path::from(root.as_str())),
            (None, None) => None,
        };
        let listed_key = prefix.cloned();
        Box::pin(self.store.list(path.as_ref()).map(move |item| {
            let meta = item.map_err(|e| match &listed_key {
                Some(key) => map_error(&self.name, key, e),
                None => unavailable(&self.name, &e),
            })?;
            Ok(ObjectInfo {
                key: self.key_of(&meta.location)?,
                len_bytes: meta.size,
            })
        }))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BackendError> {
        match self.store.delete(&self.path_of(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_error(&self.name, key, e)),
        }
    }

    /// Nothing to remove: a `PUT` the store did not complete leaves no object (interrupted
    /// multipart uploads are resumed or aborted through their recorded upload ids).
    async fn remove_interrupted_puts(&self) -> Result<u64, BackendError> {
        Ok(0)
    }

    async fn begin_upload(&self, key: &ObjectKey) -> Result<Upload, BackendError> {
        let id = self
            .store
            .create_multipart(&self.path_of(key))
            .await
            .map_err(self.error(key))?;
        Ok(Upload::new(key.clone(), id, self.part_len))
    }

    async fn upload_part(&self, upload: &mut Upload, data: Bytes) -> Result<(), BackendError> {
        upload.check_next_part(self.part_len, &data)?;
        let offset = upload.len_bytes();
        let len_bytes = data.len() as u64;
        let hashed = data.clone();
        let hash = tokio::task::spawn_blocking(move || hash_part(offset, &hashed))
            .await
            .map_err(BackendError::from_join)?;
        let key = upload.key().clone();
        let part = self
            .store
            .put_part(
                &self.path_of(&key),
                &upload.id().to_owned(),
                upload.parts().len(),
                PutPayload::from(data),
            )
            .await
            .map_err(self.error(&key))?;
        upload.push_part(part.content_id, len_bytes, hash);
        Ok(())
    }

    async fn complete_upload(
        &self,
        upload: &Upload,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        if let Err(e) = upload.verify(expected) {
            if matches!(e, BackendError::HashMismatch { .. }) {
                self.abort_upload(upload.clone()).await?;
            }
            return Err(e);
        }
        let parts = upload
            .parts()
            .iter()
            .map(|p| PartId {
                content_id: p.etag.clone(),
            })
            .collect();
        self.store
            .complete_multipart(&self.path_of(upload.key()), &upload.id().to_owned(), parts)
            .await
            .map_err(self.error(upload.key()))?;
        Ok(())
    }

    async fn abort_upload(&self, upload: Upload) -> Result<(), BackendError> {
        match self
            .store
            .abort_multipart(&self.path_of(upload.key()), &upload.id().to_owned())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_error(&self.name, upload.key(), e)),
        }
    }

    fn abandon_upload(&self, upload: Upload) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let path = self.path_of(upload.key());
        runtime.spawn(async move {
            let id = upload.id().to_owned();
            if let Err(e) = store.abort_multipart(&path, &id).await {
                tracing::warn!(%path, error = %e, "could not abort a cancelled multipart upload");
            }
        });
    }
}

/// Maps an `object_store` error to a [`BackendError`]. `object_store` has already retried
/// what is worth retrying; what reaches here is classified for the caller. Its error type
/// keeps the HTTP status private, so a 4xx answer (which no retry will change) is recognised
/// by the status its message carries; everything else unexplained (5xx after the retries,
/// timeouts, refused connections) is retryable.
fn map_error(backend: &str, key: &ObjectKey, error: object_store::Error) -> BackendError {
    match error {
        object_store::Error::NotFound { .. } => BackendError::NotFound { key: key.clone() },
        error => unavailable(backend, &error),
    }
}

fn unavailable(backend: &str, error: &object_store::Error) -> BackendError {
    let (retryable, hint) = match error {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => (
            false,
            "check the access key, secret and the bucket's policy",
        ),
        object_store::Error::Generic { .. } => {
            let message = error.to_string();
            if message.contains("status code: 4") {
                (false, "the store rejected the request")
            } else {
                (
                    true,
                    "the store did not answer after the configured retries",
                )
            }
        }
        _ => (false, "the store does not support this request"),
    };
    BackendError::Unavailable {
        backend: backend.to_owned(),
        retryable,
        message: format!("{hint}: {error}"),
    }
}
