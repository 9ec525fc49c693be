#![allow(clippy::unwrap_used, clippy::expect_used)]
//! AES-256-CBC over 64 MiB: our streaming `CbcEncryptor`/`CbcDecryptor` against the raw
//! `aes` + `cbc` crates (batch `encrypt_blocks`/`decrypt_blocks` in place), in the same
//! criterion group so the report shows the ratio directly.
//!
//! Ours is fed the way the pipelines feed it: the client encrypts 1 MiB reads, the server
//! decrypts 256 KiB content pieces; both append to an output buffer (reused, so no
//! allocation is measured). The raw baseline works in place on one buffer.

use std::hint::black_box;

use aes::Aes256;
use bytes::BytesMut;
use cipher::array::Array;
use cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cyberbackup_core::crypto::{AesKey, CbcDecryptor, CbcEncryptor};
use cyberbackup_core::limits::{DEFAULT_READ_CHUNK_LEN, MAX_CONTENT_PIECE};

mod common;

const KEY: [u8; 32] = [0x42; 32];
const IV: [u8; 16] = [0; 16];

fn encrypt(c: &mut Criterion) {
    let plain = common::data(common::BULK_LEN);
    let key = AesKey::from_bytes(KEY);
    let mut group = c.benchmark_group("aes256_cbc_encrypt");
    group.throughput(Throughput::Bytes(common::BULK_LEN as u64));
    group.bench_function("ours_CbcEncryptor", |b| {
        let mut out = BytesMut::with_capacity(common::BULK_LEN + 16);
        b.iter(|| {
            out.clear();
            let mut encryptor = CbcEncryptor::new(&key);
            for read in black_box(&plain).chunks(DEFAULT_READ_CHUNK_LEN) {
                encryptor.update(read, &mut out);
            }
            encryptor.finish(&mut out);
            out.len()
        });
    });
    group.bench_function("ours_in_place_client_path", |b| {
        // What ClientSession does with the reads the driver hands over: encrypt each owned
        // 1 MiB buffer in place, no copy.
        let mut buf = BytesMut::from(&plain[..]);
        b.iter(|| {
            let mut encryptor = CbcEncryptor::new(&key);
            let mut done = BytesMut::new();
            while !buf.is_empty() {
                let chunk = buf.split_to(DEFAULT_READ_CHUNK_LEN.min(buf.len()));
                let (head, body) = encryptor.update_in_place(black_box(chunk));
                assert!(head.is_none(), "1 MiB reads stay block-aligned");
                done.unsplit(body);
            }
            buf = done;
            let mut last = BytesMut::with_capacity(16);
            encryptor.finish(&mut last);
            buf.len() + last.len()
        });
    });
    group.bench_function("raw_aes_cbc_crates", |b| {
        let mut buf = plain.clone();
        b.iter(|| {
            let mut mode = cbc::Encryptor::<Aes256>::new(&Array::from(KEY), &Array::from(IV));
            let (blocks, _) = Array::slice_as_chunks_mut(black_box(&mut buf[..]));
            mode.encrypt_blocks(blocks);
        });
    });
    group.bench_function("raw_plus_copy_to_output", |b| {
        // Diagnostic: the raw crates plus the copy into an output buffer that our streaming
        // API does (input is borrowed, output appended), to show where our extra time goes.
        let mut out = BytesMut::with_capacity(common::BULK_LEN);
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&plain));
            let mut mode = cbc::Encryptor::<Aes256>::new(&Array::from(KEY), &Array::from(IV));
            let (blocks, _) = Array::slice_as_chunks_mut(&mut out[..]);
            mode.encrypt_blocks(blocks);
            out.len()
        });
    });
    group.finish();
}

fn decrypt(c: &mut Criterion) {
    let key = AesKey::from_bytes(KEY);
    let cipher_text = {
        let mut out = BytesMut::with_capacity(common::BULK_LEN + 16);
        let mut encryptor = CbcEncryptor::new(&key);
        encryptor.update(&common::data(common::BULK_LEN), &mut out);
        encryptor.finish(&mut out);
        out.to_vec()
    };
    let mut group = c.benchmark_group("aes256_cbc_decrypt");
    group.throughput(Throughput::Bytes(common::BULK_LEN as u64));
    group.bench_function("ours_CbcDecryptor", |b| {
        let mut out = BytesMut::with_capacity(common::BULK_LEN + 32);
        b.iter(|| {
            out.clear();
            let mut decryptor = CbcDecryptor::new(&key);
            for piece in black_box(&cipher_text).chunks(MAX_CONTENT_PIECE) {
                decryptor.update(piece, &mut out);
            }
            decryptor.finish(&mut out).expect("valid padding");
            out.len()
        });
    });
    group.bench_function("raw_aes_cbc_crates", |b| {
        let mut buf = cipher_text[..common::BULK_LEN].to_vec();
        b.iter(|| {
            let mut mode = cbc::Decryptor::<Aes256>::new(&Array::from(KEY), &Array::from(IV));
            let (blocks, _) = Array::slice_as_chunks_mut(black_box(&mut buf[..]));
            mode.decrypt_blocks(blocks);
        });
    });
    group.bench_function("raw_plus_copy_to_output", |b| {
        let mut out = BytesMut::with_capacity(common::BULK_LEN);
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&cipher_text[..common::BULK_LEN]));
            let mut mode = cbc::Decryptor::<Aes256>::new(&Array::from(KEY), &Array::from(IV));
            let (blocks, _) = Array::slice_as_chunks_mut(&mut out[..]);
            mode.decrypt_blocks(blocks);
            out.len()
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = encrypt, decrypt
}
criterion_main!(benches);
