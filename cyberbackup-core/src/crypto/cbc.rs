//! Streaming AES-256-CBC with the v3 conventions: all-zero IV and PKCS#7 padding.
//!
//! Both directions work on whole batches of blocks in place (the decryptor lets the `cbc`
//! crate decrypt blocks in parallel). The decryptor holds back the last full block until
//! [`CbcDecryptor::finish`], because only the final block carries the padding.

use aes::Aes256;
use bytes::BytesMut;
use cbc::cipher::array::Array;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};

use super::{AesKey, CryptoError};
use crate::limits::AES_BLOCK_LEN;

const ZERO_IV: [u8; AES_BLOCK_LEN] = [0; AES_BLOCK_LEN];

/// Ciphertext length of a `plain_len`-byte plaintext under PKCS#7: always 1 to 16 bytes
/// longer, so a multiple of 16 gains a whole block.
#[must_use]
pub fn cbc_ciphertext_len(plain_len: u64) -> u64 {
    (plain_len / AES_BLOCK_LEN as u64 + 1) * AES_BLOCK_LEN as u64
}

/// Streaming AES-256-CBC encryptor (zero IV, PKCS#7).
pub struct CbcEncryptor {
    mode: cbc::Encryptor<Aes256>,
    partial: [u8; AES_BLOCK_LEN],
    partial_len: usize,
}

impl std::fmt::Debug for CbcEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcEncryptor")
            .field("partial_len", &self.partial_len)
            .finish_non_exhaustive()
    }
}

impl CbcEncryptor {
    /// An encryptor at the start of a message.
    #[must_use]
    pub fn new(key: &AesKey) -> Self {
        Self {
            mode: cbc::Encryptor::new(&Array::from(*key.as_bytes()), &Array::from(ZERO_IV)),
            partial: [0; AES_BLOCK_LEN],
            partial_len: 0,
        }
    }

    /// Encrypts `input`, appending every completed ciphertext block to `out`.
    pub fn update(&mut self, mut input: &[u8], out: &mut BytesMut) {
        if self.partial_len > 0 {
            let take = (AES_BLOCK_LEN - self.partial_len).min(input.len());
            let (head, rest) = input.split_at(take);
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(head);
            self.partial_len += take;
            input = rest;
            if self.partial_len < AES_BLOCK_LEN {
                return;
            }
            let start = out.len();
            out.extend_from_slice(&self.partial);
            self.encrypt_in_place(&mut out[start..]);
            self.partial_len = 0;
        }
        let whole = input.len() - input.len() % AES_BLOCK_LEN;
        let (blocks, tail) = input.split_at(whole);
        if !blocks.is_empty() {
            let start = out.len();
            out.extend_from_slice(blocks);
            self.encrypt_in_place(&mut out[start..]);
        }
        self.partial[..tail.len()].copy_from_slice(tail);
        self.partial_len = tail.len();
    }

    /// Encrypts an owned buffer in place, without copying it: returns the ciphertext in
    /// order as an optional first block (completing bytes left over from the previous call)
    /// and the encrypted body. Bytes past the last whole block are kept for the next call.
    pub fn update_in_place(&mut self, mut data: BytesMut) -> (Option<BytesMut>, BytesMut) {
        let mut head = None;
        if self.partial_len > 0 {
            let take = (AES_BLOCK_LEN - self.partial_len).min(data.len());
            let filler = data.split_to(take);
            let mut block = BytesMut::with_capacity(AES_BLOCK_LEN);
            self.update(&filler, &mut block);
            if !block.is_empty() {
                head = Some(block);
            }
        }
        if data.is_empty() {
            // Everything went into the pending partial block.
            return (head, data);
        }
        let whole = data.len() - data.len() % AES_BLOCK_LEN;
        let tail = data.split_off(whole);
        self.encrypt_in_place(&mut data);
        self.partial[..tail.len()].copy_from_slice(&tail);
        self.partial_len = tail.len();
        (head, data)
    }

    /// Pads the rest of the message and appends the final ciphertext block.
    pub fn finish(mut self, out: &mut BytesMut) {
        let pad = AES_BLOCK_LEN - self.partial_len;
        let mut last = self.partial;
        last[self.partial_len..].fill(u8::try_from(pad).unwrap_or(u8::MAX));
        let start = out.len();
        out.extend_from_slice(&last);
        self.encrypt_in_place(&mut out[start..]);
    }

    fn encrypt_in_place(&mut self, blocks: &mut [u8]) {
        let (blocks, _) = Array::slice_as_chunks_mut(blocks);
        self.mode.encrypt_blocks(blocks);
    }
}

/// Streaming AES-256-CBC decryptor (zero IV, PKCS#7) that holds back the final block.
pub struct CbcDecryptor {
    mode: cbc::Decryptor<Aes256>,
    pending: BytesMut,
    ciphertext_len: u64,
}

impl std::fmt::Debug for CbcDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcDecryptor")
            .field("ciphertext_len", &self.ciphertext_len)
            .finish_non_exhaustive()
    }
}

