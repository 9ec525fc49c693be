//! Keys: the repository's random master key, the sub-keys derived from it with BLAKE3
//! `derive_key` and fixed context strings, the one-time AES-256-GCM keys every sealed object
//! uses, and key objects (the master key wrapped by a passphrase through Argon2id, or by a
//! device key) that the server stores but cannot open.
//!
//! All key bytes are zeroized on drop and `Debug` prints none of them. The AEAD is aws-lc-rs's
//! AES-256-GCM; its expanded key schedules live only for the duration of one seal or open
//! call.

use std::fmt;
use std::time::Duration;

use aws_lc_rs::aead;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::error::{ObjectKind, RepoError};
use super::limits::{
    MAX_KDF_ITERATIONS, MAX_KDF_MEMORY_KIB, MAX_KDF_PARALLELISM, MAX_KEY_LABEL_BYTES,
};
use super::wire::{Reader, put_bytes16};

// KDF context strings (docs/repository.md, "Keys"). Do not modify: every existing
// repository's keys depend on them.
const CTX_CHUNKER: &str = "cyberbackup repository v1 chunker gear key";
const CTX_ID: &str = "cyberbackup repository v1 blob id key";
const CTX_DATA: &str = "cyberbackup repository v1 data blob key";
const CTX_TREE: &str = "cyberbackup repository v1 tree blob key";
const CTX_SNAPSHOT: &str = "cyberbackup repository v1 snapshot key";
const CTX_CONFIG: &str = "cyberbackup repository v1 config mac key";
const CTX_GROUP: &str = "cyberbackup repository v1 snapshot group key";
const CTX_DEVICE_WRAP: &str = "cyberbackup repository v1 device wrap key";

/// Bytes of the random salt that makes every sealed object's AEAD key unique.
pub(crate) const SALT_LEN: usize = 24;
/// Bytes of the AES-256-GCM tag.
pub(crate) const TAG_LEN: usize = 16;

/// The constructors and accessor every 256-bit secret key newtype here shares.
macro_rules! secret_key_bytes {
    ($key:ident) => {
        impl $key {
            /// Draws a new key from the injected RNG (the driver passes the OS RNG).
            pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
                let mut key = [0u8; 32];
                rng.fill_bytes(&mut key);
                Self(key)
            }

            /// Wraps stored key bytes (from the identity file).
            #[must_use]
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The key bytes, for the identity file (write it with mode 0600).
            #[must_use]
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }
    };
}

/// A repository's 256-bit master key: generated once, kept in the client's identity file and
/// in key objects. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

secret_key_bytes!(MasterKey);

impl MasterKey {
    /// Derives the repository's sub-keys.
    #[must_use]
    pub fn derive(&self) -> RepoKeys {
        let derive = |context| SubKey(blake3::derive_key(context, &self.0));
        RepoKeys {
            chunker: derive(CTX_CHUNKER),
            id: derive(CTX_ID),
            data: derive(CTX_DATA),
            tree: derive(CTX_TREE),
            snapshot: derive(CTX_SNAPSHOT),
            config: derive(CTX_CONFIG),
            group: derive(CTX_GROUP),
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SubKey(pub(crate) [u8; 32]);

/// The sub-keys of one repository, derived from its [`MasterKey`]: chunker (gear table), blob
/// ID, data blobs, tree blobs, snapshots, config MAC, snapshot groups. Zeroized on drop;
/// `Debug` prints no key.
#[derive(Clone)]
pub struct RepoKeys {
    pub(crate) chunker: SubKey,
    pub(crate) id: SubKey,
    pub(crate) data: SubKey,
    pub(crate) tree: SubKey,
    pub(crate) snapshot: SubKey,
    pub(crate) config: SubKey,
    pub(crate) group: SubKey,
}

impl fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepoKeys(..)")
    }
}

/// A per-device secret that wraps the master key for that device (kept in its identity
/// file, 0600). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DeviceKey([u8; 32]);

secret_key_bytes!(DeviceKey);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// Argon2id cost parameters, recorded in each passphrase key object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane: the starting point calibration scales.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    /// The least memory calibration goes down to (19 MiB, OWASP's Argon2id floor).
    pub const MIN_MEMORY_KIB: u32 = 19 * 1024;

