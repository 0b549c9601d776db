//! `fff bench train`: the dense masked formulation UltraFastBERT trains with, written as a good
//! PyTorch implementation runs it, and the check that holds it and the O(depth) training op to
//! each other before either is timed.
//!
//! The masked layer here is one SGEMM for all `K·M` logits, one pass that adds the bias, finds
//! each input's path, and writes the activation of the visited nodes (zero elsewhere), and one
//! SGEMM out, all on faer; its backward pass is the same pass's derivative and four SGEMMs (and a
//! GEMV for the bias). The dense masked reference of the library
//! ([`fastfeedforward::reference`]) round-trips the logits through host memory for its mask and
//! walks them in a scalar loop: it is the tests' oracle, too slow to be a fair baseline.

use anyhow::{ensure, Context, Result};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor, Var};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use fastfeedforward::internal::f32_slice;
use fastfeedforward::kernels::reference::{node_logit, route};
use fastfeedforward::tree::forest_visits;
use fastfeedforward::{Fff, FffConfig};
use rayon::prelude::*;

/// Differentiable dense masked forward of `layer`: `(mask ⊙ act(x·w_inᵀ + b_in))·w_out_t`.
pub fn masked_dense_forward(layer: &Fff, x: &Tensor) -> Result<Tensor> {
    masked_dense(
        layer.config(),
        x,
        layer.w_in(),
        layer.b_in(),
        layer.w_out_t(),
    )
}

/// [`masked_dense_forward`] on explicit parameters (`x [B,in]`, `w_in [K·M,in]`,
/// `b_in [K·M]`, `w_out_t [K·M,out]`); a parameter that tracks no gradient gets none.
pub fn masked_dense(
    config: &FffConfig,
    x: &Tensor,
    w_in: &Tensor,
    b_in: &Tensor,
    w_out_t: &Tensor,
) -> Result<Tensor> {
    let xw = x
        .contiguous()?
        .apply_op2(&w_in.contiguous()?, Gemm::new(false, true))?;
    let h = xw.apply_op2(b_in, MaskAct { config: *config })?;
    Ok(h.apply_op2(&w_out_t.contiguous()?, Gemm::new(false, false))?)
}

fn dims2(l: &Layout, name: &str) -> candle_core::Result<(usize, usize)> {
    match *l.dims() {
        [r, c] => Ok((r, c)),
        ref d => candle_core::bail!("masked dense: `{name}` has shape {d:?}, expected a matrix"),
    }
}

/// `op(a)·op(b)` on faer's SGEMM, `op` transposing where asked, with its own gradients.
#[derive(Debug, Clone, Copy)]
struct Gemm {
    trans_a: bool,
    trans_b: bool,
}

impl Gemm {
    fn new(trans_a: bool, trans_b: bool) -> Self {
        Gemm { trans_a, trans_b }
    }
}

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "masked-dense-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ar, ac) = dims2(l1, "lhs")?;
        let (br, bc) = dims2(l2, "rhs")?;
        let a = MatRef::from_row_major_slice(f32_slice(s1, l1, "lhs")?, ar, ac);
        let b = MatRef::from_row_major_slice(f32_slice(s2, l2, "rhs")?, br, bc);
        let a = if self.trans_a { a.transpose() } else { a };
        let b = if self.trans_b { b.transpose() } else { b };
        if a.ncols() != b.nrows() {
            candle_core::bail!(
                "masked dense: cannot multiply {}x{} by {}x{}",
                a.nrows(),
                a.ncols(),
                b.nrows(),
                b.ncols()
            )
        }
        let (m, n) = (a.nrows(), b.ncols());
        let mut out = vec![0f32; m * n];
        let c = MatMut::from_row_major_slice_mut(&mut out, m, n);
        matmul(c, Accum::Replace, a, b, 1.0f32, Par::rayon(0));
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // C = op(A)·op(B): d op(A) = G·op(B)ᵀ and d op(B) = op(A)ᵀ·G, transposed back where
        // op transposed. Written as products of the stored operands, so nothing is copied.
        let g = grad.contiguous()?;
        let grad_a = if !a.track_op() {
            None
        } else if self.trans_a {
            Some(b.apply_op2_no_bwd(&g, &Gemm::new(self.trans_b, true))?)
        } else {
            Some(g.apply_op2_no_bwd(b, &Gemm::new(false, !self.trans_b))?)
        };
        let grad_b = if !b.track_op() {
            None
        } else if self.trans_b {
            Some(g.apply_op2_no_bwd(a, &Gemm::new(true, self.trans_a))?)
        } else {
            Some(a.apply_op2_no_bwd(&g, &Gemm::new(!self.trans_a, false))?)
        };
        Ok((grad_a, grad_b))
    }
}

/// Rows of the batch per rayon task in the mask passes.
const ROWS_PER_TASK: usize = 4;

