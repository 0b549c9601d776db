//! The per-token walk and the tile primitives the bucketed walk shares with it.
//!
//! Each input descends on its own, but a tile of inputs descends level by level together: after
//! input j's node at a level is decided, its next input row and its output row are prefetched,
//! and they have the other inputs' dot products to arrive. The tile's `x` rows stay in L1 for
//! every level, and the output is accumulated once per tree with a block of `y` held in
//! registers across all visited rows (output-stationary), instead of a read-modify-write of `y`
//! per level.

use super::simd::{dispatch, dot, dot4, prefetch_row, Simd, SimdLevel, SimdTask, HINT_L1, HINT_L2};
use super::{child, FffWeightsView, WeightElem};
use rayon::prelude::*;

/// Inputs whose descents are interleaved in one tile.
pub(super) const TOKEN_TILE: usize = 8;
/// Levels whose rows stay in L2 across a call (2^6 − 1 nodes of two 3 KB rows at width 768 fill
/// about 380 KB): their rows are not prefetched, since a prefetch per cache line of a row
/// already in cache only takes load slots from the dot products (15% of the top phase).
const CACHED_LEVELS: usize = 6;
/// Levels the stack buffers of a tile hold (the deepest supported tree).
pub(super) const MAX_LEVELS: usize = crate::config::MAX_DEPTH + 1;

/// Rows and activations of the nodes each input of a tile visited, indexed by level.
pub(super) struct TileRecord {
    pub rows: [[usize; MAX_LEVELS]; TOKEN_TILE],
    pub acts: [[f32; MAX_LEVELS]; TOKEN_TILE],
    pub nodes: [usize; TOKEN_TILE],
}

impl TileRecord {
    pub fn new() -> Self {
        TileRecord {
            rows: [[0; MAX_LEVELS]; TOKEN_TILE],
            acts: [[0.0; MAX_LEVELS]; TOKEN_TILE],
            nodes: [0; TOKEN_TILE],
        }
    }
}

/// A buffer shared by tasks that write disjoint parts of it (rows of `y`, records of inputs).
pub(super) struct SharedMut<T>(pub *mut T);
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: every task writes only the parts belonging to the inputs it was given, and inputs
// handed to concurrent tasks are disjoint (each input is in exactly one tile, group or bucket).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Row `index` of width `width`, within a buffer of `len` elements.
    ///
    /// # Safety
    /// No other live reference may alias this row.
    #[inline(always)]
    pub unsafe fn row<'a>(self, index: usize, width: usize, len: usize) -> &'a mut [T] {
        let start = index * width;
        assert!(start + width <= len, "row {index} out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), width) }
    }
}

/// Output rows shared by tasks that write disjoint rows of `y`.
pub(super) type RowsPtr = SharedMut<f32>;

/// Where a walk reports the nodes each input visited, for [`super::forward_with_routes`]:
/// `[batch, K·(D+1)]` local node indices, tree-major.
#[derive(Clone, Copy)]
pub(super) struct RouteSink {
    routes: SharedMut<u32>,
    len: usize,
    trees: usize,
    levels: usize,
    nodes_per_tree: usize,
}

impl RouteSink {
    /// A sink writing into `routes`, which the caller has checked holds `[batch, K·(D+1)]`.
    pub fn new(routes: &mut [u32], config: &crate::config::FffConfig) -> Self {
        RouteSink {
            routes: SharedMut(routes.as_mut_ptr()),
            len: routes.len(),
            trees: config.trees,
            levels: config.depth + 1,
            nodes_per_tree: config.nodes_per_tree(),
        }
    }

    /// Input `input` visited global row `rows[l]` at each level `l` of tree `tree`.
    #[inline(always)]
    pub fn record(self, input: usize, tree: usize, rows: &[usize]) {
        assert_eq!(rows.len(), self.levels);
        for (level, &row) in rows.iter().enumerate() {
            self.record_level(input, tree, level, row);
        }
    }

    /// Input `input` visited global row `row` at `level` of tree `tree`.
    #[inline(always)]
    pub fn record_level(self, input: usize, tree: usize, level: usize, row: usize) {
        let at = (input * self.trees + tree) * self.levels + level;
        assert!(level < self.levels && at < self.len);
        // SAFETY: in bounds (checked above); an input's slot for a tree and level is written
        // only by the one task that walks that input through that node.
        unsafe { *self.routes.0.add(at) = (row - tree * self.nodes_per_tree) as u32 };
    }
}

