//! CPU kernels for the FFF layer: a plain reference descent and the fast, batched,
//! multithreaded, SIMD inference kernel, with tests that hold one to the other.
//!
//! Layout used by every kernel (the layer converts PyTorch's layout on load and save):
//! `w_in` is `[K·M, in]`, `b_in` is `[K·M]`, and `w_out_t` is `[K·M, out]` (node-major, i.e.
//! PyTorch's `linear_out.weight` transposed) so that a visited node's output row is contiguous.

mod bucketed;
pub(crate) mod descent;
mod dev;
pub mod format;
pub mod packed;
pub(crate) mod phases;
pub mod reference;
mod shallow;
pub(crate) mod simd;
mod tile;

use crate::config::FffConfig;
use crate::error::{check_rows, FffError, Result};

pub use descent::{forward, forward_with_routes, InferOptions, Strategy, Workspace};
pub use format::{WeightElem, WeightFormat};
pub use simd::SimdLevel;

/// Borrowed weights of one FFF layer in the kernels' layout, stored as `E` (f32 by default;
/// see [`format`] for bf16 and int8).
#[derive(Clone, Copy, Debug)]
pub struct FffWeightsView<'a, E: WeightElem = f32> {
    /// The layer's shape and activation.
    pub config: FffConfig,
    /// Input weights, `[K·M, in]` row-major, rows tree-major (row = t·M + node).
    pub w_in: &'a [E],
    /// Input biases, `[K·M]`.
    pub b_in: &'a [f32],
    /// Output weights, node-major `[K·M, out]` (PyTorch's `linear_out.weight` transposed).
    pub w_out_t: &'a [E],
    /// Per-row scales of `w_in` (`[K·M]`, int8 only; empty otherwise).
    pub w_in_scales: &'a [f32],
    /// Per-row scales of `w_out_t` (`[K·M]`, int8 only; empty otherwise).
    pub w_out_scales: &'a [f32],
}

impl<'a> FffWeightsView<'a, f32> {
    /// Checks the buffer lengths against `config`.
    pub fn new(
        config: FffConfig,
        w_in: &'a [f32],
        b_in: &'a [f32],
        w_out_t: &'a [f32],
    ) -> Result<Self> {
        Self::with_scales(config, w_in, b_in, w_out_t, &[], &[])
    }
}

impl<'a, E: WeightElem> FffWeightsView<'a, E> {
    /// Checks the buffer lengths against `config`; the scales are `[K·M]` each for int8 and
    /// empty for the other formats.
    pub fn with_scales(
        config: FffConfig,
        w_in: &'a [E],
        b_in: &'a [f32],
        w_out_t: &'a [E],
        w_in_scales: &'a [f32],
        w_out_scales: &'a [f32],
    ) -> Result<Self> {
        config.validate()?;
        let rows = config.total_nodes();
        let check = |name: &str, got: usize, want: &[usize]| {
            if got != want.iter().product::<usize>() {
                Err(FffError::shape(name, want, &[got]))
            } else {
                Ok(())
            }
        };
        check("w_in", w_in.len(), &[rows, config.input_width])?;
        check("b_in", b_in.len(), &[rows])?;
        check("w_out_t", w_out_t.len(), &[rows, config.output_width])?;
        let scale_rows = if E::FORMAT == WeightFormat::Int8 {
            rows
        } else {
            0
        };
        check("w_in_scales", w_in_scales.len(), &[scale_rows])?;
        check("w_out_scales", w_out_scales.len(), &[scale_rows])?;
        Ok(FffWeightsView {
            config,
            w_in,
            b_in,
            w_out_t,
            w_in_scales,
            w_out_scales,
        })
    }

    /// Input row of global node `row`.
    #[inline(always)]
    pub fn w_in_row(&self, row: usize) -> &'a [E] {
        let w = self.config.input_width;
        &self.w_in[row * w..(row + 1) * w]
    }

    /// Output row of global node `row`.
    #[inline(always)]
    pub fn w_out_row(&self, row: usize) -> &'a [E] {
        let w = self.config.output_width;
        &self.w_out_t[row * w..(row + 1) * w]
    }

    /// What a dot product with input row `row` is multiplied by (1 unless int8).
    #[inline(always)]
    pub fn w_in_scale(&self, row: usize) -> f32 {
        if E::FORMAT == WeightFormat::Int8 {
            self.w_in_scales[row]
        } else {
            1.0
        }
    }

    /// What output row `row` is multiplied by (1 unless int8).
    #[inline(always)]
    pub fn w_out_scale(&self, row: usize) -> f32 {
        if E::FORMAT == WeightFormat::Int8 {
            self.w_out_scales[row]
        } else {
            1.0
        }
    }
}

pub(crate) use crate::tree::child;

/// Checks that `x` holds `batch` rows of `width` and `y` the matching output rows.
pub(crate) fn check_io(config: &FffConfig, x: &[f32], y: &[f32], batch: usize) -> Result<()> {
    check_rows("input", x.len(), batch, config.input_width)?;
    check_rows("output", y.len(), batch, config.output_width)
}
