//! Opening a repository: unwrap the master key with this machine's device key (or, to
//! recover on a new machine, the passphrase), verify the config, and create the repository
//! on first use. Also `key list` / `key add` / `key passwd` / `key remove`.
//!
//! The device key lives in `<dir of the identity>/cyberbackup-device.key` (64 hex digits,
//! mode 0600, written atomically by [`cyberbackup_fs::write_private`]); one device key can
//! wrap the master keys of several repositories (servers).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cyberbackup_core::repo::{
    DeviceKey, KdfParams, KeyObject, KeyWrap, MasterKey, RepoConfig, RepoError, RepoKeys,
};
use cyberbackup_core::v4::wire::ErrorCode;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::remote::RepoRemote;
use crate::v4::V4ClientError;

/// File name of the device key, beside the identity file.
pub const DEVICE_KEY_FILE: &str = "cyberbackup-device.key";
/// Pack target of a new repository (16 MiB).
pub const NEW_REPO_PACK_TARGET_BYTES: u32 = 16 << 20;

/// What opening needs: where the device key is, the passphrase if the user gave one, and
/// the label new key objects get.
#[derive(Clone)]
pub struct KeyOptions {
    /// The device key file ([`device_key_path`] of the identity file).
    pub device_key: PathBuf,
    /// The passphrase (CYBERBACKUP_PASSWORD, --password-file or a prompt; the CLI reads it).
    pub passphrase: Option<Zeroizing<Vec<u8>>>,
    /// Label of key objects this machine adds (its host name).
    pub label: Vec<u8>,
    /// Argon2id cost of new passphrase key objects ([`KdfParams::DEFAULT`]).
    pub kdf: KdfParams,
}

impl std::fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOptions")
            .field("device_key", &self.device_key)
            .field("passphrase", &self.passphrase.as_ref().map(|_| ".."))
            .field("label", &String::from_utf8_lossy(&self.label))
            .finish_non_exhaustive()
    }
}

impl KeyOptions {
    /// Options with the device key beside `identity`, no passphrase, the host name as label
    /// and the default KDF cost.
    #[must_use]
    pub fn new(identity: &Path) -> Self {
        Self {
            device_key: device_key_path(identity),
            passphrase: None,
            label: super::host_name(),
            kdf: KdfParams::DEFAULT,
        }
    }

    /// Sets the passphrase.
    #[must_use]
    pub fn with_passphrase(mut self, passphrase: &[u8]) -> Self {
        self.passphrase = Some(Zeroizing::new(passphrase.to_vec()));
        self
    }
}

/// How the repository was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenedBy {
    /// It did not exist: created now.
    Created,
    /// This machine's device key opened it.
    DeviceKey,
    /// The passphrase opened it and a device key object was added for this machine.
    Recovered,
}

/// An open repository: its keys and verified config.
pub struct OpenRepository {
    /// The sub-keys.
    pub keys: RepoKeys,
    /// The verified config.
    pub config: RepoConfig,
    /// How it was opened.
    pub opened_by: OpenedBy,
    /// Key objects, as stored (for `key list`).
    pub key_objects: Vec<KeyObject>,
    /// The key object this session opened the repository with (never removed by it).
    opened_with: KeyObject,
    /// A warning for the user (created without a passphrase: no recovery elsewhere yet).
    pub warning: Option<String>,
    master: MasterKey,
}

impl OpenRepository {
    /// Why the repository cannot be restored on another machine yet: it has no passphrase
    /// key object (only device keys), or `None`. Shown on every open until one is set.
    #[must_use]
    pub fn recovery_warning(&self) -> Option<String> {
        (!self.has_passphrase_key()).then(|| {
            self.warning.clone().unwrap_or_else(|| {
                "the repository has no passphrase: if this machine is lost, its backups cannot be restored elsewhere — set one with `cyberbackup-client key passwd` (or in the UI's Snapshots panel)".to_owned()
            })
        })
    }

    /// Whether a passphrase key object exists (`key passwd` then needs the current one).
    #[must_use]
    pub fn has_passphrase_key(&self) -> bool {
        self.key_objects.iter().any(is_passphrase)
    }
}

impl std::fmt::Debug for OpenRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRepository")
            .field("config", &self.config)
            .field("opened_by", &self.opened_by)
            .field("key_objects", &self.key_objects.len())
            .finish_non_exhaustive()
    }
}

