//! The server's long-term v4 key: a JSON file (`docs/protocol-v4.md` §6) created at first
//! start, written atomically (temp file, fsync, rename, fsync directory) with mode 0600, and
//! refused when group or others may read it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cyberbackup_core::v4::noise::{StaticKeypair, to_hex};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

/// `format` value of the key file.
pub const SERVER_KEY_FORMAT: &str = "cyberbackup-server-key-v4";

/// Why the server key file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error(
        "cannot {op} the v4 server key file {path}: {source} — check the path (identity_key_file) and its directory's permissions"
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
    #[error("the v4 server key file {path} has mode {mode:o}: it must not be readable by others — run `chmod 600 {}`", path.display())]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a valid key file.
    #[error(
        "the v4 server key file {path} is invalid ({reason}); restore it from a backup, or delete it to create a new key (every client will then refuse the changed key)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    private_key: String,
    public_key: String,
}

/// Loads the key at `path`, creating it (and its directory) when it does not exist.
/// Returns the key and whether it was created now.
///
/// # Errors
/// An [`IdentityError`] naming the file and the fix.
pub fn load_or_create(path: &Path) -> Result<(StaticKeypair, bool), IdentityError> {
    match load(path) {
        Ok(keys) => Ok((keys, false)),
        Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let keys = StaticKeypair::generate(&mut OsRng);
            write_atomically(path, &keys)?;
            Ok((keys, true))
        }
        Err(err) => Err(err),
    }
}

/// Loads an existing key file.
///
/// # Errors
/// An [`IdentityError`] naming the file and the fix.
pub fn load(path: &Path) -> Result<StaticKeypair, IdentityError> {
    let io_err = |op| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { op, path, source }
    };
    let meta = fs::metadata(path).map_err(io_err("read"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io_err("read"))?);
    let invalid = |reason: &str| IdentityError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| invalid(&e.to_string()))?;
    if file.format != SERVER_KEY_FORMAT {
        return Err(invalid(&format!("format is {:?}", file.format)));
    }
    let keys =
        StaticKeypair::from_private_hex(&file.private_key).map_err(|e| invalid(&e.to_string()))?;
    if to_hex(&keys.public().0) != file.public_key.to_ascii_lowercase() {
        return Err(invalid("public_key does not match private_key"));
    }
    Ok(keys)
}

fn write_atomically(path: &Path, keys: &StaticKeypair) -> Result<(), IdentityError> {
    let io_err = |op| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { op, path, source }
    };
    let file = KeyFile {
        format: SERVER_KEY_FORMAT.to_owned(),
        private_key: keys.private_hex().to_string(),
        public_key: to_hex(&keys.public().0),
    };
    let text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&file).map_err(|e| {
        IdentityError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?);
    // Sized up front: growing the buffer would leave an unzeroized copy of the key behind.
    let mut contents = zeroize::Zeroizing::new(Vec::with_capacity(text.len() + 1));
    contents.extend_from_slice(text.as_bytes());
    contents.push(b'\n');
    cyberbackup_fs::write_private(path, &contents).map_err(io_err("write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("server-v4.key");

        let (first, created) = load_or_create(&path).unwrap();
        let (again, created_again) = load_or_create(&path).unwrap();

        assert!(created && !created_again);
        assert_eq!(first.public(), again.public());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(SERVER_KEY_FORMAT));
    }

    #[test]
    fn readable_by_others_or_tampered_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server-v4.key");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let open = load(&path).unwrap_err();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let public = text.split("\"public_key\": \"").nth(1).unwrap()[..64].to_owned();
        let flipped = if public.starts_with('0') { "1" } else { "0" };
        fs::write(
            &path,
            text.replacen(&public, &format!("{flipped}{}", &public[1..]), 1),
        )
        .unwrap();
        let tampered = load(&path).unwrap_err();

        assert!(
            matches!(open, IdentityError::TooOpen { mode: 0o644, .. }),
            "{open}"
        );
        assert!(open.to_string().contains("chmod 600"));
        assert!(
            matches!(tampered, IdentityError::Invalid { .. }),
            "{tampered}"
        );
    }
}
