//! v4 wire format: the hello header, the 4-byte frame header, handshake payloads and the
//! application messages carried inside transport frames (`docs/protocol-v4.md` §2–5).
//!
//! Every constant here is part of the wire format: do not modify.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::repository::{RepoReply, RepoRequest};
use crate::names::{ClientId, FileName, InvalidFileName, NameField};

/// Version byte of v4 (offset 16 of the hello, offset 0 of every later frame).
pub const PROTOCOL_VERSION_V4: u8 = 4;
/// First 16 bytes of the hello (where a v3 request has its client id).
pub const HELLO_MAGIC: [u8; 16] = *b"CyberBackup/v4\0\0";
/// Code of the hello (where a v3 request has its request code).
pub const HELLO_CODE: u16 = 4000;
/// Length of the hello header (the v3 request header length).
pub const HELLO_HEADER_LEN: usize = 23;
/// Length of Noise message 1 of XX with an empty payload: the hello's payload size.
pub const HELLO_PAYLOAD_LEN: usize = 32;
/// Length of the header of every frame after the hello.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest payload of one frame (a Noise message).
pub const MAX_FRAME_LEN: usize = 65_535;
/// AEAD tag length of a transport message.
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one transport message.
pub const MAX_PLAINTEXT_LEN: usize = MAX_FRAME_LEN - TAG_LEN;
/// Largest content of one `DATA` message.
pub const MAX_DATA_LEN: usize = MAX_PLAINTEXT_LEN - 1;
/// Longest client or file name.
pub const MAX_NAME_LEN: usize = 254;
/// Longest enrollment token.
pub const MAX_TOKEN_LEN: usize = 128;
/// Longest error or notice text.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Frame kinds (byte 1 of the frame header).
pub mod kind {
    /// Noise handshake message 2 or 3.
    pub const HANDSHAKE: u8 = 0x01;
    /// Noise transport message.
    pub const TRANSPORT: u8 = 0x02;
    /// Unauthenticated plaintext notice from the server, before the handshake completes.
    pub const NOTICE: u8 = 0x03;
}

/// Message types (first plaintext byte of a transport message).
pub mod msg {
    /// Client: start or resume an upload.
    pub const UPLOAD: u8 = 0x01;
    /// Both: file content.
    pub const DATA: u8 = 0x02;
    /// Client: end of upload, with the SHA-256.
    pub const UPLOAD_END: u8 = 0x03;
    /// Client: list my versions.
    pub const LIST: u8 = 0x04;
    /// Client: download a version.
    pub const RESTORE: u8 = 0x05;
    /// Client: done.
    pub const BYE: u8 = 0x06;
    /// Server: authenticated.
    pub const WELCOME: u8 = 0x41;
    /// Server: send content from this offset.
    pub const UPLOAD_READY: u8 = 0x42;
    /// Server: the upload is committed.
    pub const UPLOAD_DONE: u8 = 0x43;
    /// Server: one listed version.
    pub const LIST_ENTRY: u8 = 0x44;
    /// Server: end of the listing.
    pub const LIST_END: u8 = 0x45;
    /// Server: a restore starts.
    pub const RESTORE_BEGIN: u8 = 0x46;
    /// Server: a restore is complete.
    pub const RESTORE_END: u8 = 0x47;
    /// Server: an error.
    pub const ERROR: u8 = 0x7F;
}

/// `ClientAuth` modes.
pub mod auth_mode {
    /// Log in with a registered key.
    pub const LOGIN: u8 = 1;
    /// Register the key under a name.
    pub const REGISTER: u8 = 2;
}

