//! The UI's small local store: the last server address, name and protocol settings (with
//! an enrollment token when one was given, hence private), and the history of past backups,
//! in one JSON file (written atomically: temp file, fsync, rename; mode 0600).

use std::path::{Path, PathBuf};

use cyberbackup_core::v4::noise::Fingerprint;
use serde::{Deserialize, Serialize};

use crate::v4::V4Options;

/// History entries kept (oldest dropped first).
pub const MAX_HISTORY: usize = 200;

/// The wire protocol the UI backs up with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UiProtocol {
    /// Protocol v4 (the default): authenticated, resumable, with list and restore.
    #[default]
    V4,
    /// The legacy protocol, for servers that speak only v3 (backup only, `me.info`).
    V3,
}

impl UiProtocol {
    /// `"v4"` or `"v3"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V3 => "v3",
        }
    }
}

/// Server address, client name and protocol options, kept between runs.
///
/// Files written before the protocol fields existed load with v4 and no pin or token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `host:port` of the backup server.
    pub server: String,
    /// Client name.
    pub name: String,
    /// Protocol used for backups (v4 unless the user chose v3 for a legacy server).
    #[serde(default)]
    pub protocol: UiProtocol,
    /// Protocol v4: the server key fingerprint (`sha256:…`) to require instead of trusting
    /// the first key seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_fingerprint: Option<String>,
    /// Protocol v4: the enrollment token for servers that require one (used when the
    /// identity registers; never sent to the page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_token: Option<String>,
}

impl Settings {
    /// The v4 options these settings describe, with the identity file `identity`;
    /// `register` passes the client name so that a first backup registers a new identity
    /// (listing and restoring never register).
    ///
    /// # Errors
    /// A sentence when the saved server fingerprint is malformed.
    pub fn v4_options(&self, identity: &Path, register: bool) -> Result<V4Options, String> {
        let mut options = V4Options::new(self.server.clone(), identity.to_path_buf());
        if register {
            options.name = Some(self.name.clone());
        }
        options.enroll_token.clone_from(&self.enroll_token);
        if let Some(text) = &self.server_fingerprint {
            let fingerprint = text.parse::<Fingerprint>().map_err(|_| {
                format!(
                    "the saved server fingerprint {text:?} is not sha256: followed by 64 hex digits — correct it in the server settings, or clear it"
                )
            })?;
            options.server_fingerprint = Some(fingerprint);
        }
        Ok(options)
    }
}

/// One finished backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Job number (increasing).
    pub id: u64,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// Seconds the backup took.
    pub duration_secs: f64,
    /// Server address.
    pub server: String,
    /// Client name.
    pub name: String,
    /// Files asked for.
    pub files: usize,
    /// Files verified by the server.
    pub verified: usize,
    /// Plaintext bytes of the verified files.
    pub bytes: u64,
    /// `succeeded`, `failed` or `cancelled`.
    pub result: String,
    /// What went wrong, as a sentence, when it did.
    pub message: Option<String>,
    /// The stored names of the files.
    pub file_names: Vec<String>,
    /// `v4` or `v3` (absent in entries written before the UI spoke v4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreData {
    /// Kept settings.
    pub settings: Settings,
    /// Past backups, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// The store file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The store at `path` (created on first save).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where the store lives.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the store; a missing file is an empty store.
    ///
    /// # Errors
    /// A sentence naming the file and what to do when it cannot be read or parsed.
    pub fn load(&self) -> Result<StoreData, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                format!(
                    "the UI history {} is damaged ({err}) — move it away to start a new history",
                    self.path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(StoreData::default()),
            Err(err) => Err(format!(
                "cannot read the UI history {}: {err} — check its permissions",
                self.path.display()
            )),
        }
    }

    /// Writes the store atomically, keeping at most [`MAX_HISTORY`] entries.
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be written.
    pub fn save(&self, data: &StoreData) -> Result<(), String> {
        let mut data = data.clone();
        let excess = data.history.len().saturating_sub(MAX_HISTORY);
        data.history.drain(..excess);
        let fail = |err: std::io::Error| {
            format!(
                "cannot save the UI history {}: {err} — check that the directory is writable",
                self.path.display()
            )
        };
        let json =
            serde_json::to_vec_pretty(&data).map_err(|err| fail(std::io::Error::other(err)))?;
        cyberbackup_fs::write_private(&self.path, &json).map_err(fail)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_caps_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("sub").join("ui.json"));
        let entry = |id| HistoryEntry {
            id,
            started_at: "t".into(),
            duration_secs: 1.0,
            server: "s:1".into(),
            name: "n".into(),
            files: 1,
            verified: 1,
            bytes: 3,
            result: "succeeded".into(),
            message: None,
            file_names: vec!["a".into()],
            protocol: Some("v4".into()),
        };
        let data = StoreData {
            settings: Settings {
                server: "s:1".into(),
                name: "n".into(),
                protocol: UiProtocol::V3,
                server_fingerprint: None,
                enroll_token: Some("t".into()),
            },
            history: (0..(MAX_HISTORY as u64 + 3)).map(entry).collect(),
        };

        let empty = store.load().unwrap();
        store.save(&data).unwrap();
        let loaded = store.load().unwrap();

        assert_eq!(empty, StoreData::default());
        assert_eq!(loaded.settings, data.settings);
        assert_eq!(loaded.history.len(), MAX_HISTORY);
        assert_eq!(loaded.history.first().map(|e| e.id), Some(3));
    }

    #[test]
    fn files_without_protocol_fields_load_as_v4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ui.json");
        std::fs::write(
            &path,
            r#"{"settings":{"server":"s:1","name":"n"},"history":[{"id":1,"started_at":"t","duration_secs":1.0,"server":"s:1","name":"n","files":1,"verified":1,"bytes":3,"result":"succeeded","message":null,"file_names":["a"]}]}"#,
        )
        .unwrap();

        let loaded = Store::new(&path).load().unwrap();

        assert_eq!(loaded.settings.protocol, UiProtocol::V4);
        assert_eq!(loaded.settings.enroll_token, None);
        assert_eq!(
            loaded.history.first().and_then(|h| h.protocol.clone()),
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_store_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("ui.json"));

        store.save(&StoreData::default()).unwrap();

        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_file_is_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ui.json");
        std::fs::write(&path, "{not json").unwrap();

        let err = Store::new(&path).load().unwrap_err();

        assert!(err.contains("move it away"), "{err}");
    }
}
