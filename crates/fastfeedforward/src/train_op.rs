//! The training op: O(K·(D+1)) work per input, forward and backward.
//!
//! The dense masked reference computes all K·M logits per input and multiplies the ones off the
//! path by zero. Here the forward pass evaluates only the visited nodes, and the backward pass
//! returns exactly the reference's gradients: only visited rows of `w_in`, `b_in` and `w_out`
//! receive gradient, and dL/dx sums over the visited rows. No per-input tensor is K·M wide.
//!
//! The layer is split into two candle custom ops with the activation between them, so candle's
//! autodiff handles the activation's derivative:
//! 1. [`NodeLogits`]: `(x [B,in], w_in [K·M,in], b_in [K·M]) -> z [B,K,D+1]`, descending the trees;
//! 2. activation `a = act(z)` (ordinary candle ops);
//! 3. [`NodeOutputs`]: `(a [B,K,D+1], w_out_t [K·M,out], z) -> y [B,out]`.
//!
//! The path of an input is a function of its `z` (go right iff z > 0), so every op that needs
//! the path takes `z` and re-derives it: nothing else has to be stored between the passes.

use crate::config::FffConfig;
use crate::error::{check_rows, FffError, Result};
use crate::kernels::simd::{axpy_f32, dot_f32};
use crate::tree::{forest_visits, recorded_visits};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Differentiable FFF forward on the O(depth) path: `x [B,in] -> y [B,out]`.
pub fn forward(
    config: &FffConfig,
    x: &Tensor,
    w_in: &Tensor,
    b_in: &Tensor,
    w_out_t: &Tensor,
) -> candle_core::Result<Tensor> {
    let z = x
        .contiguous()?
        .apply_op3(w_in, b_in, NodeLogits { config: *config })?;
    let a = config.activation.apply_tensor(&z)?;
    a.apply_op3(w_out_t, &z, NodeOutputs { config: *config })
}

/// Pre-activations of the visited nodes, `[B, K, D+1]`; computes the path while descending.
#[derive(Debug, Clone, Copy)]
pub struct NodeLogits {
    /// The layer's shape.
    pub config: FffConfig,
}

/// Output of the visited nodes, `y[b] = Σ a[b,t,l] · w_out_t[row(b,t,l)]`.
#[derive(Debug, Clone, Copy)]
pub struct NodeOutputs {
    /// The layer's shape.
    pub config: FffConfig,
}

/// The sparse primitives the backward passes are made of (each a forward-only custom op).
#[derive(Debug, Clone, Copy)]
enum PathOp {
    /// `(coef [B,U], w [K·M,C], z) -> [B,C]`: `out[b] = Σ_i coef[b,i] · w[row(b,i)]`.
    GatherSum,
    /// `(v [B,C], w [K·M,C], z) -> [B,U]`: `out[b,i] = v[b] · w[row(b,i)]`.
    GatherDot,
    /// `(coef [B,U], rows [B,C], z) -> [K·M,C]`: `out[row(b,i)] += coef[b,i] · rows[b]`.
    ScatterOuter,
}

#[derive(Debug, Clone, Copy)]
struct PathKernel {
    op: PathOp,
    config: FffConfig,
}

/// The contiguous f32 contents of a custom op's CPU operand (`name` for errors).
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        other => bail!("fff: `{name}` must be f32, found {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fff: `{name}` must be contiguous"),
    }
}

fn check_dims(name: &str, l: &Layout, want: &[usize]) -> candle_core::Result<()> {
    if l.dims() != want {
        bail!(
            "fff: `{name}` has shape {:?}, expected {:?}",
            l.dims(),
            want
        )
    }
    Ok(())
}

/// Batch rows per rayon task: enough work to amortise scheduling.
const MIN_ROWS_PER_TASK: usize = 4;

