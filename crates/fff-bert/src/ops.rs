//! The encoder's dense parts on plain row-major `f32` buffers: projections on weights packed
//! once at load (`fastfeedforward::kernels::packed`), per-head attention on faer's matmul,
//! LayerNorm, and elementwise activations, all multithreaded with rayon.
//! The FFF blocks run on `fastfeedforward`'s kernel beside them.

use crate::config::Nonlin;
use crate::error::Result;
use candle_core::Tensor;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use fastfeedforward::internal::math::exp as fast_exp;
use fastfeedforward::internal::simd::vectorized;
use fastfeedforward::kernels::packed::{Epilogue, PackedMatrix, PANEL};
use rayon::prelude::*;
use std::ops::Range;

/// Rows per rayon task for elementwise and per-row work.
const ROWS_PER_TASK: usize = 16;

/// A linear layer `y = x·Wᵀ + b` with `W` `[out, in]` row-major, as PyTorch stores it.
#[derive(Clone, Debug)]
pub struct Dense {
    /// The weights, packed once into panels of output columns.
    packed: PackedMatrix,
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
        let bias = match bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Dense::new(
            weight.flatten_all()?.to_vec1::<f32>()?,
            bias,
            out,
            inp,
        ))
    }

    /// From a `[out, in]` row-major weight and an optional `[out]` bias.
    pub fn new(weight: Vec<f32>, bias: Option<Vec<f32>>, out: usize, inp: usize) -> Dense {
        assert_eq!(weight.len(), out * inp, "weight is [out, in]");
        assert!(
            bias.as_ref().is_none_or(|b| b.len() == out),
            "bias is [out]"
        );
        Dense {
            packed: PackedMatrix::pack(&weight, out, inp),
            bias,
            out,
            inp,
        }
    }

    /// `y[n, out] = x[n, in]·Wᵀ + b`.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.forward_act(x, n, y, Nonlin::Identity);
    }

    /// `y[n, out] = act(x[n, in]·Wᵀ + b)`, on the packed weights: the output columns are
    /// split into one block of whole panels per thread, each thread reading only its share of
    /// the weights, with the bias and the activation applied to each tile as it is stored. At
    /// 16–128 rows this takes about half the time of faer's SGEMM, which repacks every weight
    /// panel on every call, and at 2,048 rows about the same (`examples/gemm_shapes.rs`).
    pub fn forward_act(&self, x: &[f32], n: usize, y: &mut [f32], act: Nonlin) {
        debug_assert_eq!(x.len(), n * self.inp);
        debug_assert_eq!(y.len(), n * self.out);
        if n == 0 {
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        let chunk = self.out.div_ceil(threads).next_multiple_of(PANEL);
        let epilogue = Epilogue {
            bias: self.bias.as_deref(),
            act: act.as_activation(),
        };
        let out = SharedRows(y.as_mut_ptr());
        let blocks = self.out.div_ceil(chunk);
        (0..blocks).into_par_iter().for_each(|b| {
            let cols = b * chunk..((b + 1) * chunk).min(self.out);
            let out = &out;
            // SAFETY: `y` is `[n, out]`; this task writes only columns `cols` of each row, and
            // the slice from the block's first column to the last row's end lies within `y`.
            let y = unsafe {
                std::slice::from_raw_parts_mut(out.0.add(cols.start), n * self.out - cols.start)
            };
            self.packed.matmul_cols(x, n, cols, y, self.out, epilogue);
        });
    }

    /// Allocating form of [`Dense::forward`].
    pub fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.apply_act(x, n, Nonlin::Identity)
    }

    /// Allocating form of [`Dense::forward_act`].
    pub fn apply_act(&self, x: &[f32], n: usize, act: Nonlin) -> Vec<f32> {
        let mut y = vec![0f32; n * self.out];
        self.forward_act(x, n, &mut y, act);
        y
    }
}

