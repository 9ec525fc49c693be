//! The v4 identity file (`docs/protocol-v4.md` §6): JSON, written atomically (temp file,
//! fsync, rename, fsync directory) with mode 0600.
//!
//! ```json
//! {
//!   "format": "cyberbackup-identity-v4",
//!   "name": "alice",
//!   "client_id": "<32 hex, empty until registered>",
//!   "private_key": "<64 hex: X25519 static private key>",
//!   "server_fingerprint": "sha256:<64 hex, empty until the first handshake>"
//! }
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cyberbackup_core::v4::noise::{Fingerprint, StaticKeypair};
use serde::{Deserialize, Serialize};

/// `format` value of a v4 identity file.
pub const IDENTITY_FORMAT: &str = "cyberbackup-identity-v4";
/// Default file name, beside `me.info`.
pub const DEFAULT_IDENTITY_FILE: &str = "cyberbackup-v4.json";

/// A v4 client identity.
#[derive(Clone)]
pub struct V4Identity {
    /// Client name.
    pub name: String,
    /// Id assigned by the server at registration; `None` until registered.
    pub client_id: Option<[u8; 16]>,
    /// The static key pair.
    pub keys: StaticKeypair,
    /// The pinned server key; `None` until the first handshake (trust on first use).
    pub server_fingerprint: Option<Fingerprint>,
}

impl std::fmt::Debug for V4Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4Identity")
            .field("name", &self.name)
            .field("public_key", &self.keys.public())
            .field("server_fingerprint", &self.server_fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why an identity file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum V4IdentityError {
    /// Reading or writing failed.
    #[error(
        "cannot {op} the v4 identity file {path}: {source} — check the path (--v4-identity) and the directory's permissions"
    )]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is readable by group or others.
    #[error("the v4 identity file {path} has mode {mode:o}: it holds your private key and must be private — run `chmod 600 {}`", path.display())]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a valid identity.
    #[error(
        "the v4 identity file {path} is invalid: {reason} — restore it from a backup (a new identity means registering under a new name)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct IdentityJson {
    format: String,
    name: String,
    client_id: String,
    private_key: String,
    server_fingerprint: String,
}

impl V4Identity {
    /// A new identity with a fresh key pair.
    #[must_use]
    pub fn generate(name: String, server_fingerprint: Option<Fingerprint>) -> Self {
        Self {
            name,
            client_id: None,
            keys: StaticKeypair::generate(&mut rand_core::OsRng),
            server_fingerprint,
        }
    }

    /// Loads `path`; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// A [`V4IdentityError`] naming the file and the fix.
    pub fn load(path: &Path) -> Result<Option<Self>, V4IdentityError> {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(V4IdentityError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(V4IdentityError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|source| {
            V4IdentityError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            }
        })?);
        let invalid = |reason: String| V4IdentityError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let json: IdentityJson = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if json.format != IDENTITY_FORMAT {
            return Err(invalid(format!(
                "format is {:?}, expected {IDENTITY_FORMAT:?}",
                json.format
            )));
        }
        let keys = StaticKeypair::from_private_hex(&json.private_key)
            .map_err(|e| invalid(e.to_string()))?;
        let client_id = if json.client_id.is_empty() {
            None
        } else {
            Some(
                cyberbackup_core::v4::noise::decode_hex::<16>(&json.client_id)
                    .ok_or_else(|| invalid("client_id is not 32 hex digits".into()))?,
            )
        };
        let server_fingerprint =
            if json.server_fingerprint.is_empty() {
                None
            } else {
                Some(json.server_fingerprint.parse().map_err(
                    |e: cyberbackup_core::v4::noise::BadFingerprint| invalid(e.to_string()),
                )?)
            };
        Ok(Some(Self {
            name: json.name,
            client_id,
            keys,
            server_fingerprint,
        }))
    }

    /// Writes the identity to `path` atomically with mode 0600.
    ///
    /// # Errors
    /// [`V4IdentityError::Io`].
    pub fn save(&self, path: &Path) -> Result<(), V4IdentityError> {
        cyberbackup_fs::write_private(path, &self.encode(path)?).map_err(|source| {
            V4IdentityError::Io {
                op: "write",
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Saves a new identity at `path` unless one is there already (another process created
    /// it first: the UI and the scheduler, two commands started at once); returns the
    /// identity the file holds afterwards, so both processes use one key.
    ///
    /// # Errors
    /// [`V4IdentityError::Io`], or those of [`Self::load`].
    pub fn create(self, path: &Path) -> Result<Self, V4IdentityError> {
        let created =
            cyberbackup_fs::create_private(path, &self.encode(path)?).map_err(|source| {
                V4IdentityError::Io {
                    op: "write",
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        if created {
            return Ok(self);
        }
        Self::load(path)?.ok_or_else(|| V4IdentityError::Invalid {
            path: path.to_path_buf(),
            reason: "it was created by another process and removed again".into(),
        })
    }

    /// The identity file's bytes (zeroized when dropped: they hold the private key).
    fn encode(&self, path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, V4IdentityError> {
        let json = IdentityJson {
            format: IDENTITY_FORMAT.to_owned(),
            name: self.name.clone(),
            client_id: self
                .client_id
                .map(|id| cyberbackup_core::v4::noise::to_hex(&id))
                .unwrap_or_default(),
            private_key: self.keys.private_hex().to_string(),
            server_fingerprint: self
                .server_fingerprint
                .map(|f| f.to_string())
                .unwrap_or_default(),
        };
        let text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&json).map_err(|e| {
            V4IdentityError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?);
        // Sized up front: growing the buffer would leave an unzeroized copy of the key behind.
        let mut contents = zeroize::Zeroizing::new(Vec::with_capacity(text.len() + 1));
        contents.extend_from_slice(text.as_bytes());
        contents.push(b'\n');
        Ok(contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_privately_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id").join(DEFAULT_IDENTITY_FILE);
        let mut identity = V4Identity::generate("alice".into(), None);
        identity.save(&path).unwrap();
        let fresh = V4Identity::load(&path).unwrap().unwrap();
        identity.client_id = Some([0xAB; 16]);
        identity.server_fingerprint = Some(identity.keys.public().fingerprint());
        identity.save(&path).unwrap();
        let registered = V4Identity::load(&path).unwrap().unwrap();

        assert_eq!(fresh.client_id, None);
        assert_eq!(fresh.keys.public(), identity.keys.public());
        assert_eq!(registered.client_id, Some([0xAB; 16]));
        assert_eq!(registered.server_fingerprint, identity.server_fingerprint);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            dir_mode & 0o777,
            0o700,
            "docs/client.md: the directory is 0700"
        );
        assert!(!format!("{registered:?}").contains(identity.keys.private_hex().as_str()));
    }

    #[test]
    fn a_second_first_use_gets_the_identity_already_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_IDENTITY_FILE);
        let first = V4Identity::generate("alice".into(), None)
            .create(&path)
            .unwrap();
        let second = V4Identity::generate("alice".into(), None)
            .create(&path)
            .unwrap();
        assert_eq!(second.keys.public(), first.keys.public());
        let stored = V4Identity::load(&path).unwrap().unwrap();
        assert_eq!(stored.keys.public(), first.keys.public());
    }

    #[test]
    fn a_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_IDENTITY_FILE);
        V4Identity::generate("a".into(), None).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = V4Identity::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
