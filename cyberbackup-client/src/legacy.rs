//! Legacy mode: `transfer.info` and `me.info` in the working directory, as the old v3
//! clients read them (spec section 9), so this client is a drop-in replacement.
//!
//! `transfer.info`: line 1 `host:port`, line 2 the client name (1 to 100 characters),
//! lines 3.. one file path each (at least one). Blank lines after line 2 are ignored.

use std::path::{Path, PathBuf};

use crate::error::ClientError;
use crate::identity::{IDENTITY_FILE_NAME, IdentityFile, MAX_NAME_CHARS, check_client_name};

/// File name of the legacy job description.
pub const TRANSFER_INFO_FILE_NAME: &str = "transfer.info";
/// Longest client name `transfer.info` allows, in characters (the same rule as
/// `backup --name`: [`crate::identity::MAX_NAME_CHARS`]).
pub const MAX_LEGACY_NAME_CHARS: usize = MAX_NAME_CHARS;

/// A parsed `transfer.info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferInfo {
    /// Server address as `host:port`.
    pub server: String,
    /// Client name.
    pub name: String,
    /// Files to back up, as written (relative paths are relative to the working directory).
    pub files: Vec<PathBuf>,
}

/// A legacy job: what `transfer.info` asks for and where `me.info` lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyJob {
    /// The parsed `transfer.info`.
    pub transfer: TransferInfo,
    /// `me.info` in the same directory.
    pub identity: IdentityFile,
}

/// Whether `dir` holds a `transfer.info` (legacy mode is then the default).
#[must_use]
pub fn has_transfer_info(dir: &Path) -> bool {
    dir.join(TRANSFER_INFO_FILE_NAME).is_file()
}

/// Reads `dir/transfer.info`; `me.info` is taken from (and written to) `dir` as well.
///
/// # Errors
/// [`ClientError::TransferInfo`] naming the file and the line at fault.
pub fn load_job(dir: &Path) -> Result<LegacyJob, ClientError> {
    let path = dir.join(TRANSFER_INFO_FILE_NAME);
    let text = std::fs::read_to_string(&path).map_err(|err| ClientError::TransferInfo {
        path: path.clone(),
        message: format!(
            "cannot read it: {err} — create it with the server address, your name and the files to back up, one per line"
        ),
    })?;
    let transfer = parse_transfer_info(&text).map_err(|message| ClientError::TransferInfo {
        path: path.clone(),
        message,
    })?;
    let files = transfer
        .files
        .iter()
        .map(|file| {
            if file.is_absolute() || dir == Path::new(".") {
                file.clone()
            } else {
                dir.join(file)
            }
        })
        .collect();
    Ok(LegacyJob {
        transfer: TransferInfo { files, ..transfer },
        identity: IdentityFile::new(if dir == Path::new(".") {
            PathBuf::from(IDENTITY_FILE_NAME)
        } else {
            dir.join(IDENTITY_FILE_NAME)
        }),
    })
}

/// Parses the text of a `transfer.info`.
///
/// # Errors
/// A message naming the line at fault and the expected form.
pub fn parse_transfer_info(text: &str) -> Result<TransferInfo, String> {
    let mut lines = text.lines().map(|line| line.trim_end_matches('\r'));
    let Some(address) = lines.next().map(str::trim).filter(|l| !l.is_empty()) else {
        return Err("line 1 must be the server address as HOST:PORT, e.g. 127.0.0.1:1256, but the file is empty".into());
    };
    let server = parse_address(address).map_err(|why| format!("line 1: {why}"))?;
    let Some(name) = lines.next().map(str::trim) else {
        return Err(
            "line 2 must be your client name (1 to 100 characters), but the file has only 1 line"
                .into(),
        );
    };
    check_client_name(name).map_err(|why| format!("line 2: {why}"))?;
    let files: Vec<PathBuf> = lines
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(PathBuf::from)
        .collect();
    if files.is_empty() {
        return Err("line 3 must be the path of a file to back up, but the file has only 2 lines — add one path per line".into());
    }
    Ok(TransferInfo {
        server,
        name: name.to_owned(),
        files,
    })
}

/// Checks a `host:port` address (host name, IPv4, or `[IPv6]`).
///
/// # Errors
/// What is wrong with it.
pub fn parse_address(address: &str) -> Result<String, String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "{address:?} is not HOST:PORT (e.g. 127.0.0.1:1256): the port is missing"
        ));
    };
    if host.is_empty() {
        return Err(format!("{address:?} is not HOST:PORT: the host is missing"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "{port:?} in {address:?} is not a port: use a number from 1 to 65535"
        )),
        Ok(_) => Ok(address.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_lines_parse_with_crlf_and_extra_files() {
        let info =
            parse_transfer_info("127.0.0.1:1256\r\nMichael Jackson\r\na.txt\r\n\r\ndir/b.bin\n")
                .unwrap();
        assert_eq!(info.server, "127.0.0.1:1256");
        assert_eq!(info.name, "Michael Jackson");
        assert_eq!(
            info.files,
            [PathBuf::from("a.txt"), PathBuf::from("dir/b.bin")]
        );
    }

    #[test]
    fn two_lines_are_refused_with_a_fix() {
        let err = parse_transfer_info("127.0.0.1:1256\nalice\n").unwrap_err();
        assert!(err.contains("only 2 lines"), "{err}");
        let err = parse_transfer_info("127.0.0.1:1256\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_transfer_info("").unwrap_err().contains("line 1"));
    }

    #[test]
    fn bad_ports_and_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "host:http",
            ":1256",
        ] {
            let err = parse_transfer_info(&format!("{bad}\nalice\na.txt\n")).unwrap_err();
            assert!(err.starts_with("line 1"), "{bad}: {err}");
        }
        assert!(parse_address("[::1]:1256").is_ok());
        assert!(parse_address("backup.example:65535").is_ok());
    }

    #[test]
    fn names_longer_than_100_characters_are_refused() {
        let long = "é".repeat(101);
        let err = parse_transfer_info(&format!("h:1\n{long}\na\n")).unwrap_err();
        assert!(err.contains("found 101"), "{err}");
        let ok = "é".repeat(100);
        assert!(parse_transfer_info(&format!("h:1\n{ok}\na\n")).is_ok());
    }

    #[test]
    fn load_job_resolves_files_against_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("transfer.info"), "h:1\nn\nx.txt\n/abs/y\n").unwrap();
        let job = load_job(dir.path()).unwrap();
        assert_eq!(
            job.transfer.files,
            [dir.path().join("x.txt"), PathBuf::from("/abs/y")]
        );
        assert_eq!(job.identity.path(), dir.path().join("me.info"));
    }
}