impl CbcDecryptor {
    /// A decryptor at the start of a message.
    #[must_use]
    pub fn new(key: &AesKey) -> Self {
        Self {
            mode: cbc::Decryptor::new(&Array::from(*key.as_bytes()), &Array::from(ZERO_IV)),
            pending: BytesMut::with_capacity(2 * AES_BLOCK_LEN),
            ciphertext_len: 0,
        }
    }

    /// Ciphertext bytes fed so far.
    #[must_use]
    pub fn ciphertext_len(&self) -> u64 {
        self.ciphertext_len
    }

    /// Decrypts `input`, appending plaintext to `out`. The last full block and any partial
    /// block stay inside until more ciphertext or [`finish`](Self::finish) arrives.
    pub fn update(&mut self, input: &[u8], out: &mut BytesMut) {
        self.ciphertext_len += input.len() as u64;
        let start = out.len();
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(input);
        self.pending.clear();
        let total = out.len() - start;
        let ready = if total % AES_BLOCK_LEN == 0 {
            total.saturating_sub(AES_BLOCK_LEN)
        } else {
            total - total % AES_BLOCK_LEN
        };
        self.pending.extend_from_slice(&out[start + ready..]);
        out.truncate(start + ready);
        let (blocks, _) = Array::slice_as_chunks_mut(&mut out[start..]);
        self.mode.decrypt_blocks(blocks);
    }

    /// Decrypts the final block, strips and checks the padding, appends the rest to `out`.
    ///
    /// # Errors
    /// [`CryptoError::NotBlockAligned`] when the ciphertext was not a positive multiple of
    /// 16 bytes, [`CryptoError::BadPadding`] when the padding is invalid.
    pub fn finish(mut self, out: &mut BytesMut) -> Result<(), CryptoError> {
        if self.pending.len() != AES_BLOCK_LEN {
            return Err(CryptoError::NotBlockAligned {
                len: self.ciphertext_len,
            });
        }
        let mut last = [0u8; AES_BLOCK_LEN];
        last.copy_from_slice(&self.pending);
        let (blocks, _) = Array::slice_as_chunks_mut(&mut last[..]);
        self.mode.decrypt_blocks(blocks);
        let pad = usize::from(last[AES_BLOCK_LEN - 1]);
        if pad == 0 || pad > AES_BLOCK_LEN {
            return Err(CryptoError::BadPadding);
        }
        let (data, padding) = last.split_at(AES_BLOCK_LEN - pad);
        if padding.iter().any(|&b| usize::from(b) != pad) {
            return Err(CryptoError::BadPadding);
        }
        out.extend_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AesKey {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        AesKey::from_bytes(bytes)
    }

    fn encrypt_chunked(plain: &[u8], chunk: usize) -> BytesMut {
        let mut enc = CbcEncryptor::new(&key());
        let mut out = BytesMut::new();
        for piece in plain.chunks(chunk.max(1)) {
            enc.update(piece, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn decrypt_chunked(cipher: &[u8], chunk: usize) -> Result<BytesMut, CryptoError> {
        let mut dec = CbcDecryptor::new(&key());
        let mut out = BytesMut::new();
        for piece in cipher.chunks(chunk.max(1)) {
            dec.update(piece, &mut out);
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_for_every_chunking() {
        let plain: Vec<u8> = (0..1000u32).map(|i| (i * 31 + 7) as u8).collect();
        let reference = encrypt_chunked(&plain, plain.len());
        assert_eq!(reference.len() as u64, cbc_ciphertext_len(1000));
        for chunk in [1, 15, 16, 17, 100, 999] {
            assert_eq!(encrypt_chunked(&plain, chunk), reference);
            assert_eq!(
                decrypt_chunked(&reference, chunk).ok().as_deref(),
                Some(&plain[..])
            );
        }
    }

    #[test]
    fn in_place_encryption_equals_copying_encryption() {
        let plain: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 1) as u8).collect();
        let reference = encrypt_chunked(&plain, plain.len());
        for chunk in [1, 15, 16, 17, 1000, 4096] {
            let mut enc = CbcEncryptor::new(&key());
            let mut out = BytesMut::new();
            for piece in plain.chunks(chunk) {
                let (head, body) = enc.update_in_place(BytesMut::from(piece));
                if let Some(head) = head {
                    out.extend_from_slice(&head);
                }
                out.extend_from_slice(&body);
            }
            enc.finish(&mut out);
            assert_eq!(out, reference, "chunk {chunk}");
        }
    }

    #[test]
    fn bad_padding_and_misaligned_ciphertext_are_errors() {
        let mut cipher = encrypt_chunked(b"twenty bytes of text", 5);
        assert_eq!(
            decrypt_chunked(&cipher[..15], 4).err(),
            Some(CryptoError::NotBlockAligned { len: 15 })
        );
        assert_eq!(
            decrypt_chunked(&[], 4).err(),
            Some(CryptoError::NotBlockAligned { len: 0 })
        );
        // Flipping a byte of the previous block flips the same byte of the padding block.
        cipher[15] ^= 0x01;
        assert_eq!(
            decrypt_chunked(&cipher, 16).err(),
            Some(CryptoError::BadPadding)
        );
    }
}
