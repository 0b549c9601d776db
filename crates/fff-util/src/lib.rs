//! Small pieces the fastfeedforward crates share, each written once:
//!
//! - [`bandwidth`]: this machine's read and write rates for a working set, for traffic floors;
//! - [`fs`]: files written to a unique temporary name and renamed into place;
//! - [`timing`]: medians of repeated runs and durations in a readable unit;
//! - [`chart`] (feature `chart`): line charts as PNG, with an embedded font;
//! - [`offline`]: whether `FFF_OFFLINE` forbids the network.

#![warn(missing_docs)]

pub mod bandwidth;
#[cfg(feature = "chart")]
pub mod chart;
pub mod fs;
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