    /// Scales `probe` (which the driver timed at `elapsed` on this machine) so that one
    /// derivation takes about `target`: more passes when faster, less memory (down to
    /// [`Self::MIN_MEMORY_KIB`]) when one pass is already too slow. Pure: the driver owns the
    /// clock.
    #[must_use]
    pub fn calibrate(probe: Self, elapsed: Duration, target: Duration) -> Self {
        let elapsed_ns = elapsed.as_nanos().max(1);
        let ideal = u128::from(probe.iterations) * target.as_nanos() / elapsed_ns;
        if ideal >= 1 {
            let iterations = u32::try_from(ideal.min(u128::from(MAX_KDF_ITERATIONS)))
                .unwrap_or(MAX_KDF_ITERATIONS);
            return Self {
                iterations,
                ..probe
            };
        }
        let per_pass_ns = elapsed_ns / u128::from(probe.iterations.max(1));
        let memory = u128::from(probe.memory_kib) * target.as_nanos() / per_pass_ns.max(1);
        let memory_kib = u32::try_from(memory)
            .unwrap_or(u32::MAX)
            .clamp(Self::MIN_MEMORY_KIB.min(probe.memory_kib), probe.memory_kib);
        Self {
            memory_kib,
            iterations: 1,
            ..probe
        }
    }

    /// Checks the parameters against the format's ceilings (a hostile key object could ask
    /// for terabytes of memory).
    ///
    /// # Errors
    /// [`RepoError::LimitExceeded`] or [`RepoError::Malformed`].
    pub fn validate(&self) -> Result<(), RepoError> {
        let object = ObjectKind::KeyObject;
        for (what, value, max) in [
            ("argon2 memory KiB", self.memory_kib, MAX_KDF_MEMORY_KIB),
            ("argon2 iterations", self.iterations, MAX_KDF_ITERATIONS),
            ("argon2 parallelism", self.parallelism, MAX_KDF_PARALLELISM),
        ] {
            if value > max {
                return Err(RepoError::LimitExceeded {
                    object,
                    what,
                    value: u64::from(value),
                    max: u64::from(max),
                });
            }
        }
        if self.iterations == 0 || self.parallelism == 0 || self.memory_kib < 8 * self.parallelism {
            return Err(RepoError::Malformed {
                object,
                reason: "argon2 needs at least 1 pass, 1 lane and 8 KiB of memory per lane",
            });
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, RepoError> {
        self.validate()?;
        let kdf_error = |err: argon2::Error| RepoError::Kdf {
            reason: err.to_string(),
        };
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(kdf_error)?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, out.as_mut())
            .map_err(kdf_error)?;
        Ok(out)
    }
}

/// How a key object wraps the master key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyWrap {
    /// By a passphrase through Argon2id with these parameters.
    Passphrase(KdfParams),
    /// By a [`DeviceKey`].
    Device,
}

const KEY_MAGIC: [u8; 4] = *b"CBKY"; // do not modify
const KEY_VERSION: u8 = 1;
const WRAP_PASSPHRASE: u8 = 1; // do not modify
const WRAP_DEVICE: u8 = 2; // do not modify
const KEY_SALT_LEN: usize = 32;
const WRAPPED_LEN: usize = 32 + TAG_LEN;

/// The master key wrapped for one passphrase or device: stored by the server, opened only
/// by the client. Layout in docs/repository.md, "Key objects".
#[derive(Clone, PartialEq, Eq)]
pub struct KeyObject {
    wrap: KeyWrap,
    salt: [u8; KEY_SALT_LEN],
    label: Vec<u8>,
    wrapped: [u8; WRAPPED_LEN],
}

impl fmt::Debug for KeyObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyObject")
            .field("wrap", &self.wrap)
            .field("label", &String::from_utf8_lossy(&self.label))
            .finish_non_exhaustive()
    }
}

