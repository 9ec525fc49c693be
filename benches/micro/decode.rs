#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Streaming decode of one 64 MiB 1028 frame through `RequestDecoder`, fed in 64 KiB reads
//! into one reused buffer, as a socket driver does (the copy into the buffer is included).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cyberbackup_core::names::{ClientId, NameField};
use cyberbackup_core::v3::codec::{Inbound, RequestDecoder};
use cyberbackup_core::v3::frame::FileMeta;

mod common;

const READ_LEN: usize = 64 * 1024;

fn decode(c: &mut Criterion) {
    let content_len = u32::try_from(common::BULK_LEN).expect("64 MiB fits a u32");
    let meta = FileMeta {
        content_size: content_len,
        orig_file_size: content_len - 16,
        packet_number: 1,
        total_packets: 1,
        file_name: NameField::new(&b"bench.bin"[..]).expect("valid name"),
    };
    let mut head = Vec::new();
    meta.encode_frame_head(ClientId([1; 16]), content_len, &mut head);
    let read = common::data(READ_LEN);

    let mut group = c.benchmark_group("decode_file_frame");
    group.throughput(Throughput::Bytes(common::BULK_LEN as u64));
    group.bench_function("64MiB_in_64KiB_reads", |b| {
        let mut buf = BytesMut::with_capacity(READ_LEN);
        b.iter(|| {
            let mut decoder = RequestDecoder::new();
            let mut content = 0usize;
            let mut ended = false;
            buf.extend_from_slice(&head);
            for _ in 0..common::BULK_LEN / READ_LEN {
                buf.extend_from_slice(&read);
                while let Ok(Some(item)) = decoder.decode(&mut buf) {
                    match item {
                        Inbound::FileContent(piece) => content += black_box(piece).len(),
                        Inbound::FileEnd => ended = true,
                        _ => {}
                    }
                }
            }
            assert!(ended && content == common::BULK_LEN);
            content
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = decode
}
criterion_main!(benches);
