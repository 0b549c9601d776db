//! The GEMM walk for shallow, wide trees: the top `g` levels of every tree for a whole chunk of
//! inputs with one SGEMM in and one SGEMM out (faer), and only the levels below per input.
//!
//! A tree of depth 0 is a dense layer, and the top levels of a forest of many shallow trees
//! are nearly one: every input visits one of the `2^l` nodes of level `l`, so for small `l`
//! computing all of them costs little more than computing the visited one, and a register-
//! blocked SGEMM runs each neuron several times faster than a gather walk that loads a weight
//! row per input. With `g` top levels:
//!
//! 1. `Z = X · W_topᵀ` for the chunk, `W_top` the `K·(2^g − 1)` top rows (the input weights
//!    themselves when `g = D + 1`, else the top rows of each tree copied together once per call);
//! 2. per input, the descent through the top levels reads its logits from `Z`, adds the bias of
//!    the visited nodes only, and overwrites `Z` in place with the masked activations (the
//!    visited nodes' activations, zero elsewhere);
//! 3. `Y = A · W_out_top`, the output rows of the same nodes;
//! 4. levels `g..=D` per input in tiles as the per-token walk does, added to `Y`.
//!
//! [`gemm_levels`] chooses `g` from the shape (see its cost model). The SGEMM reads f32: for
//! bf16 and int8 weights the top rows are widened (scales applied) into the same copy, once per
//! call, so they compute exactly what the format's reference does.

use super::simd::{dispatch, dot_rows, vectorized, Simd, SimdLevel, SimdTask};
use super::tile::{accumulate_rows, RouteSink, MAX_LEVELS, TOKEN_TILE};
use super::{child, FffWeightsView, WeightElem, WeightFormat, Workspace};
use crate::config::Activation;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Cost of one visited neuron in the gather walk relative to one neuron in the SGEMM, measured
/// on the machines of docs/benchmarks.md (between 3 and 8: the walk loads each weight row
/// per input, the SGEMM reuses what it holds in registers and L1 across inputs; 3 since the
/// walk routes four trees per load of an input: at 31x4 and width 384 it then picks 2 top
/// levels, 0.9x the time of 3 at 2048 inputs).
const WALK_COST: usize = 3;
/// Smallest batch for the GEMM walk: below it an SGEMM is a handful of GEMVs.
pub(super) const GEMM_MIN_BATCH: usize = 16;
/// Logits held per chunk at most (floats): 32 MiB of `Z`. Each chunk's SGEMMs pack the weights
/// again, so chunks are large; the cap keeps the buffer bounded for any batch.
const CHUNK_FLOATS: usize = 8 << 20;

/// How many top levels the GEMM walk computes for a batch of `batch` inputs through `trees`
/// trees of depth `depth`, or 0 when the gather walk is cheaper.
///
/// Per input, `g` GEMM levels cost `K·(2^g − 1)` SGEMM neurons, plus the copy of the top rows
/// when `g ≤ D` or the weights must be widened (`widen`; once per call, shared by the batch),
/// plus `K·(D + 1 − g)` walk neurons at [`WALK_COST`] each; the pure walk costs
/// `K·(D + 1)·WALK_COST`. The cheapest wins.
pub fn gemm_levels(trees: usize, depth: usize, batch: usize, widen: bool) -> usize {
    if batch < GEMM_MIN_BATCH {
        return 0;
    }
    let levels = depth + 1;
    let cost = |g: usize| -> usize {
        let top = trees * ((1usize << g) - 1);
        let copy = if widen {
            4 * top / batch
        } else if g < levels {
            2 * top / batch
        } else {
            0
        };
        top + copy + trees * (levels - g) * WALK_COST
    };
    // Beyond 12 levels the top rows alone are 8191 per tree: never worth a GEMM.
    (0..=levels.min(12))
        .min_by_key(|&g| (cost(g), std::cmp::Reverse(g)))
        .unwrap_or(0)
}

/// The top levels the GEMM walk takes when it pays: when its cost is at most 4/5 of the pure
/// walk's by [`gemm_levels`]'s model (shallow, wide trees; never deep ones, where the walk's
/// top rows are shared by the whole batch and stay in cache anyway).
pub(super) fn gemm_plan(trees: usize, depth: usize, batch: usize, widen: bool) -> Option<usize> {
    let g = gemm_levels(trees, depth, batch, widen);
    let levels = depth + 1;
    let cost = ((1usize << g) - 1) + (levels - g) * WALK_COST;
    (g > 0 && 5 * cost <= 4 * levels * WALK_COST).then_some(g)
}