impl KeyObject {
    /// Wraps `master` with a passphrase (Argon2id with `params`, a fresh random salt).
    ///
    /// # Errors
    /// Invalid `params` or a label longer than 255 bytes.
    pub fn wrap_with_passphrase(
        master: &MasterKey,
        passphrase: &[u8],
        params: KdfParams,
        label: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, RepoError> {
        let salt = random_salt(rng);
        let kek = params.derive(passphrase, &salt)?;
        Self::seal(master, KeyWrap::Passphrase(params), salt, label, &kek)
    }

    /// Wraps `master` with a device key (a fresh random salt).
    ///
    /// # Errors
    /// A label longer than 255 bytes.
    pub fn wrap_with_device_key(
        master: &MasterKey,
        device: &DeviceKey,
        label: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, RepoError> {
        let salt = random_salt(rng);
        let kek = device_kek(device, &salt);
        Self::seal(master, KeyWrap::Device, salt, label, &kek)
    }

    /// Unwraps the master key with a passphrase (runs Argon2id: hundreds of milliseconds).
    ///
    /// # Errors
    /// [`RepoError::WrongKey`], or [`RepoError::ApiMisuse`] for a device key object.
    pub fn unwrap_with_passphrase(&self, passphrase: &[u8]) -> Result<MasterKey, RepoError> {
        let KeyWrap::Passphrase(params) = self.wrap else {
            return Err(RepoError::ApiMisuse(
                "this key object is wrapped by a device key",
            ));
        };
        let kek = params.derive(passphrase, &self.salt)?;
        self.open(&kek)
    }

    /// Unwraps the master key with a device key.
    ///
    /// # Errors
    /// [`RepoError::WrongKey`], or [`RepoError::ApiMisuse`] for a passphrase key object.
    pub fn unwrap_with_device_key(&self, device: &DeviceKey) -> Result<MasterKey, RepoError> {
        if self.wrap != KeyWrap::Device {
            return Err(RepoError::ApiMisuse(
                "this key object is wrapped by a passphrase",
            ));
        }
        self.open(&device_kek(device, &self.salt))
    }

    /// How this object wraps the key.
    #[must_use]
    pub fn wrap(&self) -> KeyWrap {
        self.wrap
    }

    /// The label given at creation (e.g. a host name), for `key list`.
    #[must_use]
    pub fn label(&self) -> &[u8] {
        &self.label
    }

    /// The object's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// The ID that names a key object in `key list`, `key remove` and the server's
    /// messages: the first 8 hex digits of the BLAKE3 hash of its encoded bytes (`encoded`,
    /// what the server stores). It says nothing about the key.
    #[must_use]
    pub fn id_of(encoded: &[u8]) -> String {
        hex::encode(
            blake3::hash(encoded)
                .as_bytes()
                .get(..4)
                .unwrap_or_default(),
        )
    }

    /// Parses a key object (it is opened later, with a passphrase or device key).
    ///
    /// # Errors
    /// Truncated, wrong magic, unknown version or wrap kind, KDF parameters above the limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepoError> {
        let mut r = Reader::new(bytes, ObjectKind::KeyObject);
        r.magic(KEY_MAGIC)?;
        r.version(KEY_VERSION)?;
        let wrap = match r.u8()? {
            WRAP_PASSPHRASE => {
                let params = KdfParams {
                    memory_kib: r.u32()?,
                    iterations: r.u32()?,
                    parallelism: r.u32()?,
                };
                params.validate()?;
                KeyWrap::Passphrase(params)
            }
            WRAP_DEVICE => KeyWrap::Device,
            _ => return Err(r.malformed("unknown wrap kind (expected 1 passphrase or 2 device)")),
        };
        let salt = r.array()?;
        let label = r.bytes16("label length", MAX_KEY_LABEL_BYTES)?.to_vec();
        let wrapped = r.array()?;
        r.finish()?;
        Ok(Self {
            wrap,
            salt,
            label,
            wrapped,
        })
    }

    fn seal(
        master: &MasterKey,
        wrap: KeyWrap,
        salt: [u8; KEY_SALT_LEN],
        label: &[u8],
        kek: &[u8; 32],
    ) -> Result<Self, RepoError> {
        super::wire::check_limit(
            ObjectKind::KeyObject,
            "label length",
            label.len(),
            MAX_KEY_LABEL_BYTES,
        )?;
        let mut object = Self {
            wrap,
            salt,
            label: label.to_vec(),
            wrapped: [0; WRAPPED_LEN],
        };
        let mut buf = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        buf.extend_from_slice(master.as_bytes());
        seal_in_place(kek, &object.header(), &mut buf, 0)?;
        object.wrapped.copy_from_slice(&buf);
        Ok(object)
    }

    fn open(&self, kek: &[u8; 32]) -> Result<MasterKey, RepoError> {
        let mut buf = Zeroizing::new(self.wrapped.to_vec());
        let plain = open_in_place(kek, &self.header(), &mut buf, ObjectKind::KeyObject)
            .map_err(|_| RepoError::WrongKey)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(plain);
        Ok(MasterKey(key))
    }

    fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.label.len());
        out.extend_from_slice(&KEY_MAGIC);
        out.push(KEY_VERSION);
        match self.wrap {
            KeyWrap::Passphrase(p) => {
                out.push(WRAP_PASSPHRASE);
                out.extend_from_slice(&p.memory_kib.to_le_bytes());
                out.extend_from_slice(&p.iterations.to_le_bytes());
                out.extend_from_slice(&p.parallelism.to_le_bytes());
            }
            KeyWrap::Device => out.push(WRAP_DEVICE),
        }
        out.extend_from_slice(&self.salt);
        // The label was checked against its limit when the object was made or decoded.
        let _ = put_bytes16(
            &mut out,
            ObjectKind::KeyObject,
            "label length",
            &self.label,
            MAX_KEY_LABEL_BYTES,
        );
        out
    }
}

