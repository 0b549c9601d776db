//! The encoder's dense parts on plain row-major `f32` buffers: projections on faer's matmul
//! (the fastest SGEMM we have here: it uses AVX-512 where candle's gemm stops at AVX2), fused
//! per-head attention, LayerNorm, and elementwise activations, all multithreaded with rayon.
//! The FFF blocks run on `fastfeedforward`'s kernel beside them.

use crate::config::Nonlin;
use crate::error::Result;
use candle_core::Tensor;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Rows per rayon task for elementwise and per-row work.
const ROWS_PER_TASK: usize = 16;

/// A linear layer `y = x·Wᵀ + b` with `W` `[out, in]` row-major, as PyTorch stores it.
#[derive(Clone, Debug)]
pub struct Dense {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Output width.
    pub out: usize,
    /// Input width.
    pub inp: usize,
}

impl Dense {
    /// From a `[out, in]` weight tensor and an optional `[out]` bias.
    pub fn from_tensors(weight: &Tensor, bias: Option<&Tensor>) -> Result<Dense> {
        let (out, inp) = weight.dims2()?;
        Ok(Dense {
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            bias: match bias {
                Some(b) => Some(b.to_vec1::<f32>()?),
                None => None,
            },
            out,
            inp,
        })
    }

    /// `y[n, out] = x[n, in]·Wᵀ + b`.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        debug_assert_eq!(x.len(), n * self.inp);
        debug_assert_eq!(y.len(), n * self.out);
        if n == 0 {
            return;
        }
        let xm = MatRef::from_row_major_slice(x, n, self.inp);
        let wt = MatRef::from_row_major_slice(&self.weight, self.out, self.inp).transpose();
        let ym = MatMut::from_row_major_slice_mut(y, n, self.out);
        matmul(ym, Accum::Replace, xm, wt, 1.0f32, Par::rayon(0));
        if let Some(b) = &self.bias {
            y.par_chunks_mut(self.out * ROWS_PER_TASK).for_each(|rows| {
                for row in rows.chunks_mut(self.out) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            });
        }
    }

    /// Allocating form of [`Dense::forward`].
    pub fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * self.out];
        self.forward(x, n, &mut y);
        y
    }
}

/// LayerNorm over rows of width `weight.len()`, as PyTorch computes it (biased variance, `eps`
/// inside the square root).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// From `[hidden]` weight and bias tensors.
    pub fn from_tensors(weight: &Tensor, bias: &Tensor, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: weight.to_vec1::<f32>()?,
            bias: bias.to_vec1::<f32>()?,
            eps: eps as f32,
        })
    }

    /// Normalized copy of `x`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let h = self.weight.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * ROWS_PER_TASK)
            .zip(x.par_chunks(h * ROWS_PER_TASK))
            .for_each(|(ys, xs)| {
                for (yr, xr) in ys.chunks_mut(h).zip(xs.chunks(h)) {
                    let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                    let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                    let inv = 1.0 / (var + self.eps as f64).sqrt();
                    for (((o, &v), &w), &b) in
                        yr.iter_mut().zip(xr).zip(&self.weight).zip(&self.bias)
                    {
                        *o = ((v as f64 - mean) * inv) as f32 * w + b;
                    }
                }
            });
        y
    }
}

/// erf by Eigen's rational approximation (the one TensorFlow and XNNPACK use): a few ulp in
/// f32, no branches and no calls, so the loop over a row vectorizes. A scalar libm `erff` per
/// element made GELU cost as much as the dense FF's two GEMMs.
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for a in [
        2.770_681_4e-08f32,
        -2.101_024e-06,
        -5.692_506_4e-05,
        -7.349_906_3e-04,
        -2.9546e-3,
        -1.609_603_3e-02,
    ] {
        p = p * x2 + a;
    }
    let p = p * x;
    let mut q = -1.456_607_2e-05f32;
    for b in [
        -2.133_740_6e-04f32,
        -1.682_827e-03,
        -7.373_329e-03,
        -1.426_474e-02,
    ] {
        q = q * x2 + b;
    }
    p / q
}