/// Malformed v4 bytes. Every variant is fatal for the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The hello does not start with [`HELLO_MAGIC`], version 4 and [`HELLO_CODE`].
    #[error("not a v4 hello (wrong magic, version or code)")]
    BadHello,
    /// The hello announces a Noise message 1 of the wrong length.
    #[error("the hello announces {len} payload bytes, v4 requires {HELLO_PAYLOAD_LEN}")]
    BadHelloLength {
        /// Announced length.
        len: u32,
    },
    /// The peer answered with a v3 response: it does not speak v4.
    #[error(
        "the server answered with a protocol v3 response: it does not support protocol v4 (use a v3 identity with --protocol v3, or upgrade the server)"
    )]
    PeerSpeaksV3,
    /// A frame header with another version byte.
    #[error("frame version {found}, expected 4")]
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// A frame kind this side does not accept.
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A frame of length 0, or a transport frame shorter than its tag.
    #[error("frame of {len} bytes is too short")]
    FrameTooShort {
        /// Its length.
        len: usize,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended {missing} bytes before the end of a frame")]
    Truncated {
        /// Bytes missing.
        missing: usize,
    },
    /// An unknown message type.
    #[error("unknown message type {kind:#04x}")]
    UnknownMessage {
        /// The type byte.
        kind: u8,
    },
    /// A message body is shorter than its fields.
    #[error("{message} message is truncated")]
    MessageTruncated {
        /// Which message.
        message: &'static str,
    },
    /// A message body has bytes after its fields.
    #[error("{message} message has trailing bytes")]
    TrailingBytes {
        /// Which message.
        message: &'static str,
    },
    /// A name length of 0 or over [`MAX_NAME_LEN`], or a NUL in a client name.
    #[error("invalid name field in {message}")]
    BadName {
        /// Which message.
        message: &'static str,
    },
    /// A file name that breaks the file-name rules.
    #[error("invalid file name: {0}")]
    BadFileName(#[from] InvalidFileName),
    /// A token or message text that is too long or not UTF-8/ASCII.
    #[error("invalid text field in {message}")]
    BadText {
        /// Which message.
        message: &'static str,
    },
    /// An unknown `ClientAuth` mode or a reserved flag bit.
    #[error("invalid {field} value {value}")]
    BadValue {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

impl WireError {
    /// Whether this is a file-name fault of an otherwise well-formed message (answered
    /// with the non-fatal `BAD_NAME`, `docs/protocol-v4.md` §5.3).
    #[must_use]
    pub fn is_bad_file_name(&self) -> bool {
        matches!(self, Self::BadFileName(_) | Self::BadName { .. })
    }
}

/// The 23-byte hello header.
#[must_use]
pub fn hello_header() -> [u8; HELLO_HEADER_LEN] {
    let mut header = [0u8; HELLO_HEADER_LEN];
    let mut dst = &mut header[..];
    dst.put_slice(&HELLO_MAGIC);
    dst.put_u8(PROTOCOL_VERSION_V4);
    dst.put_u16_le(HELLO_CODE);
    dst.put_u32_le(u32::try_from(HELLO_PAYLOAD_LEN).unwrap_or(u32::MAX));
    header
}

/// Checks a received hello header.
///
/// # Errors
/// [`WireError::BadHello`] or [`WireError::BadHelloLength`].
pub fn check_hello_header(header: &[u8; HELLO_HEADER_LEN]) -> Result<(), WireError> {
    let mut src = &header[..];
    let mut magic = [0u8; 16];
    src.copy_to_slice(&mut magic);
    let version = src.get_u8();
    let code = src.get_u16_le();
    let len = src.get_u32_le();
    if magic != HELLO_MAGIC || version != PROTOCOL_VERSION_V4 || code != HELLO_CODE {
        return Err(WireError::BadHello);
    }
    if usize::try_from(len).ok() != Some(HELLO_PAYLOAD_LEN) {
        return Err(WireError::BadHelloLength { len });
    }
    Ok(())
}

/// A frame: 4-byte header (version, kind, u16 LE length) and `payload`.
///
/// # Panics
/// Never: callers pass at most [`MAX_FRAME_LEN`] bytes (checked in debug builds); longer
/// payloads are a bug and are truncated to keep the stream well-formed.
#[must_use]
pub fn encode_frame(kind: u8, payload: &[u8]) -> Bytes {
    debug_assert!(payload.len() <= MAX_FRAME_LEN && !payload.is_empty());
    let payload = payload.get(..MAX_FRAME_LEN).unwrap_or(payload);
    let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + payload.len());
    put_frame_header(&mut out, kind, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Writes a frame header for a payload of `len` (≤ [`MAX_FRAME_LEN`]) bytes.
pub fn put_frame_header(dst: &mut impl BufMut, kind: u8, len: usize) {
    dst.put_u8(PROTOCOL_VERSION_V4);
    dst.put_u8(kind);
    dst.put_u16_le(u16::try_from(len).unwrap_or(u16::MAX));
}

/// Payload of Noise message 2 (encrypted by Noise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// Registration needs an enrollment token.
    pub enrollment_required: bool,
    /// Bytes between durable checkpoints of an upload.
    pub checkpoint_interval: u64,
}

impl ServerHello {
    /// Encoded length.
    pub const LEN: usize = 9;

    /// Appends the payload.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(u8::from(self.enrollment_required));
        dst.put_u64_le(self.checkpoint_interval);
    }

    /// Parses the payload.
    ///
    /// # Errors
    /// A [`WireError`] for a wrong length or reserved flag bits.
    pub fn decode(mut src: &[u8]) -> Result<Self, WireError> {
        const M: &str = "ServerHello";
        need(src, Self::LEN, M)?;
        let flags = src.get_u8();
        if flags & !1 != 0 {
            return Err(WireError::BadValue {
                field: "ServerHello flags",
                value: u64::from(flags),
            });
        }
        let checkpoint_interval = src.get_u64_le();
        end(src, M)?;
        Ok(Self {
            enrollment_required: flags & 1 == 1,
            checkpoint_interval,
        })
    }
}

/// Payload of Noise message 3: what the client wants (encrypted by Noise).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// Log in with the already registered static key.
    Login,
    /// Register the static key under `name`, with an enrollment token (may be empty).
    Register {
        /// Client name.
        name: NameField,
        /// Enrollment token (ASCII), empty when none.
        token: String,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Login => f.write_str("Login"),
            Self::Register { name, token } => f
                .debug_struct("Register")
                .field("name", &name.to_string_lossy())
                .field("token", &if token.is_empty() { "" } else { "<redacted>" })
                .finish(),
        }
    }
}