fn random_salt(rng: &mut impl CryptoRngCore) -> [u8; KEY_SALT_LEN] {
    let mut salt = [0u8; KEY_SALT_LEN];
    rng.fill_bytes(&mut salt);
    salt
}

fn device_kek(device: &DeviceKey, salt: &[u8; KEY_SALT_LEN]) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new([0u8; 64]);
    material[..32].copy_from_slice(device.as_bytes());
    material[32..].copy_from_slice(salt);
    Zeroizing::new(blake3::derive_key(CTX_DEVICE_WRAP, material.as_ref()))
}

/// Draws the random salt of one sealed object.
pub(crate) fn new_salt(rng: &mut impl CryptoRngCore) -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    salt
}

/// The one-time AEAD key of one sealed object: keyed BLAKE3 of its random salt under the
/// sub-key. A fresh 192-bit salt per object makes every (key, nonce) pair unique, so the
/// fixed all-zero GCM nonce is never reused (docs/repository.md, "Nonce scheme").
pub(crate) fn object_key(sub_key: &SubKey, salt: &[u8; SALT_LEN]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(*blake3::keyed_hash(&sub_key.0, salt).as_bytes())
}

/// AES-256-GCM with a one-time key and the zero nonce over `buf[from..]` (what comes before
/// stays as it is, in clear); appends the tag to `buf`. Sealing after a header in the same
/// buffer saves a blob two copies.
pub(crate) fn seal_in_place(
    key: &[u8; 32],
    ad: &[u8],
    buf: &mut Vec<u8>,
    from: usize,
) -> Result<(), RepoError> {
    let payload = buf
        .get_mut(from..)
        .ok_or(RepoError::ApiMisuse("seal offset past the end"))?;
    let tag = less_safe_key(key)?
        .seal_in_place_separate_tag(zero_nonce(), aead::Aad::from(ad), payload)
        .map_err(|_| RepoError::ApiMisuse("AES-GCM input too long"))?;
    buf.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Opens what [`seal_in_place`] sealed; returns the plaintext part of `buf`.
pub(crate) fn open_in_place<'b>(
    key: &[u8; 32],
    ad: &[u8],
    buf: &'b mut [u8],
    object: ObjectKind,
) -> Result<&'b mut [u8], RepoError> {
    less_safe_key(key)?
        .open_in_place(zero_nonce(), aead::Aad::from(ad), buf)
        .map_err(|_| RepoError::Authentication { object })
}

