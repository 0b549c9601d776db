//! A dense projection `y[n, out] = x[n, in]·Wᵀ` on weights packed once, for the few-row inputs
//! of an encoder serving short texts (1x16, 1x128 tokens).
//!
//! At 16–128 rows a general SGEMM spends as long repacking the weight panels on every call as
//! it spends on the arithmetic, and no SGEMM the Rust ecosystem offers (faer, gemm) takes weights
//! packed in advance, as ONNX Runtime's MLAS does when a session loads. Here `W` is packed once
//! into panels of [`PANEL`] output columns, each `[in][PANEL]` contiguous, and every call streams
//! the panels as they are: for each panel and each block of rows, the accumulators of a
//! rows × columns tile stay in registers across the whole input dimension, each step loading one
//! panel row and broadcasting one input per tile row. The plain triple loop in
//! [`PackedMatrix::matmul_reference`] is the reference the tests hold it to.

use super::simd::{dispatch, prefetch_line, Simd, SimdLevel, SimdTask, HINT_L1};
use crate::Activation;
use std::ops::Range;

/// Output columns per packed panel (two AVX-512 vectors, four AVX2 ones).
pub const PANEL: usize = 32;

/// Bytes of input rows processed against every panel before the next rows (kept in L2).
const ROW_BLOCK_BYTES: usize = 128 << 10;

/// How many panel rows ahead of the one being multiplied are prefetched.
const PREFETCH_ROWS: usize = 32;

/// A `[out, in]` row-major weight matrix packed into panels of [`PANEL`] output columns.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedMatrix {
    /// `ceil(out / PANEL)` panels of `[in][PANEL]`, the columns past `out` zero.
    panels: Vec<f32>,
    out: usize,
    inp: usize,
}

impl PackedMatrix {
    /// Packs `w`, `[out, inp]` row-major (PyTorch's `nn.Linear.weight`).
    pub fn pack(w: &[f32], out: usize, inp: usize) -> PackedMatrix {
        assert_eq!(w.len(), out * inp, "w is [out, in]");
        let count = out.div_ceil(PANEL);
        let mut panels = vec![0f32; count * inp * PANEL];
        for (p, panel) in panels.chunks_mut((inp * PANEL).max(1)).enumerate() {
            for c in 0..PANEL.min(out.saturating_sub(p * PANEL)) {
                let row = &w[(p * PANEL + c) * inp..][..inp];
                for (k, &v) in row.iter().enumerate() {
                    panel[k * PANEL + c] = v;
                }
            }
        }
        PackedMatrix { panels, out, inp }
    }

    /// Output width.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Input width.
    pub fn inp(&self) -> usize {
        self.inp
    }

    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.out.div_ceil(PANEL)
    }

    /// Writes columns `cols` of `y = act(x·Wᵀ + b)` for `n` rows: `x` is `[n, in]` row-major,
    /// `y` the rows' outputs with row stride `ldy`, column `cols.start` at `y[0]`; `bias`, when
    /// given, holds the `out` biases. `cols` must start at a panel boundary (a multiple of
    /// [`PANEL`]) and end at one or at `out`. The bias and the activation are applied to each
    /// tile as it is stored, while it is in L1.
    pub fn matmul_cols(
        &self,
        x: &[f32],
        n: usize,
        cols: Range<usize>,
        y: &mut [f32],
        ldy: usize,
        epilogue: Epilogue,
    ) {
        self.matmul_cols_at(SimdLevel::detect(), x, n, cols, y, ldy, epilogue)
    }

    /// [`matmul_cols`](Self::matmul_cols) at instruction set `level` (the portable code where
    /// this CPU lacks it), for tests and comparisons.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_cols_at(
        &self,
        level: SimdLevel,
        x: &[f32],
        n: usize,
        cols: Range<usize>,
        y: &mut [f32],
        ldy: usize,
        epilogue: Epilogue,
    ) {
        if let Some(b) = epilogue.bias {
            assert_eq!(b.len(), self.out, "one bias per output column");
        }
        assert!(
            cols.start.is_multiple_of(PANEL) && cols.end <= self.out,
            "columns on panel bounds"
        );
        assert!(
            cols.end == self.out || cols.end.is_multiple_of(PANEL),
            "columns on panel bounds"
        );
        assert_eq!(x.len(), n * self.inp, "x is [n, in]");
        if n == 0 || cols.is_empty() {
            return;
        }
        assert!(
            y.len() >= (n - 1) * ldy + cols.len() && ldy >= cols.len(),
            "y holds the rows"
        );
        dispatch(
            level,
            Task {
                m: self,
                x,
                n,
                cols,
                y,
                ldy,
                epilogue,
            },
        )
    }

    /// The plain triple loop, in f64: what [`matmul_cols`](Self::matmul_cols) computes.
    pub fn matmul_reference(w: &[f32], out: usize, inp: usize, x: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * out];
        for r in 0..n {
            for c in 0..out {
                y[r * out + c] = (0..inp)
                    .map(|k| x[r * inp + k] as f64 * w[c * inp + k] as f64)
                    .sum();
            }
        }
        y
    }
}