impl ClientAuth {
    /// Appends the payload.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Login => dst.put_u8(auth_mode::LOGIN),
            Self::Register { name, token } => {
                dst.put_u8(auth_mode::REGISTER);
                put_name(dst, name.as_bytes());
                let token = token
                    .as_bytes()
                    .get(..MAX_TOKEN_LEN)
                    .unwrap_or(token.as_bytes());
                dst.put_u8(u8::try_from(token.len()).unwrap_or(0));
                dst.put_slice(token);
            }
        }
    }

    /// Parses the payload.
    ///
    /// # Errors
    /// A [`WireError`].
    pub fn decode(mut src: &[u8]) -> Result<Self, WireError> {
        const M: &str = "ClientAuth";
        need(src, 1, M)?;
        match src.get_u8() {
            auth_mode::LOGIN => {
                end(src, M)?;
                Ok(Self::Login)
            }
            auth_mode::REGISTER => {
                let name = take_name(&mut src, M)?;
                if name.contains(&0) {
                    return Err(WireError::BadName { message: M });
                }
                let name = NameField::new(Bytes::copy_from_slice(name))
                    .map_err(|_| WireError::BadName { message: M })?;
                need(src, 1, M)?;
                let len = usize::from(src.get_u8());
                need(src, len, M)?;
                if len > MAX_TOKEN_LEN {
                    return Err(WireError::BadText { message: M });
                }
                let (token, rest) = src.split_at(len);
                if !token.is_ascii() {
                    return Err(WireError::BadText { message: M });
                }
                end(rest, M)?;
                Ok(Self::Register {
                    name,
                    token: String::from_utf8_lossy(token).into_owned(),
                })
            }
            other => Err(WireError::BadValue {
                field: "ClientAuth mode",
                value: u64::from(other),
            }),
        }
    }
}

/// A stored version as listed or restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// File name.
    pub name: FileName,
    /// Version number (1, 2, …).
    pub version: u32,
    /// Plaintext size in bytes.
    pub size: u64,
    /// When the version was stored, Unix seconds (UTC).
    pub created_unix_secs: u64,
    /// POSIX cksum of the plaintext (the v3 checksum).
    pub cksum: u32,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
}