/// Exact (erf) GELU through [`fast_erf`].
#[inline(always)]
pub fn fast_gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Applies `nonlin` elementwise, in parallel.
pub fn activate(x: &mut [f32], nonlin: Nonlin) {
    match nonlin {
        Nonlin::Identity => {}
        Nonlin::Gelu => x
            .par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(|v| *v = fast_gelu(*v))),
        _ => {
            let act = nonlin.as_activation();
            x.par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gelu_matches_the_erf_gelu() {
        let exact = fastfeedforward::Activation::Gelu;
        let mut worst = 0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let (a, b) = (fast_gelu(x), exact.apply(x));
            worst = worst.max((a - b).abs() / (1.0 + b.abs()));
        }
        assert!(worst < 5e-6, "max relative error {worst}");
        assert_eq!(fast_gelu(0.0), 0.0);
        assert!(fast_gelu(-20.0).abs() < 1e-5 && (fast_gelu(20.0) - 20.0).abs() < 1e-4);
    }
}

/// `a += b`, in parallel.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(4096)
        .zip(b.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Padded sequence length.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Width per head.
    pub head_dim: usize,
}

/// Self-attention on crammedBERT's fused projection: `qkv` is `[batch·seq, heads·3·d]` with
/// each head's `[q | k | v]` side by side. Scores are scaled by `norm_factor`, get −10000 on
/// padded keys (`mask[b·seq + j] == 0`), and are softmaxed over keys. Returns the context
/// `[batch·seq, heads·d]`, heads in order. Each (sequence, head) pair is one task.
pub fn attention(qkv: &[f32], mask: &[u8], shape: AttentionShape, norm_factor: f32) -> Vec<f32> {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim: d,
    } = shape;
    let width = heads * 3 * d;
    let per_head: Vec<Vec<f32>> = (0..batch * heads)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / heads, task % heads);
            // Gather this head's q, k, v into contiguous [seq, d] blocks.
            let mut q = vec![0f32; seq * d];
            let mut k = vec![0f32; seq * d];
            let mut v = vec![0f32; seq * d];
            for t in 0..seq {
                let row = &qkv[(b * seq + t) * width + h * 3 * d..][..3 * d];
                q[t * d..(t + 1) * d].copy_from_slice(&row[..d]);
                k[t * d..(t + 1) * d].copy_from_slice(&row[d..2 * d]);
                v[t * d..(t + 1) * d].copy_from_slice(&row[2 * d..]);
            }
            let mut scores = vec![0f32; seq * seq];
            matmul(
                MatMut::from_row_major_slice_mut(&mut scores, seq, seq),
                Accum::Replace,
                MatRef::from_row_major_slice(&q, seq, d),
                MatRef::from_row_major_slice(&k, seq, d).transpose(),
                norm_factor,
                Par::Seq,
            );
            let key_mask = &mask[b * seq..(b + 1) * seq];
            for row in scores.chunks_mut(seq) {
                for (s, &m) in row.iter_mut().zip(key_mask) {
                    if m == 0 {
                        *s += -10000.0;
                    }
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
            let mut context = vec![0f32; seq * d];
            matmul(
                MatMut::from_row_major_slice_mut(&mut context, seq, d),
                Accum::Replace,
                MatRef::from_row_major_slice(&scores, seq, seq),
                MatRef::from_row_major_slice(&v, seq, d),
                1.0f32,
                Par::Seq,
            );
            context
        })
        .collect();
    let hidden = heads * d;
    let mut out = vec![0f32; batch * seq * hidden];
    for (task, context) in per_head.iter().enumerate() {
        let (b, h) = (task / heads, task % heads);
        for t in 0..seq {
            out[(b * seq + t) * hidden + h * d..][..d]
                .copy_from_slice(&context[t * d..(t + 1) * d]);
        }
    }
    out
}
