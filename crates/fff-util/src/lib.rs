//! Small pieces the fastfeedforward crates share, each written once:
//!
//! - [`fs`]: files written to a unique temporary name and renamed into place;
//! - [`timing`]: medians of repeated runs and durations in a readable unit;
//! - [`chart`] (feature `chart`): line charts as PNG, with an embedded font.

#![warn(missing_docs)]

#[cfg(feature = "chart")]
pub mod chart;
pub mod fs;
pub mod timing;