/// The output of a projection, shared by tasks that each write their own columns of it.
struct SharedRows(*mut f32);
// SAFETY: the tasks sharing it write disjoint elements.
unsafe impl Sync for SharedRows {}

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
        let mut y = vec![0f32; x.len()];
        self.forward(x, &mut y);
        y
    }

    /// `y = LayerNorm(x)`, rows of `x` and `y` side by side.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        let h = self.weight.len();
        debug_assert_eq!(x.len(), y.len());
        y.par_chunks_mut(h * ROWS_PER_TASK)
            .zip(x.par_chunks(h * ROWS_PER_TASK))
            .for_each(|(ys, xs)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (yr, xr) in ys.chunks_mut(h).zip(xs.chunks(h)) {
                            self.normalize_row(xr, yr);
                        }
                    },
                )
            });
    }

    /// The pre-LN residual step: `h += a`, then `y = LayerNorm(h)`, in one pass over the rows.
    pub fn add_forward(&self, h: &mut [f32], a: &[f32], y: &mut [f32]) {
        let w = self.weight.len();
        debug_assert!(h.len() == a.len() && h.len() == y.len());
        y.par_chunks_mut(w * ROWS_PER_TASK)
            .zip(h.par_chunks_mut(w * ROWS_PER_TASK))
            .zip(a.par_chunks(w * ROWS_PER_TASK))
            .for_each(|((ys, hs), as_)| {
                vectorized(
                    #[inline(always)]
                    || {
                        let rows = ys.chunks_mut(w).zip(hs.chunks_mut(w)).zip(as_.chunks(w));
                        for ((yr, hr), ar) in rows {
                            hr.iter_mut().zip(ar).for_each(|(h, a)| *h += a);
                            self.normalize_row(hr, yr);
                        }
                    },
                )
            });
    }

    /// Two passes in f32 (mean, then the mean squared deviation), each summed in 16 lanes:
    /// the lanes let the loops vectorize and keep each partial sum short, so the result stays
    /// within a few ulp of an f64 computation for rows of BERT's widths.
    #[inline(always)]
    fn normalize_row(&self, x: &[f32], y: &mut [f32]) {
        let h = x.len() as f32;
        let mean = lane_sum(x, |v| v) / h;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / h;
        let inv = 1.0 / (var + self.eps).sqrt();
        for (((o, &v), &w), &b) in y.iter_mut().zip(x).zip(&self.weight).zip(&self.bias) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

/// `Σ f(x[i])` accumulated in 16 independent lanes (vectorizable; shorter rounding chains).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// Applies `nonlin` elementwise, in parallel (GELU through the branch-free erf).
pub fn activate(x: &mut [f32], nonlin: Nonlin) {
    if nonlin == Nonlin::Identity {
        return;
    }
    let act = nonlin.as_activation();
    x.par_chunks_mut(4096).for_each(|c| {
        vectorized(
            #[inline(always)]
            || c.iter_mut().for_each(|v| *v = act.apply_fast(*v)),
        );
    });
}

/// `a += b`, in parallel.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(4096)
        .zip(b.par_chunks(4096))
        .for_each(|(a, b)| {
            vectorized(
                #[inline(always)]
                || a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            )
        });
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
/// padded keys (`mask[b·seq + j] == 0`), and are softmaxed over keys. Writes the context into
/// `out` (`[batch·seq, heads·d]`, heads in order).
pub fn attention_into(
    qkv: &[f32],
    mask: &[u8],
    shape: AttentionShape,
    norm_factor: f32,
    out: &mut [f32],
) {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim,
    } = shape;
    assert_eq!(mask.len(), batch * seq, "mask is [batch, seq]");
    let segments: Vec<Range<usize>> = (0..batch).map(|b| b * seq..(b + 1) * seq).collect();
    let attention = SegmentAttention {
        heads,
        head_dim,
        norm_factor,
    };
    attention.forward(qkv, &segments, Some(mask), out);
}

