#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The repository's per-byte pipeline (issue 13): keyed chunker, blob ID, zstd, AEAD, and the
//! whole chunk → ID → compress → seal → pack path, each next to its primitive's ceiling in the
//! same group (the `fastcdc` crate with its public table, raw BLAKE3 keyed hash, raw zstd,
//! raw AES-256-GCM of aws-lc-rs, which the repository seals with, and of ring for comparison),
//! on incompressible data and on source code.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cyberbackup_core::repo::{
    BlobKind, BlobSealer, Chunker, ChunkerParams, MasterKey, PackWriter, RepoConfig, RepoKeys,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

mod common;

/// 32 MiB per iteration: several default-size chunks, short enough on a shared machine.
const LEN: usize = 32 * 1024 * 1024;
const READ: usize = 1024 * 1024;

fn keys() -> RepoKeys {
    MasterKey::from_bytes([7; 32]).derive()
}

/// The workspace's own Rust sources, repeated up to `LEN` bytes: compressible "source code".
fn source_code() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in [
        "cyberbackup-core/src",
        "cyberbackup-server/src",
        "cyberbackup-client/src",
    ] {
        collect_rs(&root.join(dir), &mut files);
    }
    files.sort();
    let mut out = Vec::with_capacity(LEN);
    while out.len() < LEN {
        for file in &files {
            out.extend_from_slice(&std::fs::read(file).unwrap());
        }
    }
    out.truncate(LEN);
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn chunks_of(chunker: &mut Chunker, data: &[u8], mut each: impl FnMut(&[u8])) {
    for read in data.chunks(READ) {
        let mut rest = read;
        while !rest.is_empty() {
            rest = &rest[chunker.handle_bytes(rest)..];
            while let Some(chunk) = chunker.poll_chunk() {
                each(&chunk);
            }
        }
    }
    chunker.handle_eof();
    while let Some(chunk) = chunker.poll_chunk() {
        each(&chunk);
    }
}

fn chunker(c: &mut Criterion) {
    let data = common::data(LEN);
    let p = ChunkerParams::DEFAULT;
    let mut group = c.benchmark_group("repo_chunker");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("ours_keyed_fastcdc", |b| {
        let mut chunker = Chunker::new(&p, &keys()).unwrap();
        b.iter(|| {
            let mut n = 0;
            chunks_of(&mut chunker, black_box(&data), |c| n += c.len());
            n
        });
    });
    group.bench_function("ceiling_fastcdc_crate", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(
                black_box(&data),
                p.min_bytes as usize,
                p.avg_bytes as usize,
                p.max_bytes as usize,
            )
            .map(|c| c.length)
            .sum::<usize>()
        });
    });
    group.finish();
}

fn id_hash(c: &mut Criterion) {
    let data = common::data(LEN);
    let keys = keys();
    let sealer = BlobSealer::new(&keys, &RepoConfig::new([0; 16])).unwrap();
    let mut group = c.benchmark_group("repo_id");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("ours_blob_id_1MiB_blobs", |b| {
        b.iter(|| {
            black_box(&data)
                .chunks(READ)
                .map(|c| sealer.id(c).0[0])
                .fold(0u8, u8::wrapping_add)
        });
    });
    group.bench_function("ceiling_blake3_keyed", |b| {
        b.iter(|| {
            black_box(&data)
                .chunks(READ)
                .map(|c| blake3::keyed_hash(&[7; 32], c).as_bytes()[0])
                .fold(0u8, u8::wrapping_add)
        });
    });
    group.finish();
}

fn zstd(c: &mut Criterion) {
    let random = common::data(LEN);
    let text = source_code();
    let mut group = c.benchmark_group("repo_zstd");
    group.throughput(Throughput::Bytes(LEN as u64));
    for level in [1, 3] {
        for (name, data) in [("source", &text), ("incompressible", &random)] {
            group.bench_function(format!("ceiling_zstd_level{level}_{name}"), |b| {
                let mut compressor = ::zstd::bulk::Compressor::new(level).unwrap();
                b.iter(|| {
                    black_box(data)
                        .chunks(READ)
                        .map(|c| compressor.compress(c).unwrap().len())
                        .sum::<usize>()
                });
            });
        }
    }
    group.finish();
}

/// One AES-256-GCM seal per 1 MiB piece, in place, with `$aead` (ring and aws-lc-rs share
/// the API).
macro_rules! seal_pieces {
    ($group:expr, $name:literal, $aead:ident, $data:expr) => {
        $group.bench_function($name, |b| {
            use $aead::aead;
            let key = aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_256_GCM, &[9; 32]).unwrap(),
            );
            let mut buf = $data.clone();
            b.iter(|| {
                for piece in buf.chunks_mut(READ) {
                    let nonce = aead::Nonce::assume_unique_for_key([0; 12]);
                    let tag = key
                        .seal_in_place_separate_tag(nonce, aead::Aad::empty(), piece)
                        .unwrap();
                    let _sealed = black_box(tag);
                }
            });
        });
    };
}

fn aead_seal(c: &mut Criterion) {
    let data = common::data(LEN);
    let mut group = c.benchmark_group("repo_aead");
    group.throughput(Throughput::Bytes(LEN as u64));
    seal_pieces!(group, "ceiling_aws_lc_rs_aes256gcm_1MiB", aws_lc_rs, data);
    seal_pieces!(group, "ring_aes256gcm_1MiB", ring, data);
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let random = common::data(LEN);
    let text = source_code();
    let keys = keys();
    let config = RepoConfig::new([0; 16]);
    let mut group = c.benchmark_group("repo_pipeline");
    group.throughput(Throughput::Bytes(LEN as u64));
    for (name, data) in [("incompressible", &random), ("source", &text)] {
        group.bench_function(format!("ours_chunk_id_compress_seal_pack_{name}"), |b| {
            let mut chunker = Chunker::new(&config.chunker, &keys).unwrap();
            let mut sealer = BlobSealer::new(&keys, &config).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            b.iter(|| {
                let mut pack = PackWriter::new(config.pack_target_bytes);
                let mut stored = 0usize;
                chunks_of(&mut chunker, black_box(data), |chunk| {
                    let id = sealer.id(chunk);
                    let sealed = sealer.seal(BlobKind::Data, id, chunk, &mut rng).unwrap();
                    stored += pack.push_sealed(&sealed).unwrap().len();
                });
                stored + pack.finish().tail.len()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = chunker, id_hash, zstd, aead_seal, pipeline
}
criterion_main!(benches);
