//! CPU kernels for the FFF layer: a plain reference descent and the fast, batched,
//! multithreaded, SIMD inference kernel, with tests that hold one to the other.
//!
//! Layout used by every kernel (the layer converts PyTorch's layout on load and save):
//! `w_in` is `[K·M, in]`, `b_in` is `[K·M]`, and `w_out_t` is `[K·M, out]` (node-major, i.e.
//! PyTorch's `linear_out.weight` transposed) so that a visited node's output row is contiguous.

mod bucketed;
pub(crate) mod descent;
mod dev;
pub(crate) mod phases;
pub mod reference;
pub(crate) mod simd;
mod tile;

use crate::config::FffConfig;
use crate::error::{check_rows, FffError, Result};

pub use descent::{forward, forward_with_routes, InferOptions, Strategy, Workspace};
pub use simd::SimdLevel;

/// Borrowed weights of one FFF layer in the kernels' layout.
#[derive(Clone, Copy, Debug)]
pub struct FffWeightsView<'a> {
    /// The layer's shape and activation.
    pub config: FffConfig,
    /// Input weights, `[K·M, in]` row-major, rows tree-major (row = t·M + node).
    pub w_in: &'a [f32],
    /// Input biases, `[K·M]`.
    pub b_in: &'a [f32],
    /// Output weights, node-major `[K·M, out]` (PyTorch's `linear_out.weight` transposed).
    pub w_out_t: &'a [f32],
}

impl<'a> FffWeightsView<'a> {
    /// Checks the buffer lengths against `config`.
    pub fn new(
        config: FffConfig,
        w_in: &'a [f32],
        b_in: &'a [f32],
        w_out_t: &'a [f32],
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
        Ok(FffWeightsView {
            config,
            w_in,
            b_in,
            w_out_t,
        })
    }

    /// Input row of global node `row`.
    #[inline(always)]
    pub fn w_in_row(&self, row: usize) -> &'a [f32] {
        let w = self.config.input_width;
        &self.w_in[row * w..(row + 1) * w]
    }

    /// Output row of global node `row`.
    #[inline(always)]
    pub fn w_out_row(&self, row: usize) -> &'a [f32] {
        let w = self.config.output_width;
        &self.w_out_t[row * w..(row + 1) * w]
    }
}

pub(crate) use crate::tree::child;

/// Checks that `x` holds `batch` rows of `width` and `y` the matching output rows.
pub(crate) fn check_io(config: &FffConfig, x: &[f32], y: &[f32], batch: usize) -> Result<()> {
    check_rows("input", x.len(), batch, config.input_width)?;
    check_rows("output", y.len(), batch, config.output_width)
}