impl VersionRecord {
    fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u32_le(self.version);
        dst.put_u64_le(self.size);
        dst.put_u64_le(self.created_unix_secs);
        dst.put_u32_le(self.cksum);
        dst.put_slice(&self.sha256);
        put_name(dst, self.name.as_bytes());
    }

    fn decode(src: &mut &[u8], message: &'static str) -> Result<Self, WireError> {
        need(src, 4 + 8 + 8 + 4 + 32, message)?;
        let version = src.get_u32_le();
        let size = src.get_u64_le();
        let created_unix_secs = src.get_u64_le();
        let cksum = src.get_u32_le();
        let sha256 = take_hash(src);
        let name = take_file_name(src, message)?;
        Ok(Self {
            name,
            version,
            size,
            created_unix_secs,
            cksum,
            sha256,
        })
    }
}

/// Application messages from client to server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Start or resume an upload of `size` bytes.
    Upload {
        /// File name.
        name: FileName,
        /// Plaintext size.
        size: u64,
        /// Discard any partial upload and start at 0.
        restart: bool,
    },
    /// File content (1 ..= [`MAX_DATA_LEN`] bytes).
    Data(Bytes),
    /// End of the upload with the SHA-256 of the whole plaintext.
    UploadEnd {
        /// SHA-256 of the plaintext.
        sha256: [u8; 32],
    },
    /// List my files and versions.
    List,
    /// Download a version (`version` 0 = newest).
    Restore {
        /// File name.
        name: FileName,
        /// Version, 0 for the newest.
        version: u32,
    },
    /// The client is done.
    Bye,
    /// A repository operation (`docs/protocol-v4.md` §9a).
    Repo(RepoRequest),
}

impl ClientMessage {
    /// Appends the plaintext (type byte and body).
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Upload {
                name,
                size,
                restart,
            } => {
                dst.put_u8(msg::UPLOAD);
                dst.put_u64_le(*size);
                dst.put_u8(u8::from(*restart));
                put_name(dst, name.as_bytes());
            }
            Self::Data(data) => {
                dst.put_u8(msg::DATA);
                dst.put_slice(data);
            }
            Self::UploadEnd { sha256 } => {
                dst.put_u8(msg::UPLOAD_END);
                dst.put_slice(sha256);
            }
            Self::List => dst.put_u8(msg::LIST),
            Self::Restore { name, version } => {
                dst.put_u8(msg::RESTORE);
                dst.put_u32_le(*version);
                put_name(dst, name.as_bytes());
            }
            Self::Bye => dst.put_u8(msg::BYE),
            Self::Repo(request) => request.encode(dst),
        }
    }

    /// Parses a decrypted plaintext; `Data` shares `plaintext`'s buffer.
    ///
    /// # Errors
    /// A [`WireError`]. A well-formed `UPLOAD` or `RESTORE` whose only fault is its file
    /// name fails with [`WireError::BadFileName`] or [`WireError::BadName`] (every other
    /// field, and the absence of trailing bytes, is checked first): see
    /// [`WireError::is_bad_file_name`].
    pub fn decode(plaintext: Bytes) -> Result<Self, WireError> {
        let Some((&kind, mut src)) = plaintext.split_first() else {
            return Err(WireError::FrameTooShort { len: 0 });
        };
        let message = match kind {
            msg::UPLOAD => {
                const M: &str = "UPLOAD";
                need(src, 9, M)?;
                let size = src.get_u64_le();
                let flags = src.get_u8();
                if flags & !1 != 0 {
                    return Err(WireError::BadValue {
                        field: "UPLOAD flags",
                        value: u64::from(flags),
                    });
                }
                let name = take_raw_name(&mut src, M)?;
                end(src, M)?;
                return Ok(Self::Upload {
                    name: file_name(name, M)?,
                    size,
                    restart: flags & 1 == 1,
                });
            }
            msg::DATA => {
                if src.is_empty() {
                    return Err(WireError::MessageTruncated { message: "DATA" });
                }
                return Ok(Self::Data(plaintext.slice(1..)));
            }
            msg::UPLOAD_END => {
                need(src, 32, "UPLOAD_END")?;
                Self::UploadEnd {
                    sha256: take_hash(&mut src),
                }
            }
            msg::LIST => Self::List,
            msg::RESTORE => {
                const M: &str = "RESTORE";
                need(src, 4, M)?;
                let version = src.get_u32_le();
                let name = take_raw_name(&mut src, M)?;
                end(src, M)?;
                return Ok(Self::Restore {
                    name: file_name(name, M)?,
                    version,
                });
            }
            msg::BYE => Self::Bye,
            other => {
                return RepoRequest::decode(other, src)
                    .ok_or(WireError::UnknownMessage { kind: other })?
                    .map(Self::Repo);
            }
        };
        end(src, message.label())?;
        Ok(message)
    }

    /// The message's name, for errors and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Upload { .. } => "UPLOAD",
            Self::Data(_) => "DATA",
            Self::UploadEnd { .. } => "UPLOAD_END",
            Self::List => "LIST",
            Self::Restore { .. } => "RESTORE",
            Self::Bye => "BYE",
            Self::Repo(request) => request.label(),
        }
    }
}

