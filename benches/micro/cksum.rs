#![allow(clippy::unwrap_used, clippy::expect_used)]
//! POSIX cksum over 64 MiB, fed in 256 KiB pieces (the decoder's largest content piece).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cyberbackup_core::crypto::Cksum;
use cyberbackup_core::limits::MAX_CONTENT_PIECE;

mod common;

fn cksum(c: &mut Criterion) {
    let data = common::data(common::BULK_LEN);
    let mut group = c.benchmark_group("cksum");
    group.throughput(Throughput::Bytes(common::BULK_LEN as u64));
    group.bench_function("64MiB", |b| {
        b.iter(|| {
            let mut hasher = Cksum::new();
            for piece in black_box(&data).chunks(MAX_CONTENT_PIECE) {
                hasher.update(piece);
            }
            hasher.finalize()
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = cksum
}
criterion_main!(benches);