/// Self-attention over sequences laid end to end in one row-major buffer (a packed batch, or a
/// padded one whose segments are all `seq` rows long): each row attends to the rows of its own
/// segment only.
#[derive(Clone, Copy, Debug)]
pub struct SegmentAttention {
    /// Heads.
    pub heads: usize,
    /// Width per head.
    pub head_dim: usize,
    /// Score scale, 1/√head_dim in crammedBERT.
    pub norm_factor: f32,
}

impl SegmentAttention {
    /// `qkv` is `[rows, heads·3·d]` (each head's `[q | k | v]` side by side) and `out` is
    /// `[rows, heads·d]`; `segments` tile `0..rows` in order. Where `mask` is given (one byte per
    /// row), keys with a 0 get −10000 before the softmax, as in the original; without it every
    /// key of the segment is real. Each (segment, head) pair is one task; its q, k and v are
    /// strided views into `qkv`, so nothing is gathered.
    pub fn forward(
        &self,
        qkv: &[f32],
        segments: &[Range<usize>],
        mask: Option<&[u8]>,
        out: &mut [f32],
    ) {
        let d = self.head_dim;
        let hidden = self.heads * d;
        let width = 3 * hidden;
        let rows = segments.last().map_or(0, |s| s.end);
        assert!(
            segments.first().is_none_or(|s| s.start == 0)
                && segments.windows(2).all(|w| w[0].end == w[1].start),
            "segments tile the rows in order"
        );
        assert_eq!(qkv.len(), rows * width, "qkv is [rows, 3·hidden]");
        assert_eq!(out.len(), rows * hidden, "out is [rows, hidden]");
        if let Some(mask) = mask {
            assert_eq!(mask.len(), rows, "mask is one byte per row");
        }
        if rows == 0 || d == 0 {
            return;
        }
        // Each segment's output rows, split off in order so that segments run in parallel.
        let mut parts = Vec::with_capacity(segments.len());
        let mut rest = out;
        for s in segments {
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(s.len() * hidden);
            parts.push((s.clone(), part));
            rest = tail;
        }
        let longest = segments.iter().map(|s| s.len()).max().unwrap_or(0);
        let norm_factor = self.norm_factor;
        // Segments, then heads within a segment: each head's context is a column block of the
        // segment's output rows, written in place by the second matmul.
        parts.into_par_iter().for_each(|(segment, rows)| {
            let seq = segment.len();
            if seq == 0 {
                return;
            }
            let key_mask = mask.map(|m| &m[segment.clone()]);
            MatMut::from_row_major_slice_mut(rows, seq, hidden)
                .par_col_chunks_mut(d)
                .enumerate()
                // One score buffer per rayon split, not per (segment, head).
                .for_each_init(
                    || vec![0f32; longest * longest],
                    |scores, (h, context)| {
                        let scores = &mut scores[..seq * seq];
                        let base = &qkv[segment.start * width + h * 3 * d..];
                        let part = |offset: usize| {
                            MatRef::from_row_major_slice_with_stride(&base[offset..], seq, d, width)
                        };
                        matmul(
                            MatMut::from_row_major_slice_mut(scores, seq, seq),
                            Accum::Replace,
                            part(0),
                            part(d).transpose(),
                            norm_factor,
                            Par::Seq,
                        );
                        vectorized(
                            #[inline(always)]
                            || masked_softmax_rows(scores, seq, key_mask),
                        );
                        matmul(
                            context,
                            Accum::Replace,
                            MatRef::from_row_major_slice(scores, seq, seq),
                            part(2 * d),
                            1.0f32,
                            Par::Seq,
                        );
                    },
                );
        });
    }
}

