//! The client identity file (`me.info`): where it lives, how it is read, and how it is
//! written — atomically (temporary file in the same directory, fsync, rename) and readable
//! by its owner only (mode 0600).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cyberbackup_core::identity::Identity;

use crate::error::ClientError;

/// File name of the identity, as the legacy clients use it.
pub const IDENTITY_FILE_NAME: &str = "me.info";

/// Longest client name, in characters (the limit `transfer.info` documents; the 255-byte
/// wire field also caps it at 254 bytes of UTF-8). Applies to `backup --name` and legacy
/// mode alike.
pub const MAX_NAME_CHARS: usize = 100;

/// Checks a client name to register: 1 to [`MAX_NAME_CHARS`] characters.
///
/// # Errors
/// A message saying what is wrong, naming the limit.
pub fn check_client_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(format!(
            "the client name must be 1 to {MAX_NAME_CHARS} characters, found {chars} — choose a shorter name"
        ));
    }
    Ok(())
}

/// One `me.info` file: the only place the client reads or writes its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFile {
    path: PathBuf,
}

impl IdentityFile {
    /// The identity at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The per-user default: `$XDG_CONFIG_HOME/cyberbackup/me.info`, else
    /// `$HOME/.config/cyberbackup/me.info`.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when neither variable is set.
    pub fn default_location() -> Result<Self, ClientError> {
        let from_env = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        let config = from_env("XDG_CONFIG_HOME")
            .filter(|dir| dir.is_absolute())
            .or_else(|| from_env("HOME").map(|home| home.join(".config")))
            .ok_or_else(|| ClientError::Usage {
                message: "cannot find a place for me.info: neither XDG_CONFIG_HOME nor HOME is set — pass --identity FILE".into(),
            })?;
        Ok(Self::new(
            config.join("cyberbackup").join(IDENTITY_FILE_NAME),
        ))
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the identity; `Ok(None)` when the file does not exist (first run).
    ///
    /// # Errors
    /// [`ClientError::Identity`] when the file cannot be read or is not a valid `me.info`.
    pub fn load(&self) -> Result<Option<Identity>, ClientError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(ClientError::Identity {
                    path: self.path.clone(),
                    reason: err.to_string(),
                });
            }
        };
        let identity = Identity::parse_me_info(&text)
            .map_err(|err| ClientError::identity(&self.path, &err))?;
        Ok(Some(identity))
    }

    /// Writes the identity atomically with mode 0600, replacing any previous file only
    /// once the new one is complete and on disk.
    ///
    /// # Errors
    /// [`ClientError::IdentitySave`] with the IO error; the old file is then untouched.
    pub fn save(&self, identity: &Identity) -> Result<(), ClientError> {
        let text = identity
            .to_me_info()
            .map_err(|err| ClientError::identity(&self.path, &err))?;
        cyberbackup_fs::write_private(&self.path, text.as_bytes()).map_err(|source| {
            ClientError::IdentitySave {
                path: self.path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyberbackup_core::crypto::ClientKeyPair;
    use cyberbackup_core::names::{ClientId, NameField};

    fn identity(name: &str) -> Identity {
        let key = ClientKeyPair::generate(&mut rand_core::OsRng).unwrap();
        Identity::new(
            NameField::new(name.as_bytes().to_vec()).unwrap(),
            ClientId([7; 16]),
            key,
        )
    }

    #[test]
    fn save_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = IdentityFile::new(dir.path().join("sub").join("me.info"));
        assert!(file.load().unwrap().is_none());
        file.save(&identity("alice")).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(loaded.name().as_bytes(), b"alice");
        assert_eq!(loaded.client_id(), ClientId([7; 16]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(file.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("me.info")]);
    }

    #[test]
    fn a_bad_file_is_an_identity_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("me.info");
        fs::write(&path, "bob\nnot-a-uuid\nAAAA\n").unwrap();
        let err = IdentityFile::new(&path).load().unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_IDENTITY);
        let message = err.to_string();
        assert!(message.contains("me.info"), "{message}");
        assert!(message.contains("not-a-uuid"), "{message}");
    }
}