impl CustomOp3 for NodeLogits {
    fn name(&self) -> &'static str {
        "fff-node-logits"
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
        let c = &self.config;
        let (rows, cin) = (c.total_nodes(), c.input_width);
        if l1.dims().len() != 2 {
            bail!(
                "fff: input has shape {:?}, expected [batch, {cin}]",
                l1.dims()
            )
        }
        let batch = l1.dims()[0];
        check_dims("input", l1, &[batch, cin])?;
        check_dims("linear_in.weight", l2, &[rows, cin])?;
        check_dims("linear_in.bias", l3, &[rows])?;
        let x = f32_slice(s1, l1, "input")?;
        let w_in = f32_slice(s2, l2, "linear_in.weight")?;
        let b_in = f32_slice(s3, l3, "linear_in.bias")?;
        let mut z = vec![0f32; batch * c.used_nodes()];
        node_logits(c, x, w_in, b_in, &mut z).map_err(candle_core::Error::wrap)?;
        Ok((
            CpuStorage::F32(z),
            Shape::from((batch, c.trees, c.depth + 1)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_in: &Tensor,
        _b_in: &Tensor,
        z: &Tensor,
        grad_z: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.config;
        let grad_z = grad_z.contiguous()?;
        let kernel = |op| PathKernel { op, config: c };
        // Inputs that are plain data (no variable upstream) need no gradient: skip the work.
        let grad_x = if x.track_op() {
            Some(grad_z.apply_op3_no_bwd(w_in, z, &kernel(PathOp::GatherSum))?)
        } else {
            None
        };
        let grad_w = grad_z.apply_op3_no_bwd(x, z, &kernel(PathOp::ScatterOuter))?;
        let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
        let grad_b = grad_z
            .apply_op3_no_bwd(&ones, z, &kernel(PathOp::ScatterOuter))?
            .reshape(c.total_nodes())?;
        Ok((grad_x, Some(grad_w), Some(grad_b)))
    }
}

impl CustomOp3 for NodeOutputs {
    fn name(&self) -> &'static str {
        "fff-node-outputs"
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
        PathKernel {
            op: PathOp::GatherSum,
            config: self.config,
        }
        .cpu_fwd(s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        a: &Tensor,
        w_out_t: &Tensor,
        z: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.config;
        let grad_y = grad_y.contiguous()?;
        let kernel = |op| PathKernel { op, config: c };
        let grad_a = grad_y.apply_op3_no_bwd(w_out_t, z, &kernel(PathOp::GatherDot))?;
        let grad_w = a
            .contiguous()?
            .apply_op3_no_bwd(&grad_y, z, &kernel(PathOp::ScatterOuter))?;
        Ok((Some(grad_a), Some(grad_w), None))
    }
}

impl CustomOp3 for PathKernel {
    fn name(&self) -> &'static str {
        match self.op {
            PathOp::GatherSum => "fff-gather-sum",
            PathOp::GatherDot => "fff-gather-dot",
            PathOp::ScatterOuter => "fff-scatter-outer",
        }
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
        let c = &self.config;
        let (rows, used) = (c.total_nodes(), c.used_nodes());
        let batch = l3.dims().first().copied().unwrap_or(0);
        check_dims("node logits", l3, &[batch, c.trees, c.depth + 1])?;
        let z = f32_slice(s3, l3, "node logits")?;
        let a1 = f32_slice(s1, l1, "argument 1")?;
        let a2 = f32_slice(s2, l2, "argument 2")?;
        let width = *l2.dims().last().unwrap_or(&0);
        let wrap = candle_core::Error::wrap;
        match self.op {
            PathOp::GatherSum => {
                check_dims("coefficients", l1, &[batch, c.trees, c.depth + 1])?;
                check_dims("weights", l2, &[rows, width])?;
                let mut out = vec![0f32; batch * width];
                gather_sum(c, a1, a2, z, &mut out).map_err(wrap)?;
                Ok((CpuStorage::F32(out), Shape::from((batch, width))))
            }
            PathOp::GatherDot => {
                check_dims("vectors", l1, &[batch, width])?;
                check_dims("weights", l2, &[rows, width])?;
                let mut out = vec![0f32; batch * used];
                gather_dot(c, a1, a2, z, &mut out).map_err(wrap)?;
                Ok((
                    CpuStorage::F32(out),
                    Shape::from((batch, c.trees, c.depth + 1)),
                ))
            }
            PathOp::ScatterOuter => {
                check_dims("coefficients", l1, &[batch, c.trees, c.depth + 1])?;
                check_dims("rows", l2, &[batch, width])?;
                let mut out = vec![0f32; rows * width];
                scatter_outer(c, a1, a2, z, &mut out).map_err(wrap)?;
                Ok((CpuStorage::F32(out), Shape::from((rows, width))))
            }
        }
    }
}

// The slice-level kernels the ops above are made of, for callers that own their buffers (the
// Python package hands over PyTorch's storage). Every buffer is row-major and contiguous; `z` is
// the `[B, K, D+1]` node logits of `node_logits`, from which each kernel re-derives the paths.
// Widths are inferred from the buffers' lengths and checked against each other.

/// Calls `f(i, row)` for each visited node of one input: `i` indexes `z_b` (`t·(D+1) + level`),
/// `row` is the global node row.
#[inline]
fn for_each_visited(config: &FffConfig, z_b: &[f32], mut f: impl FnMut(usize, usize)) {
    for v in recorded_visits(config.trees, config.depth + 1, z_b) {
        f(v.index, v.row);
    }
}

/// The batch size of logits `z` (`[B, K, D+1]`), checked to be whole.
fn logits_batch(config: &FffConfig, z: &[f32]) -> Result<usize> {
    let used = config.used_nodes();
    if !z.len().is_multiple_of(used) {
        return Err(FffError::shape(
            "node logits",
            &[z.len() / used, config.trees, config.depth + 1],
            &[z.len()],
        ));
    }
    Ok(z.len() / used)
}

/// The row width of `w` (`[K·M, C]`, named `name`).
fn node_rows_width(config: &FffConfig, name: &str, w: &[f32]) -> Result<usize> {
    let rows = config.total_nodes();
    if !w.len().is_multiple_of(rows) {
        return Err(FffError::shape(name, &[rows, w.len() / rows], &[w.len()]));
    }
    Ok(w.len() / rows)
}

/// Descends the trees: `z [B, K, D+1]` gets the logit of every visited node of `x [B, in]`.
pub fn node_logits(
    config: &FffConfig,
    x: &[f32],
    w_in: &[f32],
    b_in: &[f32],
    z: &mut [f32],
) -> Result<()> {
    let (rows, cin, used) = (
        config.total_nodes(),
        config.input_width,
        config.used_nodes(),
    );
    let batch = logits_batch(config, z)?;
    check_rows("input", x.len(), batch, cin)?;
    check_rows("linear_in.weight", w_in.len(), rows, cin)?;
    check_rows("linear_in.bias", b_in.len(), rows, 1)?;
    z.par_chunks_mut(used)
        .zip(x.par_chunks(cin.max(1)))
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(z_b, x_b)| {
            let logit = |row: usize| dot_f32(&w_in[row * cin..(row + 1) * cin], x_b) + b_in[row];
            for v in forest_visits(config.trees, config.depth + 1, logit) {
                z_b[v.index] = v.z;
            }
        });
    Ok(())
}

