//! Small pieces the fastfeedforward crates share, each written once:
//!
//! - [`bandwidth`]: this machine's read and write rates for a working set, for traffic floors;
//! - [`fs`]: files written to a unique temporary name and renamed into place;
//! - [`memory`]: how much memory this process may still allocate, and which limit says so;
//! - [`timing`]: medians of repeated runs and durations in a readable unit;
//! - [`chart`] (feature `chart`): line charts as PNG or SVG, with an embedded font;
//! - [`offline`]: whether `FFF_OFFLINE` forbids the network;
//! - [`machine`]: the CPU a figure was measured on, in words.

#![warn(missing_docs)]

pub mod bandwidth;
#[cfg(feature = "chart")]
pub mod chart;
pub mod fs;
pub mod memory;
pub mod timing;

/// Whether an `FFF_OFFLINE` value forbids the network: any value but `0`, `false`, `no` or
/// `off` (case and surrounding spaces ignored) does; an absent variable does not.
pub fn offline(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// The CPU this process runs on, in words, for the figures it measures: the model name of
/// `/proc/cpuinfo` (or the architecture where there is none) and the widest x86 vector
/// extension it has, e.g. `AMD EPYC 7B13 (AVX2)`.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[cfg(target_arch = "x86_64")]
    let simd = if std::arch::is_x86_feature_detected!("avx512f") {
        " (AVX-512)"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        " (AVX2)"
    } else {
        ""
    };
    #[cfg(not(target_arch = "x86_64"))]
    let simd = "";
    format!("{model}{simd}")
}
