//! The `[storage]` table of the server's configuration: which [`Backend`] holds the snapshot
//! repositories' objects, and how to open it.
//!
//! ```toml
//! [storage]                      # omitted: backend = "local"
//! backend = "s3"
//! bucket = "cyberbackup"
//! endpoint = "http://127.0.0.1:3900"   # AWS: leave out
//! region = "garage"
//! prefix = "site-a"
//! access_key_id = "GK…"                # or AWS_ACCESS_KEY_ID
//! secret_access_key = "…"              # or AWS_SECRET_ACCESS_KEY
//! allow_http = true                    # loopback test servers only
//! ```
//!
//! Settings left out come from the standard AWS environment variables (see [`S3Config`]).
//! The legacy v3/v4 single-file store always stays in the data directory.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::local::{LocalBackend, LocalConfig};
use super::s3::{S3Backend, S3Config};
use super::{Backend, BackendError};

/// Where repository objects live: the `[storage]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum StorageConfig {
    /// `<data_dir>/repository` on the local disk (the default).
    #[default]
    Local,
    /// An S3-compatible bucket (AWS S3, Garage, Ceph RGW, MinIO, …).
    S3(S3Settings),
}

/// The S3 keys of `[storage]` (`backend = "s3"`); each left out falls back to the AWS
/// environment variables or [`S3Config::new`]'s defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket (it must exist).
    pub bucket: String,
    /// Endpoint URL for stores other than AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix inside the bucket, so one bucket can hold several services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Access key id (`AWS_ACCESS_KEY_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (`AWS_SECRET_ACCESS_KEY`); never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<StorageSecret>,
    /// Allow a plain `http://` endpoint (a store on loopback; never across a network).
    #[serde(default)]
    pub allow_http: bool,
    /// Multipart part length in bytes: a power of two ≥ 5 MiB (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_len_bytes: Option<u64>,
    /// Retries of a failed request (5xx, timeout, connection refused; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<usize>,
    /// Timeout of one request in seconds (default 60; a whole part must fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_secs: Option<u64>,
}

/// A storage credential from the config file: zeroized on drop, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub struct StorageSecret(Zeroizing<String>);

impl From<String> for StorageSecret {
    fn from(secret: String) -> Self {
        Self(Zeroizing::new(secret))
    }
}

impl StorageSecret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self::from(secret.into())
    }
}

impl fmt::Debug for StorageSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageSecret(..)")
    }
}

impl Serialize for StorageSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl StorageConfig {
    /// Opens the backend (no request is sent yet): the local one on
    /// `<data_dir>/<local_dir>`, or the S3 client.
    ///
    /// # Errors
    /// [`BackendError::Config`] for settings the backend refuses, or an IO error creating
    /// the local directory.
    pub fn open(&self, data_dir: &Path, local_dir: &str) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(match self {
            Self::Local => Arc::new(LocalBackend::open(LocalConfig::new(
                data_dir.join(local_dir),
            ))?),
            Self::S3(settings) => Arc::new(S3Backend::new(&settings.s3_config())?),
        })
    }

    /// One line for logs and diagnostics, without credentials: `local <dir>` or
    /// `s3 <bucket>/<prefix> at <endpoint>`.
    #[must_use]
    pub fn describe(&self, data_dir: &Path, local_dir: &str) -> String {
        match self {
            Self::Local => format!("local {}", data_dir.join(local_dir).display()),
            Self::S3(settings) => {
                let mut line = format!("s3 {}", settings.bucket);
                if let Some(prefix) = &settings.prefix {
                    line.push('/');
                    line.push_str(prefix.trim_matches('/'));
                }
                if let Some(endpoint) = &settings.endpoint {
                    line.push_str(" at ");
                    line.push_str(endpoint);
                }
                line
            }
        }
    }
}

impl S3Settings {
    /// The backend configuration these settings describe.
    #[must_use]
    pub fn s3_config(&self) -> S3Config {
        let mut config = S3Config::new(&self.bucket);
        config.endpoint.clone_from(&self.endpoint);
        config.region.clone_from(&self.region);
        config.prefix.clone_from(&self.prefix);
        config.access_key_id.clone_from(&self.access_key_id);
        config.secret_access_key = self.secret_access_key.as_ref().map(|s| s.0.clone());
        config.allow_http = self.allow_http;
        if let Some(part_len) = self.part_len_bytes {
            config.part_len = part_len;
        }
        if let Some(retries) = self.max_retries {
            config.max_retries = retries;
        }
        if let Some(secs) = self.request_timeout_secs {
            config.request_timeout = Duration::from_secs(secs);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_prints_without_the_secret_and_refuses_unknown_keys() {
        let parsed: StorageConfig = toml::from_str(
            r#"
            backend = "s3"
            bucket = "b"
            endpoint = "http://127.0.0.1:3900"
            prefix = "/site-a/"
            secret_access_key = "very-secret"
            allow_http = true
            part_len_bytes = 16777216
            "#,
        )
        .unwrap();
        let StorageConfig::S3(settings) = &parsed else {
            panic!("not s3: {parsed:?}");
        };
        let config = settings.s3_config();
        assert_eq!(config.part_len, 16 << 20);
        assert_eq!(
            config.secret_access_key.as_deref().map(String::as_str),
            Some("very-secret")
        );
        let printed = toml::to_string(&parsed).unwrap();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(!format!("{parsed:?}").contains("very-secret"));
        assert_eq!(
            parsed.describe(Path::new("/d"), "repository"),
            "s3 b/site-a at http://127.0.0.1:3900"
        );

        let local: StorageConfig = toml::from_str(r#"backend = "local""#).unwrap();
        assert_eq!(local, StorageConfig::Local);
        let typo = toml::from_str::<StorageConfig>("backend = \"s3\"\nbucket = \"b\"\nbukket = 1");
        assert!(typo.unwrap_err().to_string().contains("bukket"));
        let unknown = toml::from_str::<StorageConfig>(r#"backend = "ftp""#);
        assert!(unknown.is_err());
    }
}