/// `y = FFF(x)` with the top `g ≥ 1` levels of every tree on SGEMMs (see the module docs).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_walk<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    g: usize,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
    routes: Option<RouteSink>,
) {
    let c = &w.config;
    let (cin, cout) = (c.input_width, c.output_width);
    let (k, m, levels) = (c.trees, c.nodes_per_tree(), c.depth + 1);
    let g = g.clamp(1, levels);
    let top = (1usize << g) - 1;
    let cols = k * top;
    // The top rows of each tree, together, as f32; the weights themselves when that is all of
    // them and they are f32.
    let direct = match (E::as_f32(w.w_in), E::as_f32(w.w_out_t)) {
        (Some(w_in), Some(w_out_t)) if g == levels => Some((w_in, w_out_t)),
        _ => None,
    };
    let (w_top, w_out_top): (&[f32], &[f32]) = match direct {
        Some(d) => d,
        None => {
            ws.top_w_in.resize(cols * cin, 0.0);
            ws.top_w_out.resize(cols * cout, 0.0);
            let widen_rows = |dst: &mut [f32], width: usize, out: bool| {
                dst.par_chunks_mut(width).enumerate().for_each(|(i, d)| {
                    let row = (i / top) * m + i % top;
                    let (src, scale) = if out {
                        (w.w_out_row(row), w.w_out_scale(row))
                    } else {
                        (w.w_in_row(row), w.w_in_scale(row))
                    };
                    widen_row(src, scale, d);
                })
            };
            if cin > 0 {
                widen_rows(&mut ws.top_w_in, cin, false);
            }
            if cout > 0 {
                widen_rows(&mut ws.top_w_out, cout, true);
            }
            (&ws.top_w_in, &ws.top_w_out)
        }
    };
    let chunk = (CHUNK_FLOATS / cols.max(1))
        .max(GEMM_MIN_BATCH)
        .min(batch.max(1));
    if ws.logits.len() < chunk * cols {
        ws.logits.resize(chunk * cols, 0.0);
    }
    if ws.reached.len() < chunk * k {
        ws.reached.resize(chunk * k, 0);
    }
    let par = if rayon::current_num_threads() > 1 {
        Par::rayon(0)
    } else {
        Par::Seq
    };
    let w_top = MatRef::from_row_major_slice(w_top, cols, cin);
    let w_out_top = MatRef::from_row_major_slice(w_out_top, cols, cout);
    for (i, (xc, yc)) in x
        .chunks(chunk * cin)
        .zip(y.chunks_mut(chunk * cout))
        .enumerate()
    {
        let n = xc.len() / cin;
        let first = i * chunk;
        let z = &mut ws.logits[..n * cols];
        let reached = &mut ws.reached[..n * k];
        matmul(
            MatMut::from_row_major_slice_mut(z, n, cols),
            Accum::Replace,
            MatRef::from_row_major_slice(xc, n, cin),
            w_top.transpose(),
            1.0f32,
            par,
        );
        z.par_chunks_mut(cols)
            .zip(reached.par_chunks_mut(k))
            .enumerate()
            .for_each(|(b, (zb, rb))| {
                mask_top(w, g, zb, rb, routes.map(|r| (r, first + b)));
            });
        matmul(
            MatMut::from_row_major_slice_mut(yc, n, cout),
            Accum::Replace,
            MatRef::from_row_major_slice(z, n, cols),
            w_out_top,
            1.0f32,
            par,
        );
        if g < levels {
            let reached = &ws.reached[..n * k];
            // Trees in passes whose bottom rows fit in a quarter of L2, each pass over the
            // whole chunk: the rows stay cached across all its inputs, which stream past once
            // per pass. Walking every tree per tile instead fetched all the bottom rows again
            // for each tile (31 trees of depth 4 at width 384: 2.2 MB per tile of 8 inputs).
            let row_bytes = (cin + cout) * std::mem::size_of::<E>();
            let tree_bytes = ((m + 1) - (1usize << g)) * row_bytes;
            let pass = (BOTTOM_PASS_BYTES / tree_bytes.max(1)).clamp(1, k);
            for t in (0..k).step_by(pass) {
                let trees = t..(t + pass).min(k);
                let tile = |(j, (xt, yt)): (usize, (&[f32], &mut [f32]))| {
                    let start = j * TOKEN_TILE;
                    dispatch(
                        level,
                        BottomTile {
                            w,
                            g,
                            x: xt,
                            y: yt,
                            reached: Some(&reached[start * k..(start + xt.len() / cin) * k]),
                            first: first + start,
                            trees: trees.clone(),
                            routes,
                        },
                    )
                };
                if rayon::current_num_threads() == 1 {
                    xc.chunks(TOKEN_TILE * cin)
                        .zip(yc.chunks_mut(TOKEN_TILE * cout))
                        .enumerate()
                        .for_each(tile);
                } else {
                    xc.par_chunks(TOKEN_TILE * cin)
                        .zip(yc.par_chunks_mut(TOKEN_TILE * cout))
                        .enumerate()
                        .for_each(tile);
                }
            }
        }
    }
}

