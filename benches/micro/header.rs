#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The 23-byte request header: decode from and encode to the wire.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cyberbackup_core::limits::{PROTOCOL_VERSION_V3, REQUEST_HEADER_LEN};
use cyberbackup_core::names::ClientId;
use cyberbackup_core::v3::frame::{RequestCode, RequestHeader};

mod common;

fn header(c: &mut Criterion) {
    let header = RequestHeader {
        client_id: ClientId([0xb9; 16]),
        version: PROTOCOL_VERSION_V3,
        code: RequestCode::SEND_FILE,
        payload_len: 347,
    };
    let mut wire = [0u8; REQUEST_HEADER_LEN];
    header.encode(&mut &mut wire[..]);

    let mut group = c.benchmark_group("request_header");
    group.throughput(Throughput::Bytes(REQUEST_HEADER_LEN as u64));
    group.bench_function("decode", |b| {
        b.iter(|| RequestHeader::decode(black_box(&wire)));
    });
    group.bench_function("encode", |b| {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        b.iter(|| {
            black_box(&header).encode(&mut &mut out[..]);
            black_box(&out);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = header
}
criterion_main!(benches);