/// One row of `key list`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// Position in the repository's key list.
    pub index: usize,
    /// The key object's ID ([`key_id`]): what `key remove` takes.
    pub id: String,
    /// Whether this session opened the repository with it.
    pub current: bool,
    /// `device` or `passphrase`.
    pub kind: &'static str,
    /// The label given at creation (lossy UTF-8, for display).
    pub label: String,
}

/// The device key file that belongs to the identity file `identity`.
#[must_use]
pub fn device_key_path(identity: &Path) -> PathBuf {
    identity
        .parent()
        .unwrap_or(Path::new("."))
        .join(DEVICE_KEY_FILE)
}

/// Opens the client's repository, creating it when the server has none.
///
/// Creating: a new master key, a config (random repository ID, default chunker, 16 MiB
/// packs), a device key object (the device key file is created if missing) and, with a
/// passphrase, a passphrase key object. Without a passphrase the result carries a warning.
/// Opening: the device key first, then the passphrase; a passphrase open adds a device key
/// object for this machine ("recover").
///
/// # Errors
/// [`V4ClientError::NoUsableKey`] when nothing opens a key object; [`V4ClientError::Repo`]
/// for a damaged config or key object (or a config that fails its MAC);
/// [`V4ClientError::Local`] for the device key file; the remote's errors.
pub async fn open_or_create<R: RepoRemote>(
    remote: &mut R,
    options: &KeyOptions,
) -> Result<OpenRepository, V4ClientError> {
    let existing = match remote.open().await? {
        Some(existing) => existing,
        None => match create(remote, options).await? {
            Some(created) => return Ok(created),
            // Another process of this client (the UI and the scheduler, two backups started
            // at once) created it between our open and our create: open that one.
            None => remote.open().await?.ok_or_else(|| V4ClientError::Usage {
                message:
                    "the repository was created by another connection and is gone again; retry"
                        .into(),
            })?,
        },
    };
    let key_objects = existing
        .keys
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            KeyObject::decode(bytes).map_err(|source| {
                super::repo_error(format!("key object {index} of the repository"), source)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let device = read_device_key(&options.device_key)?;
    let by_device = device.as_ref().and_then(|device| {
        key_objects
            .iter()
            .filter(|object| object.wrap() == KeyWrap::Device)
            .find_map(|object| {
                let master = object.unwrap_with_device_key(device).ok()?;
                Some((master, object.clone()))
            })
    });
    let (master, opened_with, opened_by) = match by_device {
        Some((master, object)) => (master, object, OpenedBy::DeviceKey),
        None => {
            let (master, object) = unwrap_with_passphrase(&key_objects, options)?;
            (master, object, OpenedBy::Recovered)
        }
    };
    let keys = master.derive();
    let config = RepoConfig::decode(&existing.config, &keys)
        .map_err(|source| super::repo_error("the repository config", source))?;
    let mut open = OpenRepository {
        keys,
        config,
        opened_by,
        key_objects,
        opened_with,
        warning: None,
        master,
    };
    if opened_by == OpenedBy::Recovered {
        let device = match device {
            Some(device) => device,
            None => new_device_key(&options.device_key)?,
        };
        let object =
            KeyObject::wrap_with_device_key(&open.master, &device, &options.label, &mut OsRng)
                .map_err(key_error)?;
        add_key_object(remote, &mut open, object).await?;
    }
    Ok(open)
}

/// The rows of `key list`.
#[must_use]
pub fn list_keys(open: &OpenRepository) -> Vec<KeyInfo> {
    open.key_objects
        .iter()
        .enumerate()
        .map(|(index, object)| KeyInfo {
            index,
            id: key_id(object),
            current: *object == open.opened_with,
            kind: match object.wrap() {
                KeyWrap::Device => "device",
                _ => "passphrase",
            },
            label: String::from_utf8_lossy(object.label()).into_owned(),
        })
        .collect()
}

/// The ID of a key object ([`KeyObject::id_of`] its encoding).
#[must_use]
pub fn key_id(object: &KeyObject) -> String {
    KeyObject::id_of(&object.encode())
}

/// `key passwd`: adds a key object for `new`, then removes every passphrase key object that
/// `current` opens, so the old passphrase no longer opens the repository (no data is
/// re-encrypted: the master key stays). A repository without a passphrase key object gets
/// its first. Returns how many key objects were replaced.
///
/// # Errors
/// [`V4ClientError::Usage`] when the repository has passphrase key objects but `current` is
/// `None`; [`V4ClientError::NoUsableKey`] when `current` opens none of them; the remote's
/// errors (an append-only device is refused the removal: the new passphrase was added and
/// the old one still works until a manage device or the operator removes it).
pub async fn change_passphrase<R: RepoRemote>(
    remote: &mut R,
    open: &mut OpenRepository,
    current: Option<&[u8]>,
    new: &[u8],
    kdf: KdfParams,
) -> Result<usize, V4ClientError> {
    let replaced: Vec<KeyObject> = match (open.has_passphrase_key(), current) {
        (false, _) => Vec::new(),
        (true, None) => {
            return Err(V4ClientError::Usage {
                message: "key passwd needs the current passphrase: set CYBERBACKUP_PASSWORD, give --password-file, or run it on a terminal".into(),
            });
        }
        (true, Some(current)) => {
            let opened: Vec<KeyObject> = open
                .key_objects
                .iter()
                .filter(|object| is_passphrase(object))
                .filter(|object| object.unwrap_with_passphrase(current).is_ok())
                .cloned()
                .collect();
            if opened.is_empty() {
                return Err(wrong_passphrase());
            }
            opened
        }
    };
    add_passphrase_key(remote, open, new, &super::host_name(), kdf).await?;
    for object in &replaced {
        match remote.remove_key(Bytes::from(object.encode())).await {
            Ok(()) => open.key_objects.retain(|stored| stored != object),
            Err(err) if err.code() == Some(ErrorCode::FORBIDDEN) => {
                return Err(V4ClientError::Usage {
                    message: format!(
                        "the new passphrase was added, but the old one still opens the repository: {err}; remove its key object ({}) with `key remove` from a manage device",
                        key_id(object)
                    ),
                });
            }
            Err(err) => return Err(err),
        }
    }
    Ok(replaced.len())
}

/// `key remove ID`: removes the key object whose [`key_id`] starts with `id` (a lost
/// device's key, an old passphrase). The key object this session opened the repository with
/// is kept (remove it from another machine), and the server never removes the last one.
///
/// # Errors
/// [`V4ClientError::Usage`] when `id` matches no key object, several, or the current one;
/// the remote's errors (`FORBIDDEN` for an append-only device or the last key object).
pub async fn remove_key<R: RepoRemote>(
    remote: &mut R,
    open: &mut OpenRepository,
    id: &str,
) -> Result<KeyInfo, V4ClientError> {
    let id = id.to_ascii_lowercase();
    let rows = list_keys(open);
    let matching: Vec<&KeyInfo> = rows.iter().filter(|row| row.id.starts_with(&id)).collect();
    let row = match matching.as_slice() {
        [row] if !id.is_empty() => *row,
        [] | [_] => {
            return Err(V4ClientError::Usage {
                message: format!("no key object has the ID {id:?}; `key list` shows the IDs"),
            });
        }
        _ => {
            return Err(V4ClientError::Usage {
                message: format!("{id:?} names several key objects; give more of the ID"),
            });
        }
    };
    if row.current {
        return Err(V4ClientError::Usage {
            message: format!(
                "key object {} is the one this machine opened the repository with; remove it from another machine (or replace a passphrase with `key passwd`)",
                row.id
            ),
        });
    }
    let object = open
        .key_objects
        .get(row.index)
        .cloned()
        .ok_or_else(|| V4ClientError::Usage {
            message: "the key list changed while it was read".into(),
        })?;
    remote.remove_key(Bytes::from(object.encode())).await?;
    open.key_objects.remove(row.index);
    Ok(row.clone())
}

/// `key add` (and the first step of `key passwd`): wraps the master key with a new
/// passphrase and stores the key object.
///
/// # Errors
/// [`V4ClientError::Repo`] for KDF parameters argon2 refuses; the remote's errors.
pub async fn add_passphrase_key<R: RepoRemote>(
    remote: &mut R,
    open: &mut OpenRepository,
    passphrase: &[u8],
    label: &[u8],
    kdf: KdfParams,
) -> Result<(), V4ClientError> {
    let object = KeyObject::wrap_with_passphrase(&open.master, passphrase, kdf, label, &mut OsRng)
        .map_err(key_error)?;
    add_key_object(remote, open, object).await
}

/// Creates the repository; `None` when the server refused because it exists already
/// (created by another connection since this one looked).
async fn create<R: RepoRemote>(
    remote: &mut R,
    options: &KeyOptions,
) -> Result<Option<OpenRepository>, V4ClientError> {
    let master = MasterKey::generate(&mut OsRng);
    let keys = master.derive();
    let mut repo_id = [0u8; 16];
    OsRng.fill_bytes(&mut repo_id);
    let config = RepoConfig {
        pack_target_bytes: NEW_REPO_PACK_TARGET_BYTES,
        ..RepoConfig::new(repo_id)
    };
    let config_bytes = config
        .encode(&keys)
        .map_err(|source| super::repo_error("the new repository config", source))?;
    let device = match read_device_key(&options.device_key)? {
        Some(device) => device,
        None => new_device_key(&options.device_key)?,
    };
    let device_object =
        KeyObject::wrap_with_device_key(&master, &device, &options.label, &mut OsRng)
            .map_err(key_error)?;
    let passphrase_object = match &options.passphrase {
        Some(passphrase) => Some(
            KeyObject::wrap_with_passphrase(
                &master,
                passphrase,
                options.kdf,
                &options.label,
                &mut OsRng,
            )
            .map_err(key_error)?,
        ),
        None => None,
    };
    let created = remote
        .create(
            Bytes::from(config_bytes),
            Bytes::from(device_object.encode()),
        )
        .await;
    match created {
        Err(err) if err.code() == Some(ErrorCode::EXISTS) => return Ok(None),
        other => other?,
    }
    let mut open = OpenRepository {
        keys,
        config,
        opened_by: OpenedBy::Created,
        key_objects: vec![device_object.clone()],
        opened_with: device_object,
        warning: None,
        master,
    };
    match passphrase_object {
        Some(object) => add_key_object(remote, &mut open, object).await?,
        None => {
            open.warning = Some(format!(
                "the repository was created with this machine's device key only ({}): to restore on another machine, first run `key passwd` here to set a passphrase, or keep a copy of that file",
                options.device_key.display()
            ));
        }
    }
    Ok(Some(open))
}

async fn add_key_object<R: RepoRemote>(
    remote: &mut R,
    open: &mut OpenRepository,
    object: KeyObject,
) -> Result<(), V4ClientError> {
    remote.add_key(Bytes::from(object.encode())).await?;
    open.key_objects.push(object);
    Ok(())
}

fn unwrap_with_passphrase(
    key_objects: &[KeyObject],
    options: &KeyOptions,
) -> Result<(MasterKey, KeyObject), V4ClientError> {
    let Some(passphrase) = &options.passphrase else {
        return Err(V4ClientError::NoUsableKey {
            reason: format!(
                "the device key {} opens no key object of this repository and no passphrase was given",
                options.device_key.display()
            ),
        });
    };
    key_objects
        .iter()
        .filter(|object| is_passphrase(object))
        .find_map(|object| {
            let master = object.unwrap_with_passphrase(passphrase).ok()?;
            Some((master, object.clone()))
        })
        .ok_or_else(wrong_passphrase)
}

fn is_passphrase(object: &KeyObject) -> bool {
    matches!(object.wrap(), KeyWrap::Passphrase(_))
}

fn wrong_passphrase() -> V4ClientError {
    V4ClientError::NoUsableKey {
        reason: "the passphrase opens no key object of this repository (wrong passphrase?)".into(),
    }
}

fn key_error(source: RepoError) -> V4ClientError {
    super::repo_error("cannot make a key object", source)
}

fn read_device_key(path: &Path) -> Result<Option<DeviceKey>, V4ClientError> {
    let local = |source| V4ClientError::Local {
        what: "cannot read the device key",
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(local(err)),
    };
    let mode = std::fs::metadata(path).map_err(local)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(local(io::Error::other(format!(
            "mode {:o} lets others read it: run `chmod 600 {}`",
            mode & 0o777,
            path.display()
        ))));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| {
        local(io::Error::other(
            "not 64 hexadecimal digits: the file is damaged; restore it from a backup, or move it away and recover with the passphrase",
        ))
    })?;
    Ok(Some(DeviceKey::from_bytes(*bytes)))
}

/// Generates this machine's device key and saves it at `path` — unless another process
/// (the UI and the scheduler, two backups started at once) saved one first: then that key is
/// the device key, read back, so no key object is ever wrapped with a key the file lost.
fn new_device_key(path: &Path) -> Result<DeviceKey, V4ClientError> {
    let device = DeviceKey::generate(&mut OsRng);
    let text = Zeroizing::new(format!("{}\n", hex::encode(device.as_bytes())));
    let created = cyberbackup_fs::create_private(path, text.as_bytes()).map_err(|source| {
        V4ClientError::Local {
            what: "cannot write the device key",
            path: path.to_path_buf(),
            source,
        }
    })?;
    if created {
        return Ok(device);
    }
    read_device_key(path)?.ok_or_else(|| V4ClientError::Local {
        what: "cannot read the device key",
        path: path.to_path_buf(),
        source: io::Error::other("it was created by another process and removed again"),
    })
}