/// `dst = scale · src`, widened to f32 (exactly: bf16 and int8 widen without rounding, and the
/// product is the one the format's reference uses).
fn widen_row<E: WeightElem>(src: &[E], scale: f32, dst: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32() * scale;
            }
        },
    )
}

/// One input's top levels: reads the logits of its path from `zb` (`[K·(2^g − 1)]`, tree by
/// tree), then leaves in `zb` the activation of each visited node and zero elsewhere, and in
/// `reached` the node each tree's path reaches at level `g`.
///
/// The activations are applied to the whole row at the end, in one vectorized pass over the
/// masked logits (every activation maps 0 to 0): a scalar GELU per visited node cost a dense
/// layer (depth 0) as much as its two SGEMMs.
fn mask_top<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    g: usize,
    zb: &mut [f32],
    reached: &mut [u32],
    routes: Option<(RouteSink, usize)>,
) {
    let c = &w.config;
    let (m, top) = (c.nodes_per_tree(), (1usize << g) - 1);
    if g == 1 {
        // One level: the bias of every root, and which child each root sends the input to.
        for (t, (z, r)) in zb.iter_mut().zip(reached.iter_mut()).enumerate() {
            *z += w.b_in[t * m];
            *r = child(0, *z) as u32;
        }
        if let Some((sink, input)) = routes {
            for t in 0..c.trees {
                sink.record_level(input, t, 0, t * m);
            }
        }
    } else {
        // Four trees' descents interleaved: each level's logit load waits on the level above,
        // and four independent chains keep the loads overlapped.
        const LANES: usize = 4;
        for (c4, (zc, rc)) in zb
            .chunks_mut(LANES * top)
            .zip(reached.chunks_mut(LANES))
            .enumerate()
        {
            let trees = rc.len();
            let mut n = [0usize; LANES];
            let mut nodes = [[0usize; MAX_LEVELS]; LANES];
            let mut zs = [[0f32; MAX_LEVELS]; LANES];
            for l in 0..g {
                for q in 0..trees {
                    let z = zc[q * top + n[q]] + w.b_in[(c4 * LANES + q) * m + n[q]];
                    nodes[q][l] = n[q];
                    zs[q][l] = z;
                    n[q] = child(n[q], z);
                }
            }
            zc.fill(0.0);
            for q in 0..trees {
                for l in 0..g {
                    zc[q * top + nodes[q][l]] = zs[q][l];
                    if let Some((sink, input)) = routes {
                        sink.record_level(
                            input,
                            c4 * LANES + q,
                            l,
                            (c4 * LANES + q) * m + nodes[q][l],
                        );
                    }
                }
                rc[q] = n[q] as u32;
            }
        }
    }
    activate(c.activation, zb);
}

/// `act` applied to every element of `v`, in a loop written per activation so that it
/// vectorizes (a `match` inside the loop keeps it scalar).
fn activate(act: Activation, v: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Relu => vectorized(
            #[inline(always)]
            || v.iter_mut().for_each(|x| *x = x.max(0.0)),
        ),
        Activation::Gelu => vectorized(
            #[inline(always)]
            || v.iter_mut().for_each(|x| *x = crate::math::gelu(*x)),
        ),
        Activation::Tanh => v.iter_mut().for_each(|x| *x = act.apply_fast(*x)),
    }
}