/// `(xw [B,K·M], b [K·M]) -> h [B,K·M]`: bias, path and activation in one pass; `h` is the
/// visited nodes' activations and zero elsewhere, the masked activations.
#[derive(Debug, Clone, Copy)]
struct MaskAct {
    config: FffConfig,
}

/// `(xw, b, grad_h) -> grad_xw`: `grad_h ⊙ mask ⊙ act'(xw + b)`, in one pass.
#[derive(Debug, Clone, Copy)]
struct MaskActGrad {
    config: FffConfig,
}

fn mask_shapes(c: &FffConfig, l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize)> {
    let (batch, rows) = dims2(l1, "logits")?;
    if rows != c.total_nodes() || l2.dims() != [rows] {
        candle_core::bail!(
            "masked dense: logits {:?} and bias {:?} do not fit {} nodes",
            l1.dims(),
            l2.dims(),
            c.total_nodes()
        )
    }
    Ok((batch, rows))
}

impl CustomOp2 for MaskAct {
    fn name(&self) -> &'static str {
        "masked-dense-mask-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = self.config;
        let (batch, rows) = mask_shapes(&c, l1, l2)?;
        let xw = f32_slice(s1, l1, "logits")?;
        let b = f32_slice(s2, l2, "bias")?;
        let mut h = vec![0f32; batch * rows];
        if rows > 0 {
            h.par_chunks_mut(rows)
                .zip(xw.par_chunks(rows))
                .with_min_len(ROWS_PER_TASK)
                .for_each(|(h_r, xw_r)| {
                    for v in forest_visits(c.trees, c.depth + 1, |n| xw_r[n] + b[n]) {
                        h_r[v.row] = c.activation.apply(v.z);
                    }
                });
        }
        Ok((CpuStorage::F32(h), Shape::from((batch, rows))))
    }

    fn bwd(
        &self,
        xw: &Tensor,
        b: &Tensor,
        _h: &Tensor,
        grad_h: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_h = grad_h.contiguous()?;
        let grad_xw = xw.apply_op3_no_bwd(
            b,
            &grad_h,
            &MaskActGrad {
                config: self.config,
            },
        )?;
        let grad_b = if b.track_op() {
            // The bias gradient sums grad_xw over the batch: a GEMV with a column of ones.
            let ones = Tensor::ones((xw.dim(0)?, 1), xw.dtype(), xw.device())?;
            let sums = grad_xw.apply_op2_no_bwd(&ones, &Gemm::new(true, false))?;
            Some(sums.reshape(self.config.total_nodes())?)
        } else {
            None
        };
        Ok((Some(grad_xw), grad_b))
    }
}

impl CustomOp3 for MaskActGrad {
    fn name(&self) -> &'static str {
        "masked-dense-mask-act-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = self.config;
        let (batch, rows) = mask_shapes(&c, l1, l2)?;
        if l3.dims() != l1.dims() {
            candle_core::bail!(
                "masked dense: gradient {:?} is not {:?}",
                l3.dims(),
                l1.dims()
            )
        }
        let xw = f32_slice(s1, l1, "logits")?;
        let b = f32_slice(s2, l2, "bias")?;
        let grad_h = f32_slice(s3, l3, "gradient")?;
        let mut grad = vec![0f32; batch * rows];
        if rows > 0 {
            grad.par_chunks_mut(rows)
                .zip(xw.par_chunks(rows).zip(grad_h.par_chunks(rows)))
                .with_min_len(ROWS_PER_TASK)
                .for_each(|(g_r, (xw_r, gh_r))| {
                    for v in forest_visits(c.trees, c.depth + 1, |n| xw_r[n] + b[n]) {
                        g_r[v.row] = gh_r[v.row] * c.activation.derivative(v.z);
                    }
                });
        }
        Ok((CpuStorage::F32(grad), Shape::from((batch, rows))))
    }
}

/// One side of the training comparison: a differentiable forward of a layer.
pub type TrainSide<'a> = &'a dyn Fn(&Fff, &Tensor) -> Result<Tensor>;

/// The quantities compared, in order: the output and the gradients of the loss.
pub const COMPARED: [&str; 5] = ["output", "dL/dx", "dL/dw_in", "dL/db_in", "dL/dw_out"];

/// What comparing the two sides of `fff bench train` found.
#[derive(Debug, Clone)]
pub struct TrainCheck {
    /// Batch rows in the comparison.
    pub rows: usize,
    /// Rows left out of the loss and the comparison: their path passes within
    /// [`crate::check::TIE_MARGIN`] of a decision, where the sides may route them differently.
    pub excused: usize,
    /// Largest relative difference for each of [`COMPARED`].
    pub max_err: [f64; 5],
    /// Why the check failed; `None` when it passed.
    pub failure: Option<String>,
}

