//! Every size limit and default of the v3 protocol, in one place.
//!
//! Wire sizes here are fixed by the legacy protocol: do not modify them.

use std::time::Duration;

/// Length of a request header: client id (16), version (1), code (2), payload size (4).
pub const REQUEST_HEADER_LEN: usize = 23;
/// Length of a response header: version (1), code (2), payload size (4).
pub const RESPONSE_HEADER_LEN: usize = 7;
/// The protocol version byte every v3 peer sends.
pub const PROTOCOL_VERSION_V3: u8 = 3;
/// Length of a client id (a raw UUID).
pub const CLIENT_ID_LEN: usize = 16;
/// Length of every name field (client name, file name), NUL-terminated and zero-padded.
pub const NAME_FIELD_LEN: usize = 255;
/// Longest name text we send: the field must keep room for its terminating NUL.
pub const MAX_NAME_TEXT_LEN: usize = NAME_FIELD_LEN - 1;
/// Length of the 1024-bit RSA public key as X.509 SubjectPublicKeyInfo DER with e = 17.
pub const PUBLIC_KEY_LEN: usize = 160;
/// Longest public-key field accepted in 1026 (a 1024-bit SPKI with a large exponent plus
/// trailing bytes such as the two garbage bytes Tom's client appends).
pub const MAX_PUBLIC_KEY_FIELD_LEN: usize = 300;
/// Length of an AES-256 session key.
pub const AES_KEY_LEN: usize = 32;
/// AES block length; CBC ciphertexts are multiples of it.
pub const AES_BLOCK_LEN: usize = 16;
/// RSA modulus size accepted for v3 client keys.
pub const RSA_MODULUS_BITS: usize = 1024;
/// Length of an RSA-1024 OAEP ciphertext (the encrypted key in 1602/1605).
pub const RSA_CIPHERTEXT_LEN: usize = RSA_MODULUS_BITS / 8;
/// Longest encrypted-key field a client accepts in 1602/1605 (room for keys up to 4096 bits,
/// which fail later with a clear error instead of desynchronising the stream).
pub const MAX_ENCRYPTED_KEY_LEN: usize = 512;
/// Length of the fixed 1028 file metadata before the content.
pub const FILE_META_LEN: usize = FILE_META_LEN_U32 as usize;
/// [`FILE_META_LEN`] as the wire's integer type: content size (4), original size (4),
/// packet number (2), total packets (2), file name (255).
pub const FILE_META_LEN_U32: u32 = 4 + 4 + 2 + 2 + 255;
/// Payload length of a 1603 response.
pub const FILE_RECEIVED_LEN: usize = CLIENT_ID_LEN + 4 + NAME_FIELD_LEN + 4;
/// Largest payload a 1028 frame can announce (the field is a u32).
pub const MAX_FILE_FRAME_PAYLOAD: u32 = u32::MAX;
/// Largest piece of file content the decoder yields at once.
pub const MAX_CONTENT_PIECE: usize = 256 * 1024;
/// Most packets a v3 file can be split into (`total_packets` is a u16).
pub const MAX_PACKETS: u16 = u16::MAX;
/// Default content bytes per 1028 packet sent by our client.
pub const DEFAULT_PACKET_CONTENT_LEN: u32 = 1024 * 1024;
/// Default plaintext read size of the client pipeline.
pub const DEFAULT_READ_CHUNK_LEN: usize = 1024 * 1024;
/// Total sends of one file (the first plus three resends after CRC mismatches).
pub const MAX_FILE_SENDS: u8 = 4;
/// Total attempts of one request answered by 1607.
pub const MAX_REQUEST_ATTEMPTS: u8 = 3;
/// Largest plaintext file the v3 protocol can describe (`orig_file_size` is a u32 and the
/// ciphertext, one block longer at most, must fit a u32 too).
pub const MAX_V3_FILE_LEN: u64 = u32::MAX as u64 - AES_BLOCK_LEN as u64;
/// Default time a connection may stay silent before the server drops it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