/// Routes the tile's inputs `xs` through `levels` of the tree whose root row is `base`,
/// starting from `rec.nodes[j]`; records each visited row and activation by level and leaves
/// `rec.nodes[j]` at the node below the last level.
///
/// `ahead` (the next tile's inputs, or empty) is prefetched a few lines per dot product: a
/// tile's inputs cross several 4 KB pages, and the hardware prefetcher restarts at each page,
/// so without this the top levels of a large batch waited on DRAM at half its bandwidth.
#[inline(always)]
pub(super) fn route_tile<S: Simd, E: WeightElem>(
    s: S,
    w: &FffWeightsView<'_, E>,
    base: usize,
    xs: &[&[f32]],
    levels: std::ops::Range<usize>,
    rec: &mut TileRecord,
    ahead: &[f32],
) {
    let depth = w.config.depth;
    const LINE: usize = 16;
    let steps = (levels.len() * xs.len()).max(1);
    let per_step = ahead.len().div_ceil(LINE).div_ceil(steps) * LINE;
    let mut ahead = ahead.chunks(per_step.max(LINE));
    // Only the chosen child is prefetched: fetching both children ahead for small tiles puts
    // three rows of prefetches in flight per level and swamps the line-fill buffers, which
    // slows a lone input down. The prefetches target L2, which keeps more misses in flight than
    // L1's fill buffers.
    for l in levels {
        for (j, x) in xs.iter().enumerate() {
            let n = rec.nodes[j];
            let row = base + n;
            if let Some(lines) = ahead.next() {
                prefetch_row::<HINT_L1, f32>(lines);
            }
            let z = dot(s, w.w_in_row(row), x) * w.w_in_scale(row) + w.b_in[row];
            rec.rows[j][l] = row;
            // The output row's scale rides on the activation: one multiply per row, not per
            // weight (it is 1 unless the weights are int8, and then folds away).
            rec.acts[j][l] = w.config.activation.apply_fast(z) * w.w_out_scale(row);
            let next = child(n, z);
            rec.nodes[j] = next;
            if l >= CACHED_LEVELS {
                prefetch_row::<HINT_L2, E>(w.w_out_row(row));
                if l < depth {
                    prefetch_row::<HINT_L2, E>(w.w_in_row(base + next));
                }
            }
        }
    }
}

/// `y (+)= Σ_l acts[l] · w_out[rows[l]]`, holding a block of `y` in registers across all rows.
/// With `overwrite`, `y`'s old contents are ignored. With `stream`, whole vectors of `y` bypass
/// the caches (see [`Simd::store_stream`]).
#[inline(always)]
pub(super) fn accumulate_rows<S: Simd, E: WeightElem>(
    s: S,
    w: &FffWeightsView<'_, E>,
    rows: &[usize],
    acts: &[f32],
    y: &mut [f32],
    overwrite: bool,
    stream: bool,
) {
    const BLOCK: usize = 8;
    let n = y.len();
    let l = S::LANES;
    let mut i = 0;
    while i + BLOCK * l <= n {
        let mut acc = [s.zero(); BLOCK];
        if !overwrite {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = s.load(&y[i + k * l..]);
            }
        }
        for (&row, &act) in rows.iter().zip(acts) {
            let out = &w.w_out_row(row)[i..];
            let av = s.splat(act);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = s.mul_add(av, s.load_w(&out[k * l..]), *a);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            s.store_maybe_stream(&mut y[i + k * l..], *a, stream);
        }
        i += BLOCK * l;
    }
    while i + l <= n {
        let mut acc = if overwrite { s.zero() } else { s.load(&y[i..]) };
        for (&row, &act) in rows.iter().zip(acts) {
            acc = s.mul_add(s.splat(act), s.load_w(&w.w_out_row(row)[i..]), acc);
        }
        s.store_maybe_stream(&mut y[i..], acc, stream);
        i += l;
    }
    accumulate_partial(s, w, rows, acts, &mut y[i..], i, overwrite);
}

/// [`accumulate_rows`] for a piece of `y` shorter than a vector, starting at column `at`.
#[inline(always)]
fn accumulate_partial<S: Simd, E: WeightElem>(
    s: S,
    w: &FffWeightsView<'_, E>,
    rows: &[usize],
    acts: &[f32],
    y: &mut [f32],
    at: usize,
    overwrite: bool,
) {
    if y.is_empty() {
        return;
    }
    let end = at + y.len();
    let mut acc = if overwrite {
        s.zero()
    } else {
        s.load_partial(y)
    };
    for (&row, &act) in rows.iter().zip(acts) {
        acc = s.mul_add(
            s.splat(act),
            s.load_w_partial(&w.w_out_row(row)[at..end]),
            acc,
        );
    }
    s.store_partial(y, acc);
}