/// Error codes of the `ERROR` message (`docs/protocol-v4.md` §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Malformed or unexpected message.
    pub const PROTOCOL: Self = Self(1);
    /// The client key is not registered.
    pub const UNKNOWN_CLIENT: Self = Self(2);
    /// The name is taken.
    pub const NAME_TAKEN: Self = Self(3);
    /// Registration needs an enrollment token.
    pub const ENROLLMENT_REQUIRED: Self = Self(4);
    /// The enrollment token is unknown, used or expired.
    pub const ENROLLMENT_INVALID: Self = Self(5);
    /// The uploaded content does not match its SHA-256.
    pub const HASH_MISMATCH: Self = Self(6);
    /// No such file or version.
    pub const NOT_FOUND: Self = Self(7);
    /// Storage failed on the server.
    pub const STORAGE: Self = Self(8);
    /// The file is larger than the server accepts.
    pub const TOO_LARGE: Self = Self(9);
    /// The file name breaks the rules.
    pub const BAD_NAME: Self = Self(10);
    /// The file is being uploaded on another connection.
    pub const BUSY: Self = Self(11);
    /// Too many registrations from this address.
    pub const RATE_LIMITED: Self = Self(12);
    /// The stored version no longer matches its hash.
    pub const CORRUPT: Self = Self(13);
    /// Internal server failure.
    pub const INTERNAL: Self = Self(14);
    /// The client has no repository yet (create it first).
    pub const NO_REPOSITORY: Self = Self(15);
    /// The repository (or the key object) already exists.
    pub const EXISTS: Self = Self(16);
    /// A repository object is malformed (config, key object, pack header, snapshot).
    pub const BAD_OBJECT: Self = Self(17);
    /// A snapshot references blobs the server does not store: nothing was committed.
    pub const MISSING_BLOBS: Self = Self(18);
    /// The pack would take the client's stored bytes above its hard quota: nothing was
    /// received.
    pub const QUOTA_EXCEEDED: Self = Self(19);
    /// This device's role does not allow the request (an append-only device forgetting a
    /// snapshot).
    pub const FORBIDDEN: Self = Self(20);

    /// The code's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "PROTOCOL",
            2 => "UNKNOWN_CLIENT",
            3 => "NAME_TAKEN",
            4 => "ENROLLMENT_REQUIRED",
            5 => "ENROLLMENT_INVALID",
            6 => "HASH_MISMATCH",
            7 => "NOT_FOUND",
            8 => "STORAGE",
            9 => "TOO_LARGE",
            10 => "BAD_NAME",
            11 => "BUSY",
            12 => "RATE_LIMITED",
            13 => "CORRUPT",
            14 => "INTERNAL",
            15 => "NO_REPOSITORY",
            16 => "EXISTS",
            17 => "BAD_OBJECT",
            18 => "MISSING_BLOBS",
            19 => "QUOTA_EXCEEDED",
            20 => "FORBIDDEN",
            _ => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Application messages from server to client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// Authenticated.
    Welcome {
        /// The client's id.
        client_id: ClientId,
        /// Whether this handshake registered the client.
        registered: bool,
        /// The registered name.
        name: NameField,
    },
    /// Send content from `offset`.
    UploadReady {
        /// Durable offset to resume from (0 for a new upload).
        offset: u64,
    },
    /// The upload is verified and committed.
    UploadDone {
        /// Version number given to the file.
        version: u32,
        /// Plaintext size.
        size: u64,
        /// POSIX cksum of the plaintext.
        cksum: u32,
        /// SHA-256 of the plaintext.
        sha256: [u8; 32],
    },
    /// One listed version.
    ListEntry(VersionRecord),
    /// End of the listing.
    ListEnd {
        /// Entries sent.
        count: u32,
    },
    /// A restore starts.
    RestoreBegin(VersionRecord),
    /// Restored content.
    Data(Bytes),
    /// The restore is complete.
    RestoreEnd,
    /// A repository reply (`docs/protocol-v4.md` §9a).
    Repo(RepoReply),
    /// An error.
    Error {
        /// What kind.
        code: ErrorCode,
        /// Whether the server closes after it.
        fatal: bool,
        /// Human-readable explanation.
        message: String,
    },
}