/// `out[b] = Σ_i coef[b,i] · w[row(b,i)]`: `coef [B,K,D+1]`, `w [K·M, C]`, `out [B, C]`
/// (overwritten).
pub fn gather_sum(
    config: &FffConfig,
    coef: &[f32],
    w: &[f32],
    z: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let used = config.used_nodes();
    let batch = logits_batch(config, z)?;
    let width = node_rows_width(config, "weights", w)?;
    check_rows("coefficients", coef.len(), batch, used)?;
    check_rows("output", out.len(), batch, width)?;
    if width > 0 {
        out.par_chunks_mut(width)
            .zip(coef.par_chunks(used).zip(z.par_chunks(used)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(out_b, (coef_b, z_b))| {
                // Zeroed here, in the parallel pass that writes it, not by a serial fill first.
                out_b.fill(0.0);
                for_each_visited(config, z_b, |i, row| {
                    axpy_f32(coef_b[i], &w[row * width..(row + 1) * width], out_b)
                })
            });
    }
    Ok(())
}

/// `out[b,i] = v[b] · w[row(b,i)]`: `v [B, C]`, `w [K·M, C]`, `out [B,K,D+1]` (overwritten).
pub fn gather_dot(
    config: &FffConfig,
    v: &[f32],
    w: &[f32],
    z: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let used = config.used_nodes();
    let batch = logits_batch(config, z)?;
    let width = node_rows_width(config, "weights", w)?;
    check_rows("vectors", v.len(), batch, width)?;
    check_rows("output", out.len(), batch, used)?;
    if width == 0 {
        out.fill(0.0); // empty rows: every dot product is zero
    } else {
        // Every entry is written: each input visits each of its K·(D+1) slots once.
        out.par_chunks_mut(used)
            .zip(v.par_chunks(width).zip(z.par_chunks(used)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(out_b, (v_b, z_b))| {
                for_each_visited(config, z_b, |i, row| {
                    out_b[i] = dot_f32(&w[row * width..(row + 1) * width], v_b)
                })
            });
    }
    Ok(())
}

/// `out[row(b,i)] = Σ coef[b,i] · rows[b]` over the visits of each row: `coef [B,K,D+1]`,
/// `rows [B, C]`, `out [K·M, C]` (overwritten; rows no input visited are zero).
pub fn scatter_outer(
    config: &FffConfig,
    coef: &[f32],
    rows_in: &[f32],
    z: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let (rows, used) = (config.total_nodes(), config.used_nodes());
    let batch = logits_batch(config, z)?;
    let width = node_rows_width(config, "output", out)?;
    check_rows("coefficients", coef.len(), batch, used)?;
    check_rows("rows", rows_in.len(), batch, width)?;
    if width == 0 {
        return Ok(());
    }
    // Bucket the visits by row (a counting sort), then give each output row to one task:
    // race-free, and each row is written once, sequentially.
    let mut start = vec![0usize; rows + 1];
    for z_b in z.chunks_exact(used) {
        for_each_visited(config, z_b, |_, row| start[row + 1] += 1);
    }
    for r in 0..rows {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut visits = vec![0usize; batch * used];
    for (b, z_b) in z.chunks_exact(used).enumerate() {
        for_each_visited(config, z_b, |i, row| {
            visits[fill[row]] = b * used + i;
            fill[row] += 1;
        });
    }
    out.par_chunks_mut(width)
        .enumerate()
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each(|(row, out_r)| {
            // Each output row is written in the same pass that zeroes it, not after a separate
            // fill of the whole [K·M, C] output (a full extra pass over memory per call).
            out_r.fill(0.0);
            for &v in &visits[start[row]..start[row + 1]] {
                let b = v / used;
                axpy_f32(coef[v], &rows_in[b * width..(b + 1) * width], out_r);
            }
        });
    Ok(())
}
