//! Shared sizes and inputs of the micro-benchmarks.

// Each bench target includes this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;

/// Bytes pushed through each throughput benchmark.
pub(crate) const BULK_LEN: usize = 64 * 1024 * 1024;

/// Criterion settings that keep `cargo bench -p cyberbackup-bench` to a few minutes: each
/// bulk iteration already moves 64 MiB, so ten samples give a stable median.
///
/// No plots: the harness's chart enables plotters' `ab_glyph` text backend, which (features
/// being unified) criterion's plotters shares, and criterion registers no font for it, so
/// its HTML plots would fail with `FontUnavailable`. The numbers are on stdout and in
/// `target/criterion/*/new/estimates.json`.
pub(crate) fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .noise_threshold(0.05)
        .without_plots()
}

/// Deterministic, incompressible-looking data (xorshift), `len` bytes.
pub(crate) fn data(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
