//! `fff bench`: a correct, reproducible speed comparison of FFF layers against dense
//! feedforward layers (UltraFastBERT's CPU table, done right).
//!
//! Every implementation's output is checked against a plain f64 reference at the batch, thread
//! count and strategy it is timed with, on sampled rows of the very outputs its timed calls wrote;
//! an implementation that fails is recorded as failed and never serves as a baseline. Timings are
//! medians after warm-up, and every speedup is a ratio of two timings taken in the same run.

#![warn(missing_docs)]

pub mod bert;
pub mod check;
pub mod encoder;
pub mod impls;
pub mod report;
pub mod runner;
pub mod train;

pub use runner::{run, BenchOptions, ConfigSpec, Record};