/// The per-token walk: tiles of inputs in parallel, each tile descending every tree.
pub(super) fn per_token<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    level: SimdLevel,
    routes: Option<RouteSink>,
) {
    let (cin, cout) = (w.config.input_width, w.config.output_width);
    // Tile `i` starts at input `i · TOKEN_TILE` of the batch.
    let tile = |(i, (x, y)): (usize, (&[f32], &mut [f32]))| {
        let first = i * TOKEN_TILE;
        dispatch(
            level,
            DescendTile {
                w,
                x,
                y,
                first,
                routes,
            },
        )
    };
    if batch <= TOKEN_TILE || rayon::current_num_threads() == 1 {
        x.chunks(TOKEN_TILE * cin)
            .zip(y.chunks_mut(TOKEN_TILE * cout))
            .enumerate()
            .for_each(tile);
        return;
    }
    x.par_chunks(TOKEN_TILE * cin)
        .zip(y.par_chunks_mut(TOKEN_TILE * cout))
        .enumerate()
        .for_each(tile);
}

/// Descends a tile of at most `TOKEN_TILE` contiguous inputs through every tree.
struct DescendTile<'w, 'a, E: WeightElem> {
    w: &'w FffWeightsView<'a, E>,
    x: &'w [f32],
    y: &'w mut [f32],
    /// Index of the tile's first input in the batch.
    first: usize,
    routes: Option<RouteSink>,
}

impl<E: WeightElem> SimdTask for DescendTile<'_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let w = self.w;
        let c = &w.config;
        let (cin, cout) = (c.input_width, c.output_width);
        let tile = self.x.len() / cin;
        let levels = c.depth + 1;
        let mut xs: [&[f32]; TOKEN_TILE] = [&[]; TOKEN_TILE];
        for (j, x) in self.x.chunks_exact(cin).enumerate() {
            xs[j] = x;
        }
        let mut rec = TileRecord::new();
        for t in 0..c.trees {
            rec.nodes = [0; TOKEN_TILE];
            route_tile(
                s,
                w,
                t * c.nodes_per_tree(),
                &xs[..tile],
                0..levels,
                &mut rec,
                &[],
            );
            for (j, y) in self.y.chunks_exact_mut(cout).enumerate() {
                if let Some(r) = self.routes {
                    r.record(self.first + j, t, &rec.rows[j][..levels]);
                }
                accumulate_rows(
                    s,
                    w,
                    &rec.rows[j][..levels],
                    &rec.acts[j][..levels],
                    y,
                    t == 0,
                    false,
                );
            }
        }
    }
}

/// `z[i] = scale · (w_in · x[tokens[i]]) + bias` for a group of inputs on one node; the row is
/// loaded once per 4 inputs.
#[inline(always)]
pub(super) fn group_logits<S: Simd, E: WeightElem>(
    s: S,
    w_in: &[E],
    scale: f32,
    bias: f32,
    x: &[f32],
    tokens: &[u32],
    z: &mut [f32],
) {
    let cin = w_in.len();
    let row = |tk: u32| &x[tk as usize * cin..(tk as usize + 1) * cin];
    let mut t4 = tokens.chunks_exact(4);
    let mut z4 = z.chunks_exact_mut(4);
    for (tk, zz) in (&mut t4).zip(&mut z4) {
        let d = dot4(s, w_in, [row(tk[0]), row(tk[1]), row(tk[2]), row(tk[3])]);
        for j in 0..4 {
            zz[j] = d[j] * scale + bias;
        }
    }
    for (tk, zz) in t4.remainder().iter().zip(z4.into_remainder()) {
        *zz = dot(s, w_in, row(*tk)) * scale + bias;
    }
}

/// Moves the items (inputs, or a value per input) whose `z <= 0` (or NaN) to the front,
/// keeping order; returns how many.
pub(super) fn stable_partition<T: Copy>(items: &mut [T], z: &[f32], scratch: &mut [T]) -> usize {
    let (mut nl, mut nr) = (0, 0);
    for i in 0..items.len() {
        let item = items[i];
        if z[i] > 0.0 {
            scratch[nr] = item;
            nr += 1;
        } else {
            items[nl] = item;
            nl += 1;
        }
    }
    items[nl..].copy_from_slice(&scratch[..nr]);
    nl
}