/// Rows of a tile's inputs gathered over several trees before they are added to `y`: one pass
/// over each output row per group of trees instead of one per tree.
const ROWS_PER_PASS: usize = 32;
/// Bytes of bottom rows (input and output) the GEMM walk keeps cached per pass over a chunk:
/// a quarter of a 2 MiB L2, leaving room for the inputs and outputs streaming past and for a
/// sibling hyperthread.
const BOTTOM_PASS_BYTES: usize = 512 << 10;
/// Trees an input is routed through side by side: each vector of the input is loaded once for
/// this many rows (see [`dot_rows`]), and four rows with two accumulators each fill the FMA
/// pipes without spilling AVX2's sixteen registers.
const TREES_PER_DOT: usize = 4;

/// Levels `g..=D` of every tree for a tile of at most `TOKEN_TILE` inputs, added to `y`.
struct BottomTile<'w, 'a, E: WeightElem> {
    w: &'w FffWeightsView<'a, E>,
    g: usize,
    x: &'w [f32],
    y: &'w mut [f32],
    /// The node each input's path reached at level `g` in each tree, `[tile, K]`; `None` when
    /// `g` is 0 (every path starts at its root).
    reached: Option<&'w [u32]>,
    /// Index of the tile's first input in the batch.
    first: usize,
    /// The trees to walk.
    trees: std::ops::Range<usize>,
    routes: Option<RouteSink>,
}

impl<E: WeightElem> SimdTask for BottomTile<'_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let w = self.w;
        let c = &w.config;
        let (cin, cout, k, m) = (c.input_width, c.output_width, c.trees, c.nodes_per_tree());
        let levels = c.depth + 1;
        let per_tree = levels - self.g;
        let group = (ROWS_PER_PASS / per_tree).clamp(1, ROWS_PER_PASS);
        let tile = self.x.len() / cin;
        // Per input, the node each tree of the group stands at, then the rows it visited and
        // their logits (activations once the group is routed), slot `tree · per_tree + level`.
        let mut nodes = [[0usize; ROWS_PER_PASS]; TOKEN_TILE];
        let mut rows = [[0usize; ROWS_PER_PASS + MAX_LEVELS]; TOKEN_TILE];
        let mut acts = [[0f32; ROWS_PER_PASS + MAX_LEVELS]; TOKEN_TILE];
        let mut t0 = self.trees.start;
        while t0 < self.trees.end {
            let t1 = (t0 + group).min(self.trees.end);
            let trees = t1 - t0;
            for (j, nj) in nodes.iter_mut().enumerate().take(tile) {
                for (i, n) in nj.iter_mut().enumerate().take(trees) {
                    *n = self.reached.map_or(0, |r| r[j * k + t0 + i] as usize);
                }
            }
            // Level by level, each input through [`TREES_PER_DOT`] trees at a time: the inputs
            // of one level are independent, so their dot products overlap while each waits on
            // the previous level's signs.
            for l in self.g..levels {
                for (j, x) in self.x.chunks_exact(cin).enumerate() {
                    let mut i = 0;
                    while i < trees {
                        let r = TREES_PER_DOT.min(trees - i);
                        let mut at = [0usize; TREES_PER_DOT];
                        for (q, a) in at.iter_mut().enumerate().take(r) {
                            *a = (t0 + i + q) * m + nodes[j][i + q];
                        }
                        let row = |q: usize| w.w_in_row(at[q]);
                        let mut z = [0f32; TREES_PER_DOT];
                        match r {
                            4 => z = dot_rows(s, [0, 1, 2, 3].map(row), x),
                            3 => z[..3].copy_from_slice(&dot_rows(s, [0, 1, 2].map(row), x)),
                            2 => z[..2].copy_from_slice(&dot_rows(s, [0, 1].map(row), x)),
                            _ => z[0] = dot_rows(s, [row(0)], x)[0],
                        }
                        for (q, (&zq, &at)) in z.iter().zip(&at).enumerate().take(r) {
                            let zq = zq * w.w_in_scale(at) + w.b_in[at];
                            let slot = (i + q) * per_tree + l - self.g;
                            rows[j][slot] = at;
                            acts[j][slot] = zq;
                            nodes[j][i + q] = child(nodes[j][i + q], zq);
                            if let Some(sink) = self.routes {
                                sink.record_level(self.first + j, t0 + i + q, l, at);
                            }
                        }
                        i += r;
                    }
                }
            }
            let used = trees * per_tree;
            for (j, y) in self.y.chunks_exact_mut(cout).enumerate() {
                // The activations in one vectorized pass, off the routing's critical path (a
                // scalar GELU per visited node was a seventh of the walk); the output rows'
                // scales ride on them (1 unless the weights are int8).
                let a = &mut acts[j][..used];
                activate(c.activation, a);
                if E::FORMAT == WeightFormat::Int8 {
                    for (a, &row) in a.iter_mut().zip(&rows[j][..used]) {
                        *a *= w.w_out_scale(row);
                    }
                }
                accumulate_rows(s, w, &rows[j][..used], &acts[j][..used], y, false, false);
            }
            t0 = t1;
        }
    }
}