fn less_safe_key(key: &[u8; 32]) -> Result<aead::LessSafeKey, RepoError> {
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key)
        .map_err(|_| RepoError::ApiMisuse("AES-256 key length"))?;
    Ok(aead::LessSafeKey::new(unbound))
}

fn zero_nonce() -> aead::Nonce {
    aead::Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::CountingRng;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn passphrase_key_object_round_trips_and_refuses_a_wrong_passphrase() {
        let master = MasterKey::generate(&mut CountingRng(1));
        let object = KeyObject::wrap_with_passphrase(
            &master,
            b"correct horse",
            FAST,
            b"laptop",
            &mut CountingRng(2),
        )
        .unwrap();
        let decoded = KeyObject::decode(&object.encode()).unwrap();
        assert_eq!(decoded, object);
        let opened = decoded.unwrap_with_passphrase(b"correct horse").unwrap();
        assert_eq!(opened.as_bytes(), master.as_bytes());
        assert_eq!(
            decoded.unwrap_with_passphrase(b"wrong horse").err(),
            Some(RepoError::WrongKey)
        );
    }

    #[test]
    fn device_key_object_refuses_another_device_and_a_changed_label() {
        let master = MasterKey::generate(&mut CountingRng(1));
        let device = DeviceKey::generate(&mut CountingRng(3));
        let object =
            KeyObject::wrap_with_device_key(&master, &device, b"phone", &mut CountingRng(4))
                .unwrap();
        assert_eq!(
            object.unwrap_with_device_key(&device).unwrap().as_bytes(),
            master.as_bytes()
        );
        let other = DeviceKey::generate(&mut CountingRng(5));
        assert_eq!(
            object.unwrap_with_device_key(&other).err(),
            Some(RepoError::WrongKey)
        );
        let mut bytes = object.encode();
        let label_at = bytes.len() - WRAPPED_LEN - 5;
        bytes[label_at] ^= 1;
        let tampered = KeyObject::decode(&bytes).unwrap();
        assert_eq!(
            tampered.unwrap_with_device_key(&device).err(),
            Some(RepoError::WrongKey)
        );
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_running_argon2() {
        let master = MasterKey::generate(&mut CountingRng(1));
        let object =
            KeyObject::wrap_with_passphrase(&master, b"p", FAST, b"", &mut CountingRng(2)).unwrap();
        let mut bytes = object.encode();
        bytes[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            KeyObject::decode(&bytes),
            Err(RepoError::LimitExceeded {
                what: "argon2 memory KiB",
                ..
            })
        ));
    }

    #[test]
    fn calibration_scales_passes_then_memory() {
        let probe = KdfParams::DEFAULT;
        let faster = KdfParams::calibrate(
            probe,
            Duration::from_millis(100),
            Duration::from_millis(500),
        );
        assert_eq!(
            faster,
            KdfParams {
                iterations: 15,
                ..probe
            }
        );
        let slower = KdfParams::calibrate(
            probe,
            Duration::from_millis(3000),
            Duration::from_millis(500),
        );
        assert_eq!(
            slower,
            KdfParams {
                memory_kib: 32 * 1024,
                iterations: 1,
                ..probe
            }
        );
        let crawling =
            KdfParams::calibrate(probe, Duration::from_secs(60), Duration::from_millis(500));
        assert_eq!(crawling.memory_kib, KdfParams::MIN_MEMORY_KIB);
    }

    #[test]
    fn debug_prints_no_key_bytes() {
        let master = MasterKey::from_bytes([0xAB; 32]);
        let text = format!(
            "{master:?} {:?} {:?}",
            master.derive(),
            DeviceKey::from_bytes([0xAB; 32])
        );
        assert!(!text.to_lowercase().contains("ab"), "{text}");
    }
}