impl ServerMessage {
    /// Appends the plaintext (type byte and body).
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Welcome {
                client_id,
                registered,
                name,
            } => {
                dst.put_u8(msg::WELCOME);
                dst.put_slice(&client_id.0);
                dst.put_u8(u8::from(*registered));
                put_name(dst, name.as_bytes());
            }
            Self::UploadReady { offset } => {
                dst.put_u8(msg::UPLOAD_READY);
                dst.put_u64_le(*offset);
            }
            Self::UploadDone {
                version,
                size,
                cksum,
                sha256,
            } => {
                dst.put_u8(msg::UPLOAD_DONE);
                dst.put_u32_le(*version);
                dst.put_u64_le(*size);
                dst.put_u32_le(*cksum);
                dst.put_slice(sha256);
            }
            Self::ListEntry(record) => {
                dst.put_u8(msg::LIST_ENTRY);
                record.encode(dst);
            }
            Self::ListEnd { count } => {
                dst.put_u8(msg::LIST_END);
                dst.put_u32_le(*count);
            }
            Self::RestoreBegin(record) => {
                dst.put_u8(msg::RESTORE_BEGIN);
                record.encode(dst);
            }
            Self::Data(data) => {
                dst.put_u8(msg::DATA);
                dst.put_slice(data);
            }
            Self::RestoreEnd => dst.put_u8(msg::RESTORE_END),
            Self::Repo(reply) => reply.encode(dst),
            Self::Error {
                code,
                fatal,
                message,
            } => {
                dst.put_u8(msg::ERROR);
                dst.put_u16_le(code.0);
                dst.put_u8(u8::from(*fatal));
                let text = truncate_utf8(message, MAX_MESSAGE_LEN);
                dst.put_u16_le(u16::try_from(text.len()).unwrap_or(0));
                dst.put_slice(text.as_bytes());
            }
        }
    }

    /// Parses a decrypted plaintext; `Data` shares `plaintext`'s buffer.
    ///
    /// # Errors
    /// A [`WireError`].
    pub fn decode(plaintext: Bytes) -> Result<Self, WireError> {
        let Some((&kind, mut src)) = plaintext.split_first() else {
            return Err(WireError::FrameTooShort { len: 0 });
        };
        let message = match kind {
            msg::WELCOME => {
                const M: &str = "WELCOME";
                need(src, 17, M)?;
                let mut id = [0u8; 16];
                src.copy_to_slice(&mut id);
                let registered = flag(src.get_u8(), "WELCOME registered")?;
                let name = take_name(&mut src, M)?;
                let name = NameField::new(Bytes::copy_from_slice(name))
                    .map_err(|_| WireError::BadName { message: M })?;
                Self::Welcome {
                    client_id: ClientId(id),
                    registered,
                    name,
                }
            }
            msg::UPLOAD_READY => {
                need(src, 8, "UPLOAD_READY")?;
                Self::UploadReady {
                    offset: src.get_u64_le(),
                }
            }
            msg::UPLOAD_DONE => {
                need(src, 48, "UPLOAD_DONE")?;
                let version = src.get_u32_le();
                let size = src.get_u64_le();
                let cksum = src.get_u32_le();
                let sha256 = take_hash(&mut src);
                Self::UploadDone {
                    version,
                    size,
                    cksum,
                    sha256,
                }
            }
            msg::LIST_ENTRY => Self::ListEntry(VersionRecord::decode(&mut src, "LIST_ENTRY")?),
            msg::LIST_END => {
                need(src, 4, "LIST_END")?;
                Self::ListEnd {
                    count: src.get_u32_le(),
                }
            }
            msg::RESTORE_BEGIN => {
                Self::RestoreBegin(VersionRecord::decode(&mut src, "RESTORE_BEGIN")?)
            }
            msg::DATA => {
                if src.is_empty() {
                    return Err(WireError::MessageTruncated { message: "DATA" });
                }
                return Ok(Self::Data(plaintext.slice(1..)));
            }
            msg::RESTORE_END => Self::RestoreEnd,
            msg::ERROR => {
                const M: &str = "ERROR";
                need(src, 5, M)?;
                let code = ErrorCode(src.get_u16_le());
                let fatal = flag(src.get_u8(), "ERROR fatal")?;
                let len = usize::from(src.get_u16_le());
                need(src, len, M)?;
                if len > MAX_MESSAGE_LEN {
                    return Err(WireError::BadText { message: M });
                }
                let (text, rest) = src.split_at(len);
                let message = std::str::from_utf8(text)
                    .map_err(|_| WireError::BadText { message: M })?
                    .to_owned();
                src = rest;
                Self::Error {
                    code,
                    fatal,
                    message,
                }
            }
            other => {
                return RepoReply::decode(other, src)
                    .ok_or(WireError::UnknownMessage { kind: other })?
                    .map(Self::Repo);
            }
        };
        end(src, message.label())?;
        Ok(message)
    }

    /// The message's name, for errors and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "WELCOME",
            Self::UploadReady { .. } => "UPLOAD_READY",
            Self::UploadDone { .. } => "UPLOAD_DONE",
            Self::ListEntry(_) => "LIST_ENTRY",
            Self::ListEnd { .. } => "LIST_END",
            Self::RestoreBegin(_) => "RESTORE_BEGIN",
            Self::Data(_) => "DATA",
            Self::RestoreEnd => "RESTORE_END",
            Self::Repo(reply) => reply.label(),
            Self::Error { .. } => "ERROR",
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
#[must_use]
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn put_name(dst: &mut impl BufMut, name: &[u8]) {
    let name = name.get(..MAX_NAME_LEN).unwrap_or(name);
    dst.put_u8(u8::try_from(name.len()).unwrap_or(0));
    dst.put_slice(name);
}