/// [`masked_softmax`] on each row of `scores` (`[rows, seq]`). `#[inline(always)]`, like every
/// body passed to [`vectorized`], so that it is compiled inside the wide-SIMD function rather
/// than called out of line at the baseline width.
#[inline(always)]
fn masked_softmax_rows(scores: &mut [f32], seq: usize, key_mask: Option<&[u8]>) {
    for row in scores.chunks_mut(seq) {
        masked_softmax(row, key_mask);
    }
}

/// Softmax of one score row in place, after adding −10000 where `key_mask` is 0 (as the
/// original does, rather than excluding those keys).
#[inline(always)]
fn masked_softmax(row: &mut [f32], key_mask: Option<&[u8]>) {
    if let Some(key_mask) = key_mask {
        for (s, &m) in row.iter_mut().zip(key_mask) {
            *s += if m == 0 { -10000.0 } else { 0.0 };
        }
    }
    let max = lane_max(row);
    row.iter_mut().for_each(|s| *s = fast_exp(*s - max));
    let inv = 1.0 / lane_sum(row, |v| v);
    row.iter_mut().for_each(|s| *s *= inv);
}

/// Largest element, in 16 lanes so that the loop vectorizes.
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    acc.iter()
        .chain(rest)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform floats in [-scale, scale) from a fixed seed.
    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    #[test]
    fn dense_matches_an_f64_reference_at_every_split() {
        // Widths below, at and across the panels; rows below, at and past the register tiles
        // and the row blocks; 1 to 3 threads.
        for (seed, &(n, inp, out)) in [
            (1, 1, 1),
            (3, 17, 5),
            (16, 384, 1152),
            (7, 40, 130),
            (2, 9, 64),
            (130, 33, 70),
            (200, 8, 129),
        ]
        .iter()
        .enumerate()
        {
            let x = random(n * inp, seed as u64, 1.0);
            let w = random(out * inp, seed as u64 + 100, 1.0);
            let b = random(out, seed as u64 + 200, 1.0);
            let dense = Dense::new(w.clone(), Some(b.clone()), out, inp);
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for act in [Nonlin::Identity, Nonlin::Gelu, Nonlin::Relu] {
                    let mut y = vec![f32::NAN; n * out];
                    pool.install(|| dense.forward_act(&x, n, &mut y, act));
                    for r in 0..n {
                        for c in 0..out {
                            let z: f64 = (0..inp)
                                .map(|i| x[r * inp + i] as f64 * w[c * inp + i] as f64)
                                .sum::<f64>()
                                + b[c] as f64;
                            let want = act.as_activation().apply(z as f32) as f64;
                            let got = y[r * out + c] as f64;
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{n}x{inp}->{out}, {threads} threads, {act:?}: [{r}, {c}] {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn layer_norm_matches_an_f64_reference() {
        for (rows, width, seed) in [(1, 1, 1), (3, 17, 2), (40, 768, 3), (5, 100, 4)] {
            let x: Vec<f32> = random(rows * width, seed, 3.0)
                .iter()
                .enumerate()
                .map(|(i, v)| v + (i % 7) as f32 * 10.0)
                .collect();
            let w = random(width, seed + 10, 1.0);
            let b = random(width, seed + 20, 1.0);
            let eps = 1e-12;
            let ln = LayerNorm {
                weight: w.clone(),
                bias: b.clone(),
                eps: eps as f32,
            };
            let y = ln.apply(&x);
            // The residual form on a split: (x - 1) + 1.
            let mut h: Vec<f32> = x.iter().map(|v| v - 1.0).collect();
            let mut y2 = vec![0f32; x.len()];
            ln.add_forward(&mut h, &vec![1.0; x.len()], &mut y2);
            for r in 0..rows {
                let xr = &x[r * width..(r + 1) * width];
                let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                for i in 0..width {
                    let want =
                        (xr[i] as f64 - mean) / (var + eps).sqrt() * w[i] as f64 + b[i] as f64;
                    let got = y[r * width + i] as f64;
                    assert!(
                        (got - want).abs() < 2e-5,
                        "row {r} col {i}: {got} vs {want}"
                    );
                    assert!((y2[r * width + i] as f64 - want).abs() < 5e-5);
                    assert!((h[r * width + i] - xr[i]).abs() < 1e-5);
                }
            }
        }
    }

    /// Attention as the original writes it: per head, scores = q·kᵀ·norm_factor − 10000 on
    /// masked keys, softmax with libm exp in f64, context = p·v.
    fn attention_reference(
        qkv: &[f32],
        mask: &[u8],
        shape: AttentionShape,
        norm_factor: f32,
    ) -> Vec<f32> {
        let AttentionShape {
            batch,
            seq,
            heads,
            head_dim: d,
        } = shape;
        let (hidden, width) = (heads * d, 3 * heads * d);
        let mut out = vec![0f32; batch * seq * hidden];
        for b in 0..batch {
            for h in 0..heads {
                let at = |t: usize, part: usize, i: usize| {
                    qkv[(b * seq + t) * width + h * 3 * d + part * d + i] as f64
                };
                for i in 0..seq {
                    let scores: Vec<f64> = (0..seq)
                        .map(|j| {
                            let dot: f64 = (0..d).map(|e| at(i, 0, e) * at(j, 1, e)).sum();
                            dot * norm_factor as f64
                                + if mask[b * seq + j] == 0 {
                                    -10000.0
                                } else {
                                    0.0
                                }
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = p.iter().sum();
                    for e in 0..d {
                        let c: f64 = (0..seq).map(|j| p[j] / sum * at(j, 2, e)).sum();
                        out[(b * seq + i) * hidden + h * d + e] = c as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_reference() {
        let shapes = [
            (0, 5, 2, 4),
            (1, 1, 1, 1),
            (1, 7, 3, 5),
            (2, 33, 2, 16),
            (3, 20, 4, 64),
        ];
        for (seed, &(batch, seq, heads, d)) in shapes.iter().enumerate() {
            let shape = AttentionShape {
                batch,
                seq,
                heads,
                head_dim: d,
            };
            let qkv = random(batch * seq * 3 * heads * d, seed as u64, 2.0);
            // Sequence b has its last b keys padded (never all of them).
            let mask: Vec<u8> = (0..batch * seq)
                .map(|i| u8::from(i % seq < seq - (i / seq).min(seq - 1)))
                .collect();
            let norm = 1.0 / (d as f32).sqrt();
            let mut got = vec![f32::NAN; batch * seq * heads * d];
            attention_into(&qkv, &mask, shape, norm, &mut got);
            let want = attention_reference(&qkv, &mask, shape, norm);
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{shape:?} element {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn packed_attention_matches_each_sequence_alone() {
        let (heads, d) = (3, 7);
        let width = 3 * heads * d;
        let lengths = [5usize, 1, 0, 12, 3];
        let rows: usize = lengths.iter().sum();
        let qkv = random(rows * width, 11, 2.0);
        let mut segments = Vec::new();
        let mut start = 0;
        for &len in &lengths {
            segments.push(start..start + len);
            start += len;
        }
        let norm = 1.0 / (d as f32).sqrt();
        let attention = SegmentAttention {
            heads,
            head_dim: d,
            norm_factor: norm,
        };
        let mut got = vec![f32::NAN; rows * heads * d];
        attention.forward(&qkv, &segments, None, &mut got);
        for s in segments.iter().filter(|s| !s.is_empty()) {
            let shape = AttentionShape {
                batch: 1,
                seq: s.len(),
                heads,
                head_dim: d,
            };
            let want = attention_reference(
                &qkv[s.start * width..s.end * width],
                &vec![1; s.len()],
                shape,
                norm,
            );
            let got = &got[s.start * heads * d..s.end * heads * d];
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-5,
                    "segment {s:?} element {i}: {g} vs {w}"
                );
            }
        }
    }
}