impl TrainCheck {
    /// Whether the sides agree.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs both sides forward and backward on `x` (`[batch, in]`) with an MSE loss against
/// `target` and compares their outputs and the gradients of the loss for the input and every
/// parameter, row by row: each row's largest |difference| relative to its largest |value| on
/// side `b` (at least 1e-3 of the whole tensor's, so rows that are all but zero do not turn
/// rounding into failure) must stay within `tol`. Rows whose path passes near a routing tie
/// carry no weight in the loss, so a flip there changes neither side's gradients; more than 2%
/// of them fails the check.
pub fn check_train_sides(
    layer: &Fff,
    x: &[f32],
    target: &[f32],
    a: TrainSide<'_>,
    b: TrainSide<'_>,
    tol: f64,
) -> Result<TrainCheck> {
    let c = *layer.config();
    let (cin, cout) = (c.input_width, c.output_width);
    ensure!(
        cin > 0 && x.len().is_multiple_of(cin),
        "input is not rows of {cin}"
    );
    let batch = x.len() / cin;
    ensure!(
        target.len() == batch * cout,
        "target is not {batch} rows of {cout}"
    );
    let m = c.nodes_per_tree();
    let near_tie: Vec<bool> = layer.with_view(|w| {
        x.par_chunks(cin)
            .map(|xb| {
                route(&w, xb).iter().enumerate().any(|(i, &n)| {
                    let row = (i / (c.depth + 1)) * m + n as usize;
                    node_logit(&w, row, xb).abs() < crate::check::TIE_MARGIN
                })
            })
            .collect()
    })?;
    let excused = near_tie.iter().filter(|&&t| t).count();
    let weights: Vec<f32> = near_tie
        .iter()
        .map(|&t| if t { 0.0 } else { 1.0 })
        .collect();
    let dev = &Device::Cpu;
    let weights = Tensor::from_vec(weights, (batch, 1), dev)?;
    let target_t = Tensor::from_slice(target, (batch, cout), dev)?;
    let run = |side: TrainSide<'_>, name: &str| -> Result<Vec<Vec<f32>>> {
        let xv = Var::from_slice(x, (batch, cin), dev)?;
        let y = side(layer, xv.as_tensor())?;
        ensure!(
            y.dims() == [batch, cout],
            "side {name}: output shape {:?}",
            y.dims()
        );
        let loss = (y.sub(&target_t)?.broadcast_mul(&weights)?)
            .sqr()?
            .mean_all()?;
        let grads = loss.backward()?;
        let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
        for (what, t) in [
            ("dL/dx", xv.as_tensor()),
            ("dL/dw_in", layer.w_in()),
            ("dL/db_in", layer.b_in()),
            ("dL/dw_out", layer.w_out_t()),
        ] {
            let g = grads
                .get(t)
                .with_context(|| format!("side {name} gives no {what}"))?;
            out.push(g.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    };
    let widths = [cout, cin, cin, 1, cout];
    let mut check = TrainCheck {
        rows: batch,
        excused,
        max_err: [0.0; 5],
        failure: None,
    };
    let (got, want) = match (run(a, "a"), run(b, "b")) {
        (Ok(g), Ok(w)) => (g, w),
        (Err(e), _) | (_, Err(e)) => {
            check.failure = Some(format!("{e:#}"));
            return Ok(check);
        }
    };
    for (k, name) in COMPARED.iter().enumerate() {
        // The output is compared on the rows that carry weight; gradients everywhere.
        let skip: &[bool] = if k == 0 { &near_tie } else { &[] };
        let err = rows_error(&got[k], &want[k], widths[k], skip);
        check.max_err[k] = err;
        if err > tol && check.failure.is_none() {
            check.failure = Some(format!(
                "{name} differs by {err:.3e} (relative to its row), over the {tol:e} allowed"
            ));
        }
    }
    if check.failure.is_none() && excused > batch / 50 {
        check.failure = Some(format!(
            "{excused} of {batch} rows pass near a routing tie: more than 2% is no longer rounding"
        ));
    }
    Ok(check)
}

/// Largest over rows of max |got − want| / max(row's max |want|, 1e-3 · tensor's max |want|);
/// NaN, infinities and a length mismatch count as infinitely wrong.
fn rows_error(got: &[f32], want: &[f32], width: usize, skip: &[bool]) -> f64 {
    if got.len() != want.len() || width == 0 {
        return f64::INFINITY;
    }
    let max_abs = |v: &[f32]| v.iter().fold(0f64, |m, x| m.max((*x as f64).abs()));
    let floor = (1e-3 * max_abs(want)).max(f64::MIN_POSITIVE);
    let mut worst = 0f64;
    for (r, (g, w)) in got.chunks(width).zip(want.chunks(width)).enumerate() {
        if skip.get(r).copied().unwrap_or(false) {
            continue;
        }
        let scale = max_abs(w).max(floor);
        for (a, b) in g.iter().zip(w) {
            let d = (*a as f64 - *b as f64).abs();
            if !d.is_finite() {
                return f64::INFINITY;
            }
            worst = worst.max(d / scale);
        }
    }
    worst
}