pub(super) fn need(src: &[u8], len: usize, message: &'static str) -> Result<(), WireError> {
    if src.len() < len {
        return Err(WireError::MessageTruncated { message });
    }
    Ok(())
}

pub(super) fn end(src: &[u8], message: &'static str) -> Result<(), WireError> {
    if !src.is_empty() {
        return Err(WireError::TrailingBytes { message });
    }
    Ok(())
}

fn flag(value: u8, field: &'static str) -> Result<bool, WireError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(WireError::BadValue {
            field,
            value: u64::from(other),
        }),
    }
}

pub(super) fn take_hash(src: &mut &[u8]) -> [u8; 32] {
    let mut hash = [0u8; 32];
    src.copy_to_slice(&mut hash);
    hash
}

fn take_name<'a>(src: &mut &'a [u8], message: &'static str) -> Result<&'a [u8], WireError> {
    let name = take_raw_name(src, message)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(WireError::BadName { message });
    }
    Ok(name)
}

/// A `u8`-length-prefixed name of any length (0 … 255): the framing only.
fn take_raw_name<'a>(src: &mut &'a [u8], message: &'static str) -> Result<&'a [u8], WireError> {
    need(src, 1, message)?;
    let len = usize::from(src.get_u8());
    need(src, len, message)?;
    let (name, rest) = src.split_at(len);
    *src = rest;
    Ok(name)
}

fn take_file_name(src: &mut &[u8], message: &'static str) -> Result<FileName, WireError> {
    let name = take_raw_name(src, message)?;
    file_name(name, message)
}

/// Validates a file name field's bytes with the one file-name validator.
fn file_name(name: &[u8], message: &'static str) -> Result<FileName, WireError> {
    if name.is_empty() {
        return Err(WireError::BadFileName(InvalidFileName::Empty));
    }
    if name.contains(&0) {
        return Err(WireError::BadFileName(InvalidFileName::EmbeddedNul));
    }
    let field =
        NameField::new(Bytes::copy_from_slice(name)).map_err(|_| WireError::BadName { message })?;
    Ok(FileName::validate(field)?)
}
