//! The check every timed implementation passes: sampled rows of its output, at the batch, thread
//! count and strategy it is timed with, against a plain f64 reference.
//!
//! A check at a small batch proves nothing about a timed large one: the kernel picks another walk
//! (bucketed instead of per-token) and splits the work differently across threads once the batch
//! grows. So the rows compared are taken from the very buffers the timed calls wrote.

use crate::impls::{fff_reference, DenseWeights};
use fastfeedforward::kernels::reference::{node_logit, route};
use fastfeedforward::Fff;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;

/// Largest |difference| allowed, relative to 1 + the row's largest |reference value|: f32
/// against f64 over thousands of neurons stays far below it, a wrong output does not.
pub const TOLERANCE: f64 = 1e-3;

/// Rows whose path passes within this |z| of a decision may route differently under another
/// summation order: a different leaf, not a bug.
pub const TIE_MARGIN: f32 = 1e-4;

/// Rows compared per checked output, at most (all of them in smaller batches).
pub const DEFAULT_CHECK_ROWS: usize = 256;

/// The plain reference an implementation's output rows are compared with.
pub trait Reference: Sync {
    /// Reference output of one input row.
    fn row(&self, x: &[f32]) -> Vec<f32>;

    /// Whether `x`'s path passes within `margin` of a routing decision (never, for a dense
    /// layer: it has none).
    fn near_tie(&self, _x: &[f32], _margin: f32) -> bool {
        false
    }
}

impl Reference for DenseWeights {
    fn row(&self, x: &[f32]) -> Vec<f32> {
        self.reference(x, 1)
    }
}

/// The reference of an FFF layer: plain per-input descent with f64 accumulation.
pub struct FffReference<'l>(pub &'l Fff);

impl Reference for FffReference<'_> {
    fn row(&self, x: &[f32]) -> Vec<f32> {
        fff_reference(self.0, x, 1).expect("a row of the layer's input width")
    }

    fn near_tie(&self, x: &[f32], margin: f32) -> bool {
        let c = *self.0.config();
        let m = c.nodes_per_tree();
        self.0
            .with_view(|w| {
                route(&w, x).iter().enumerate().any(|(i, &n)| {
                    let row = (i / (c.depth + 1)) * m + n as usize;
                    node_logit(&w, row, x).abs() < margin
                })
            })
            .expect("the layer's own weights")
    }
}

/// What the checks of one implementation found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckReport {
    /// Output rows compared with the reference (over all checked calls).
    pub rows: usize,
    /// Of those, rows that differed but were excused as near-tie routing flips.
    pub excused: usize,
    /// Largest |difference| over the rows not excused, relative to 1 + the row's largest
    /// |reference value|.
    pub max_err: f64,
    /// Why the check failed; `None` when it passed.
    pub failure: Option<String>,
}

impl CheckReport {
    /// Whether every checked call passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// Both reports together; the first failure is kept.
    pub fn merge(mut self, other: CheckReport) -> CheckReport {
        self.rows += other.rows;
        self.excused += other.excused;
        self.max_err = self.max_err.max(other.max_err);
        if self.failure.is_none() {
            self.failure = other.failure;
        }
        self
    }
}

/// Compares sampled output rows with a reference, remembering the reference rows it computed:
/// every implementation of a layer is checked on the same input pool, so rows repeat.
pub struct Checker<'r> {
    reference: &'r dyn Reference,
    input_width: usize,
    output_width: usize,
    max_rows: usize,
    /// Pool row -> (reference output, near a tie).
    cache: HashMap<usize, (Vec<f32>, bool)>,
}

impl<'r> Checker<'r> {
    /// A checker comparing at most about `max_rows` rows per output.
    pub fn new(
        reference: &'r dyn Reference,
        input_width: usize,
        output_width: usize,
        max_rows: usize,
    ) -> Self {
        Checker {
            reference,
            input_width,
            output_width,
            max_rows: max_rows.max(1),
            cache: HashMap::new(),
        }
    }

    /// Width of an input row.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// Width of an output row.
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// Pool rows compared for the window `[offset, offset + batch)`: all of them in a batch of
    /// at most `max_rows`, else those on a fixed stride through the pool (so that windows at
    /// different offsets share reference rows), plus the window's first and last rows, where
    /// the splits into chunks and tiles leave their remainders.
    pub fn sampled_rows(&self, offset: usize, batch: usize) -> Vec<usize> {
        if batch == 0 {
            return Vec::new();
        }
        let stride = batch.div_ceil(self.max_rows);
        let mut rows: Vec<usize> = (offset..offset + batch)
            .filter(|r| r % stride == 0)
            .collect();
        rows.push(offset);
        rows.push(offset + batch - 1);
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// Checks `y`, the output for pool rows `[offset, offset + batch)` of `pool`.
    pub fn check(&mut self, pool: &[f32], offset: usize, batch: usize, y: &[f32]) -> CheckReport {
        let (cin, cout) = (self.input_width, self.output_width);
        let rows = self.sampled_rows(offset, batch);
        let missing: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|r| !self.cache.contains_key(r))
            .collect();
        let reference = self.reference;
        let computed: Vec<(usize, (Vec<f32>, bool))> = missing
            .par_iter()
            .map(|&r| {
                let x = &pool[r * cin..(r + 1) * cin];
                (r, (reference.row(x), reference.near_tie(x, TIE_MARGIN)))
            })
            .collect();
        self.cache.extend(computed);
        let mut report = CheckReport {
            rows: rows.len(),
            ..CheckReport::default()
        };
        for &r in &rows {
            let (want, near_tie) = &self.cache[&r];
            let pos = r - offset;
            let got = &y[pos * cout..(pos + 1) * cout];
            let err = row_error(got, want);
            if err <= TOLERANCE {
                report.max_err = report.max_err.max(err);
            } else if *near_tie {
                report.excused += 1;
            } else if report.failure.is_none() {
                report.failure = Some(format!(
                    "row {pos} of {batch} differs from the reference by {err:.3e} (relative), \
                     over the {TOLERANCE:e} allowed"
                ));
            }
        }
        // Excused rows are routing flips at |z| < TIE_MARGIN: rare on random inputs; many mean
        // a bug that happens to sit near ties (or a margin that hides one).
        if report.failure.is_none() && report.excused > rows.len() / 50 {
            report.failure = Some(format!(
                "{} of {} checked rows differ near a routing tie: more than 2% is no longer rounding",
                report.excused,
                rows.len()
            ));
        }
        report
    }
}

/// Largest |got − want| relative to 1 + the largest |want|; a NaN or infinite output counts
/// as infinitely wrong.
pub fn row_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = 1.0 + want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| {
        let d = (*a as f64 - *b as f64).abs();
        if d.is_finite() {
            m.max(d)
        } else {
            f64::INFINITY
        }
    });
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    err / scale
}