/// What happens to each tile of the product before it is stored: `act(tile + bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// One bias per output column, or none.
    pub bias: Option<&'a [f32]>,
    /// The activation (identity for none).
    pub act: Activation,
}

impl Default for Epilogue<'_> {
    /// No bias, no activation: the plain product.
    fn default() -> Self {
        Epilogue {
            bias: None,
            act: Activation::Identity,
        }
    }
}

struct Task<'a> {
    m: &'a PackedMatrix,
    x: &'a [f32],
    n: usize,
    cols: Range<usize>,
    y: &'a mut [f32],
    ldy: usize,
    epilogue: Epilogue<'a>,
}

impl SimdTask for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        // Tiles that fit the register file: 8 rows x 2 vectors (32 columns) with 16 lanes;
        // 6 rows x 2 vectors (16 columns, twice per panel) with 8 lanes.
        if S::LANES == 16 {
            self.run_tiles::<S, 8, 2>(s);
        } else {
            self.run_tiles::<S, 6, 2>(s);
        }
    }
}

impl Task<'_> {
    /// Every panel of the columns, tile by tile: `MR` rows by `V` vectors of columns.
    #[inline(always)]
    fn run_tiles<S: Simd, const MR: usize, const V: usize>(self, s: S) {
        let Task {
            m,
            x,
            n,
            cols,
            y,
            ldy,
            epilogue,
        } = self;
        let k = m.inp;
        let width = V * S::LANES;
        debug_assert!(PANEL.is_multiple_of(width));
        let first = cols.start / PANEL;
        // Rows in blocks whose inputs stay in L2 (about 128 KiB) while every panel streams
        // past them; a few-row input is one block.
        let block = (ROW_BLOCK_BYTES / (4 * k.max(1)))
            .max(MR)
            .next_multiple_of(MR);
        for rows in (0..n).step_by(block) {
            let rows = rows..(rows + block).min(n);
            for p in first..cols.end.div_ceil(PANEL) {
                let panel = &m.panels[p * k * PANEL..(p + 1) * k * PANEL];
                for part in (0..PANEL).step_by(width) {
                    let col = p * PANEL + part;
                    if col >= cols.end {
                        break;
                    }
                    let valid = width.min(cols.end - col);
                    let y_col = col - cols.start;
                    let at = |r: usize| (&x[r * k..], r * ldy + y_col);
                    let ep = TileEpilogue {
                        bias: epilogue.bias.map(|b| &b[col..col + valid]),
                        act: epilogue.act,
                    };
                    let mut r = rows.start;
                    while r + MR <= rows.end {
                        let (xr, yo) = at(r);
                        tile::<S, MR, V>(s, xr, k, panel, part, &mut y[yo..], ldy, valid, ep);
                        r += MR;
                    }
                    // The last rows, fewer than MR: in tiles of 4, 2 and 1.
                    while r + 4 <= rows.end && MR > 4 {
                        let (xr, yo) = at(r);
                        tile::<S, 4, V>(s, xr, k, panel, part, &mut y[yo..], ldy, valid, ep);
                        r += 4;
                    }
                    while r + 2 <= rows.end && MR > 2 {
                        let (xr, yo) = at(r);
                        tile::<S, 2, V>(s, xr, k, panel, part, &mut y[yo..], ldy, valid, ep);
                        r += 2;
                    }
                    while r < rows.end {
                        let (xr, yo) = at(r);
                        tile::<S, 1, V>(s, xr, k, panel, part, &mut y[yo..], ldy, valid, ep);
                        r += 1;
                    }
                }
            }
        }
    }
}

