// The workspace forbids unsafe code; this test binary alone needs `unsafe impl GlobalAlloc`
// to count heap bytes. Soundness: `CountingAlloc` forwards every call unchanged to `System`
// (same pointer, layout and size, so `System`'s guarantees carry over verbatim) and
// otherwise only updates two atomics, which neither allocate nor unwind.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Memory is bounded by construction: a 1028 header announcing a ~4 GiB payload followed by
//! 64 MiB of content, read 64 KiB at a time, must never make the decoder (or the whole server
//! pipeline: decode → decrypt → cksum → AppendFile) hold more than a few pieces. A counting
//! global allocator measures the peak heap growth.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use cyberbackup_core::crypto::AesKey;
use cyberbackup_core::fuzzing::CountingRng;
use cyberbackup_core::limits::{FILE_META_LEN, MAX_FILE_FRAME_PAYLOAD, MAX_V3_FILE_LEN};
use cyberbackup_core::names::{ClientId, NameField};
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::codec::{Inbound, RequestDecoder};
use cyberbackup_core::v3::frame::FileMeta;
use cyberbackup_core::v3::{ServerConfig, ServerEffect, ServerSession};

const READ_LEN: usize = 64 * 1024;
const CONTENT_LEN: usize = 64 * 1024 * 1024;
const PEAK_LIMIT: usize = 16 * 1024 * 1024;

struct CountingAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = CURRENT.fetch_add(size, Ordering::SeqCst) + size;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

fn shrank(size: usize) {
    CURRENT.fetch_sub(size, Ordering::SeqCst);
}

// SAFETY: every method delegates to `System` with the caller's arguments unchanged and
// returns its result unchanged; the bookkeeping touches only atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we forward.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The counters are process-wide: measurements must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `work` and returns the peak heap growth above the level at its start, in bytes.
fn peak_growth(work: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    work();
    PEAK.load(Ordering::SeqCst).saturating_sub(base)
}

#[test]
fn the_counter_sees_a_buffered_payload() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // What a buffering decoder would do: keep the content. The bound must catch it.
    let growth = peak_growth(|| {
        let mut kept = BytesMut::new();
        let read = vec![0x5a_u8; READ_LEN];
        for _ in 0..CONTENT_LEN / READ_LEN {
            kept.extend_from_slice(&read);
        }
        assert_eq!(kept.len(), CONTENT_LEN);
    });
    assert!(
        growth >= CONTENT_LEN,
        "counter missed allocations: {growth}"
    );
}

#[test]
fn decoder_streams_a_4_gib_frame_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let head = huge_frame_head();
    let read = vec![0xa5_u8; READ_LEN];
    let mut buf = BytesMut::with_capacity(READ_LEN);
    let mut decoder = RequestDecoder::new();
    let mut content = 0usize;

    let growth = peak_growth(|| {
        buf.extend_from_slice(&head);
        match decoder.decode(&mut buf).unwrap() {
            Some(Inbound::FileHeader { content_len, .. }) => {
                assert_eq!(
                    u64::from(content_len),
                    u64::from(u32::MAX) - FILE_META_LEN as u64
                );
            }
            other => panic!("expected the file header, got {other:?}"),
        }
        for _ in 0..CONTENT_LEN / READ_LEN {
            buf.extend_from_slice(&read);
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                let Inbound::FileContent(piece) = item else {
                    panic!("unexpected item {item:?}");
                };
                content += piece.len();
                // The piece is dropped here, as a driver does after handing it on.
            }
            // Each read is consumed entirely: nothing waits for the rest of the payload.
            assert!(buf.is_empty(), "the decoder held back {} bytes", buf.len());
        }
    });

    report("decoder", growth);
    assert_eq!(content, CONTENT_LEN);
    assert!(!decoder.is_at_frame_boundary());
    assert!(
        growth < PEAK_LIMIT,
        "peak heap growth {growth} bytes while decoding (limit {PEAK_LIMIT})"
    );
}

#[test]
fn server_session_streams_a_4_gib_frame_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let head = huge_frame_head();
    let read: Vec<u8> = (0..READ_LEN)
        .map(|i| u8::try_from((i * 131 + 17) % 251).unwrap())
        .collect();
    let now = Instant::now();
    let client_id = ClientId([0x11; 16]);
    let mut session = ServerSession::new(Arc::new(ServerConfig::default()), CountingRng(7), now);
    session.inject_session_key(
        client_id,
        NameField::new(&b"alloc-bound"[..]).unwrap(),
        AesKey::from_bytes([0x42; 32]),
    );
    let mut buf = BytesMut::with_capacity(READ_LEN);
    let mut appended = 0usize;
    let mut begun = false;

    let growth = peak_growth(|| {
        buf.extend_from_slice(&head);
        for round in 0..=CONTENT_LEN / READ_LEN {
            if round > 0 {
                buf.extend_from_slice(&read);
            }
            loop {
                session.handle_bytes(now, &mut buf).unwrap();
                let mut answered = false;
                while let Some(output) = session.poll_output() {
                    match output {
                        Output::Effect(ServerEffect::BeginFile { .. }) => begun = true,
                        // The driver stores the data; here it is dropped.
                        Output::Effect(ServerEffect::AppendFile { data, .. }) => {
                            appended += data.len();
                        }
                        other => panic!("unexpected output {other:?}"),
                    }
                    session.handle_storage(now, Ok(())).unwrap();
                    answered = true;
                }
                if !answered {
                    break;
                }
            }
            assert!(buf.is_empty(), "the session held back {} bytes", buf.len());
        }
    });

    report("server session", growth);
    assert!(begun);
    // The decryptor holds back the last full block (it may be the padding).
    assert_eq!(appended, CONTENT_LEN - 16);
    assert!(session.has_open_transfer());
    assert!(
        growth < PEAK_LIMIT,
        "peak heap growth {growth} bytes in the server pipeline (limit {PEAK_LIMIT})"
    );
}

#[allow(clippy::print_stderr)]
fn report(what: &str, growth: usize) {
    eprintln!("{what}: peak heap growth {growth} bytes (limit {PEAK_LIMIT})");
}

/// Header and metadata of a single-packet 1028 frame announcing `u32::MAX` payload bytes.
fn huge_frame_head() -> Vec<u8> {
    let content_len = MAX_FILE_FRAME_PAYLOAD - u32::try_from(FILE_META_LEN).unwrap();
    let meta = FileMeta {
        content_size: content_len,
        orig_file_size: u32::try_from(MAX_V3_FILE_LEN).unwrap(),
        packet_number: 1,
        total_packets: 1,
        file_name: NameField::new(&b"huge.bin"[..]).unwrap(),
    };
    let mut head = Vec::new();
    meta.encode_frame_head(ClientId([0x11; 16]), content_len, &mut head);
    assert_eq!(head.len(), 23 + FILE_META_LEN);
    assert_eq!(&head[19..23], &u32::MAX.to_le_bytes());
    head
}
