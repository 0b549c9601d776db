//! `fff bench`: a correct, reproducible speed comparison of FFF layers against dense
//! feedforward layers (UltraFastBERT's CPU table, done right).
//!
//! Every implementation's output is checked against a plain f64 reference on the same input
//! before it is timed; a mismatch aborts the run. Timings are medians after warm-up, and every
//! speedup is a ratio of two timings taken in the same run.

#![warn(missing_docs)]

pub mod bert;
pub mod impls;
pub mod report;
pub mod runner;

pub use runner::{run, BenchOptions, ConfigSpec, Record};