/// `MR` rows of `x` (row stride `k`) times panel columns `part..part + V·LANES`, written to
/// `y` (row stride `ldy`), of which the first `valid` columns are kept.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<S: Simd, const MR: usize, const V: usize>(
    s: S,
    x: &[f32],
    k: usize,
    panel: &[f32],
    part: usize,
    y: &mut [f32],
    ldy: usize,
    valid: usize,
    ep: TileEpilogue,
) {
    let lanes = S::LANES;
    let width = V * lanes;
    // Every index of the loop below is checked here once, so that the loop itself carries no
    // bounds checks (they kept it from keeping up with the FMA units).
    assert!(x.len() >= (MR - 1) * k + k, "x holds MR rows of k");
    assert!(
        panel.len() >= k * PANEL && part + width <= PANEL,
        "panel holds k rows"
    );
    let (xp, pp) = (x.as_ptr(), panel.as_ptr());
    let mut acc = [[s.zero(); V]; MR];
    for i in 0..k {
        // The panel streams from L3 on every call (the model's weights exceed L2): ask for
        // the rows a few steps ahead; a prefetch never faults, past the end included.
        prefetch_line::<HINT_L1>(pp.wrapping_add((i + PREFETCH_ROWS) * PANEL + part));
        // SAFETY: i < k, and the asserts above bound every offset read here.
        let w_row = unsafe { std::slice::from_raw_parts(pp.add(i * PANEL + part), width) };
        let w: [S::V; V] = std::array::from_fn(|v| s.load(&w_row[v * lanes..]));
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < MR and i < k: within x's first MR rows.
            let xv = s.splat(unsafe { *xp.add(r * k + i) });
            for (a, &w) in acc.iter_mut().zip(&w) {
                *a = s.mul_add(xv, w, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let out = &mut y[r * ldy..];
        for (v, &a) in acc.iter().enumerate() {
            let start = v * lanes;
            if start + lanes <= valid {
                s.store(&mut out[start..], a);
            } else if start < valid {
                s.store_partial(&mut out[start..valid], a);
            }
        }
        let row = &mut out[..valid];
        if let Some(b) = ep.bias {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
        // GELU by name, so that its loop vectorizes without a match per element.
        match ep.act {
            Activation::Identity => {}
            Activation::Gelu => row.iter_mut().for_each(|v| *v = crate::math::gelu(*v)),
            act => row.iter_mut().for_each(|v| *v = act.apply_fast(*v)),
        }
    }
}

/// The epilogue of one tile: its columns' biases.
#[derive(Clone, Copy)]
struct TileEpilogue<'a> {
    bias: Option<&'a [f32]>,
    act: Activation,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn packed_projection_matches_the_reference_on_random_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Rows across the tile heights, widths across panel and vector edges.
        for &(n, inp, out) in &[
            (1, 1, 1),
            (5, 3, 7),
            (16, 384, 1152),
            (9, 17, 33),
            (13, 40, 64),
            (7, 65, 100),
            (130, 31, 96),
        ] {
            let w: Vec<f32> = (0..out * inp)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let x: Vec<f32> = (0..n * inp).map(|_| rng.random_range(-1.0..1.0)).collect();
            let m = PackedMatrix::pack(&w, out, inp);
            let want = PackedMatrix::matmul_reference(&w, out, inp, &x, n);
            // Whole width, and the columns of each panel boundary range separately with a
            // wider row stride.
            let mut y = vec![f32::NAN; n * out];
            m.matmul_cols(&x, n, 0..out, &mut y, out, Epilogue::default());
            // Every instruction set this CPU has gives the same within rounding.
            for level in SimdLevel::available() {
                let mut yl = vec![f32::NAN; n * out];
                m.matmul_cols_at(level, &x, n, 0..out, &mut yl, out, Epilogue::default());
                for (i, (a, b)) in yl.iter().zip(&want).enumerate() {
                    let bound = 4e-5 * (inp as f64).sqrt().max(1.0);
                    assert!(
                        (*a as f64 - b).abs() < bound,
                        "{level:?} {n}x{inp}->{out} [{i}]"
                    );
                }
            }
            let mut ranges = Vec::new();
            let mut start = 0;
            while start < out {
                let end = (start + PANEL * 2).min(out);
                ranges.push(start..end);
                start = end;
            }
            let ld = out + 3;
            let mut y2 = vec![f32::NAN; n * ld];
            for c in &ranges {
                m.matmul_cols(
                    &x,
                    n,
                    c.clone(),
                    &mut y2[c.start..],
                    ld,
                    Epilogue::default(),
                );
            }
            for r in 0..n {
                for c in 0..out {
                    let want = want[r * out + c];
                    let bound = 1e-5 * (inp as f64).sqrt().max(1.0) * 4.0;
                    for got in [y[r * out + c], y2[r * ld + c]] {
                        assert!(
                            (got as f64 - want).abs() < bound,
                            "{n}x{inp}->{out} [{r}, {c}]: {got} vs {want}"
                        );
                    }
                }
                // Nothing past the row's columns is written.
                assert!(y2[r * ld + out..(r + 1) * ld].iter().all(|v| v.is_nan()));
            }
            // The epilogue: relu(x·Wᵀ + b).
            let b: Vec<f32> = (0..out).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ep = Epilogue {
                bias: Some(&b),
                act: Activation::Relu,
            };
            let mut y3 = vec![f32::NAN; n * out];
            m.matmul_cols(&x, n, 0..out, &mut y3, out, ep);
            for (i, got) in y3.iter().enumerate() {
                let want = (want[i] + b[i % out] as f64).max(0.0);
                assert!(
                    (*got as f64 - want).abs() < 1e-4,
                    "epilogue [{i}]: {got} vs {want}"
                );
            }
        }
    }
}
