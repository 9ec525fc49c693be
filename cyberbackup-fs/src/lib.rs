//! File helpers shared by the server and the client (kept out of `cyberbackup-core`, which
//! does no IO): writing a private file atomically and creating a private directory.
//!
//! [`write_private`] is the one writer of the files that hold keys or identities (the client's
//! `me.info` and v4 identity, the server's v4 key, the client UI's history): the content goes to
//! a fresh temp file in the same directory (`tempfile` creates it with `O_EXCL` and mode 0600),
//! which is fsynced, renamed over the destination (`persist`) and whose directory is fsynced.
//! Readers see the whole old file or the whole new one, and a crash leaves no half-written key.
//! [`create_private`] is its first-use twin, for keys generated once (the device key, the v4
//! identity): it never replaces a file another process created meanwhile.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use tempfile::NamedTempFile;

/// Writes `contents` to `path` atomically with mode 0600, creating its directory (mode 0700)
/// when missing. On error the previous file, if any, is untouched and no temp file remains.
///
/// # Errors
/// The IO error of the step that failed (creating the directory or temp file, writing,
/// fsync, rename).
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (dir, temp) = synced_temp(path, contents)?;
    temp.persist(path).map_err(|err| err.error)?;
    File::open(dir)?.sync_all()
}

/// Like [`write_private`], but only when `path` does not exist yet (the temp file is linked
/// to `path`, which fails when something is there): returns `false`, leaving the existing
/// file as it is, when it was there first. Two processes creating one key file at once thus
/// end with one key that both read back, instead of the later write replacing a key the
/// earlier one already used.
///
/// # Errors
/// As [`write_private`].
pub fn create_private(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let (dir, temp) = synced_temp(path, contents)?;
    match temp.persist_noclobber(path) {
        Ok(_) => {
            File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err.error),
    }
}

/// A synced temp file holding `contents` in the directory of `path` (created 0700 when
/// missing), and that directory.
fn synced_temp<'p>(path: &'p Path, contents: &[u8]) -> io::Result<(&'p Path, NamedTempFile)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".cb-write-")
        .tempfile_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    Ok((dir, temp))
}

/// Creates `dir` and its missing parents with mode 0700 (on Unix); an existing directory is
/// left as it is.
///
/// # Errors
/// The IO error of `create_dir_all`.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_0600_in_a_new_0700_directory_and_leaves_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("b");
        let path = dir.join("key.json");

        write_private(&path, b"first").unwrap();
        write_private(&path, b"second").unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("key.json")]);
    }

    #[test]
    fn create_private_keeps_a_file_that_is_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("device.key");

        assert!(create_private(&path, b"first").unwrap());
        assert!(!create_private(&path, b"second").unwrap());

        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        let names = fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(names, 1, "no temp file left behind");
    }

    #[test]
    fn an_existing_readable_file_is_replaced_by_a_private_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("me.info");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        write_private(&path, b"new").unwrap();

        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("me.info");
        fs::write(&path, b"old").unwrap();
        // A directory in the way of the rename: persist fails.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();

        assert!(write_private(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 2, "no temp file left behind");
    }
}
