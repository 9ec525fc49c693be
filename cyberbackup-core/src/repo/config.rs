//! The repository config object: format version and the parameters that must never change
//! under a repository (chunker sizes, compression level, pack size). The server may read it;
//! a MAC under the config sub-key lets the client detect any change.

use super::error::{ObjectKind, RepoError};
use super::keys::RepoKeys;
use super::wire::Reader;

const CONFIG_MAGIC: [u8; 4] = *b"CBRC"; // do not modify
/// The repository format version this build reads and writes.
const FORMAT_VERSION: u16 = 1;
const MAC_LEN: usize = 32;

/// Chunk sizes of the keyed FastCDC chunker (bytes; all even).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No cut before this many bytes.
    pub min_bytes: u32,
    /// Target average chunk size.
    pub avg_bytes: u32,
    /// A cut is forced here.
    pub max_bytes: u32,
    /// FastCDC normalization level (0–3): how tightly sizes cluster around the average.
    pub normalization: u8,
}

impl ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB, normalization 1.
    pub const DEFAULT: Self = Self {
        min_bytes: 512 * 1024,
        avg_bytes: 1024 * 1024,
        max_bytes: 8 * 1024 * 1024,
        normalization: 1,
    };

    /// Checks the sizes against FastCDC's ranges.
    ///
    /// # Errors
    /// [`RepoError::InvalidConfig`] naming the range.
    pub fn validate(&self) -> Result<(), RepoError> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (
            self.min_bytes as usize,
            self.avg_bytes as usize,
            self.max_bytes as usize,
        );
        let invalid = |reason: String| Err(RepoError::InvalidConfig { reason });
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            || !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
        {
            return invalid(format!(
                "chunk sizes {min}/{avg}/{max} out of range: min {MINIMUM_MIN}..={MINIMUM_MAX}, average {AVERAGE_MIN}..={AVERAGE_MAX}, max {MAXIMUM_MIN}..={MAXIMUM_MAX}"
            ));
        }
        if !(min < avg && avg < max) || min % 2 + avg % 2 + max % 2 != 0 {
            return invalid(format!(
                "chunk sizes {min}/{avg}/{max} must be even and min < average < max"
            ));
        }
        if self.normalization > 3 {
            return invalid(format!("normalization {} is not 0..=3", self.normalization));
        }
        Ok(())
    }
}

/// The repository config: what every reader needs to know before reading anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    /// Random repository identity (distinguishes repositories in logs and key objects).
    pub repo_id: [u8; 16],
    /// Chunker sizes.
    pub chunker: ChunkerParams,
    /// zstd level for blobs (1..=19).
    pub compression_level: i8,
    /// Target size of a pack, in bytes.
    pub pack_target_bytes: u32,
}

impl RepoConfig {
    /// The format version this build reads and writes.
    pub const FORMAT_VERSION: u16 = FORMAT_VERSION;
    /// zstd level 3: see docs/benchmarks.md, "Repository pipeline", for the measured trade-off.
    pub const DEFAULT_COMPRESSION_LEVEL: i8 = 3;
    /// 32 MiB packs: few objects, friendly to object stores.
    pub const DEFAULT_PACK_TARGET_BYTES: u32 = 32 << 20;

    /// A config with the default parameters and the given repository ID.
    #[must_use]
    pub fn new(repo_id: [u8; 16]) -> Self {
        Self {
            repo_id,
            chunker: ChunkerParams::DEFAULT,
            compression_level: Self::DEFAULT_COMPRESSION_LEVEL,
            pack_target_bytes: Self::DEFAULT_PACK_TARGET_BYTES,
        }
    }

    /// Checks every parameter.
    ///
    /// # Errors
    /// [`RepoError::InvalidConfig`].
    pub fn validate(&self) -> Result<(), RepoError> {
        self.chunker.validate()?;
        if !(1..=19).contains(&self.compression_level) {
            return Err(RepoError::InvalidConfig {
                reason: format!("compression level {} is not 1..=19", self.compression_level),
            });
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_target_bytes) {
            return Err(RepoError::InvalidConfig {
                reason: format!(
                    "pack target {} bytes is not 1 MiB..=1 GiB",
                    self.pack_target_bytes
                ),
            });
        }
        Ok(())
    }