/// Whether the per-token walk gathers the rows of several trees per output pass: when a tree's
/// path is short enough for two or more to fit in one pass.
pub(super) fn gathers_trees(trees: usize, depth: usize) -> bool {
    trees > 1 && 2 * (depth + 1) <= ROWS_PER_PASS
}

/// The per-token walk for forests of short trees: tiles of inputs in parallel, each descending
/// every tree, with the rows of [`ROWS_PER_PASS`] / (D + 1) trees added to `y` in one pass (one
/// read and write of each output block per group of trees instead of per tree: for 3072 trees
/// of depth 0 the per-tree passes cost as much as the dot products).
pub(super) fn per_token_gathered<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
    routes: Option<RouteSink>,
) {
    let (cin, cout) = (w.config.input_width, w.config.output_width);
    let tile = |(j, (xt, yt)): (usize, (&[f32], &mut [f32]))| {
        yt.fill(0.0);
        dispatch(
            level,
            BottomTile {
                w,
                g: 0,
                x: xt,
                y: yt,
                reached: None,
                first: j * TOKEN_TILE,
                trees: 0..w.config.trees,
                routes,
            },
        )
    };
    let threads = rayon::current_num_threads();
    let k = w.config.trees;
    if batch <= TOKEN_TILE && threads > 1 && k >= 8 * threads {
        // One tile: split the trees across the threads instead, each into its own outputs,
        // summed at the end (a lone input through 3072 trees of depth 0 is a GEMV, and reads
        // its weights at the rate of every core, as a dense GEMV does).
        let parts = threads.min(k);
        if ws.logits.len() < parts * y.len() {
            ws.logits.resize(parts * y.len(), 0.0);
        }
        // Each part accumulates into its own outputs (reused scratch: no allocation per call).
        let partial = &mut ws.logits[..parts * y.len()];
        partial.fill(0.0);
        partial
            .par_chunks_mut(y.len())
            .enumerate()
            .for_each(|(p, yp)| {
                dispatch(
                    level,
                    BottomTile {
                        w,
                        g: 0,
                        x,
                        y: yp,
                        reached: None,
                        first: 0,
                        trees: p * k / parts..(p + 1) * k / parts,
                        routes,
                    },
                )
            });
        y.copy_from_slice(&partial[..y.len()]);
        for yp in partial.chunks_exact(y.len()).skip(1) {
            y.iter_mut().zip(yp).for_each(|(a, b)| *a += b);
        }
        return;
    }
    if batch <= TOKEN_TILE || threads == 1 {
        x.chunks(TOKEN_TILE * cin)
            .zip(y.chunks_mut(TOKEN_TILE * cout))
            .enumerate()
            .for_each(tile);
    } else {
        x.par_chunks(TOKEN_TILE * cin)
            .zip(y.par_chunks_mut(TOKEN_TILE * cout))
            .enumerate()
            .for_each(tile);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_model_picks_gemm_for_shallow_wide_trees_only() {
        // A dense layer is all GEMM.
        for widen in [false, true] {
            assert_eq!(gemm_plan(3072, 0, 128, widen), Some(1));
            // Shallow forests take their top levels by GEMM.
            assert!(gemm_plan(512, 2, 16384, widen) >= Some(2));
            assert!(gemm_plan(128, 4, 16384, widen) >= Some(1));
            // Deep trees and tiny batches stay on the walk.
            for (trees, depth) in [(1, 11), (2, 10), (8, 8)] {
                assert_eq!(
                    gemm_plan(trees, depth, 16384, widen),
                    None,
                    "{trees}x{depth}"
                );
            }
            assert_eq!(gemm_plan(3072, 0, GEMM_MIN_BATCH - 1, widen), None);
            // Forced, the walk still takes at least the root level.
            assert!(gemm_levels(1, 11, 16384, widen) >= 1);
        }
    }
}