    /// The object's bytes: parameters, then a MAC under the config sub-key.
    ///
    /// # Errors
    /// [`RepoError::InvalidConfig`].
    pub fn encode(&self, keys: &RepoKeys) -> Result<Vec<u8>, RepoError> {
        self.validate()?;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&CONFIG_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.repo_id);
        out.extend_from_slice(&self.chunker.min_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunker.avg_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunker.max_bytes.to_le_bytes());
        out.push(self.chunker.normalization);
        out.extend_from_slice(&self.compression_level.to_le_bytes());
        out.extend_from_slice(&self.pack_target_bytes.to_le_bytes());
        let mac = blake3::keyed_hash(&keys.config.0, &out);
        out.extend_from_slice(mac.as_bytes());
        Ok(out)
    }

    /// Parses and verifies a config (the client, after unwrapping the master key).
    ///
    /// # Errors
    /// As [`Self::decode_unverified`], and [`RepoError::Authentication`] when the MAC does
    /// not match (changed, or another repository's config).
    pub fn decode(bytes: &[u8], keys: &RepoKeys) -> Result<Self, RepoError> {
        let config = Self::decode_unverified(bytes)?;
        let split = bytes.len() - MAC_LEN;
        let expected = blake3::keyed_hash(&keys.config.0, &bytes[..split]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&bytes[split..]);
        // blake3::Hash compares in constant time.
        if expected != blake3::Hash::from(mac) {
            return Err(RepoError::Authentication {
                object: ObjectKind::Config,
            });
        }
        Ok(config)
    }

    /// Parses a config without a key (the server, which only reads the parameters).
    ///
    /// # Errors
    /// Truncated, wrong magic, [`RepoError::UnsupportedVersion`] for any other format
    /// version, invalid parameters.
    pub fn decode_unverified(bytes: &[u8]) -> Result<Self, RepoError> {
        let mut r = Reader::new(bytes, ObjectKind::Config);
        r.magic(CONFIG_MAGIC)?;
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion {
                object: ObjectKind::Config,
                found: u32::from(version),
                supported: u32::from(FORMAT_VERSION),
            });
        }
        let config = Self {
            repo_id: r.array()?,
            chunker: ChunkerParams {
                min_bytes: r.u32()?,
                avg_bytes: r.u32()?,
                max_bytes: r.u32()?,
                normalization: r.u8()?,
            },
            compression_level: i8::from_le_bytes(r.array()?),
            pack_target_bytes: r.u32()?,
        };
        let _mac: [u8; MAC_LEN] = r.array()?;
        r.finish()?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MasterKey;

    #[test]
    fn config_round_trips_and_detects_a_change() {
        let keys = MasterKey::from_bytes([7; 32]).derive();
        let config = RepoConfig::new([1; 16]);
        let bytes = config.encode(&keys).unwrap();
        assert_eq!(RepoConfig::decode(&bytes, &keys), Ok(config));
        let mut changed = bytes.clone();
        changed[35] ^= 1; // the compression level: 3 becomes 2, still valid
        assert_eq!(
            RepoConfig::decode(&changed, &keys),
            Err(RepoError::Authentication {
                object: ObjectKind::Config
            })
        );
        let other = MasterKey::from_bytes([8; 32]).derive();
        assert_eq!(
            RepoConfig::decode(&bytes, &other),
            Err(RepoError::Authentication {
                object: ObjectKind::Config
            })
        );
    }

    #[test]
    fn an_unknown_format_version_is_refused_with_both_versions_named() {
        let keys = MasterKey::from_bytes([7; 32]).derive();
        let mut bytes = RepoConfig::new([1; 16]).encode(&keys).unwrap();
        bytes[4] = 2;
        let err = RepoConfig::decode_unverified(&bytes).unwrap_err();
        assert_eq!(
            err,
            RepoError::UnsupportedVersion {
                object: ObjectKind::Config,
                found: 2,
                supported: 1
            }
        );
        assert!(
            err.to_string().contains("upgrade to open this repository")
                && err.to_string().contains("damaged")
        );
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        let keys = MasterKey::from_bytes([7; 32]).derive();
        let mut config = RepoConfig::new([1; 16]);
        config.chunker.min_bytes = 3;
        assert!(matches!(
            config.encode(&keys),
            Err(RepoError::InvalidConfig { .. })
        ));
        let mut config = RepoConfig::new([1; 16]);
        config.compression_level = 0;
        assert!(matches!(
            config.encode(&keys),
            Err(RepoError::InvalidConfig { .. })
        ));
    }
}
