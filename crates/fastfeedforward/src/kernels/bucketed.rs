//! The bucketed walk for large batches: split each tree at a middle level `s`.
//!
//! 1. **Top**: every input descends levels `0..s` in tiles (the top `2^s − 1` rows are shared by
//!    all inputs and stay in cache), recording its rows, activations and the node it reaches.
//! 2. **Bucket**: a counting sort groups the inputs by that node, i.e. by bottom subtree.
//! 3. **Bottom**: each bucket (in parallel) descends levels `s..=D` of its own subtree, whose
//!    `2^(D+1−s) − 1` rows now serve every input of the bucket from cache instead of being
//!    fetched once per input, then writes each input's output once, with all its levels' rows
//!    accumulated in registers.
//!
//! Weight traffic drops from one row pair per input per level to roughly one pass over the
//! weights per call; inputs are read twice and outputs written once.

use super::simd::{dispatch, Simd, SimdLevel, SimdTask};
use super::tile::{accumulate_rows, route_tile, RowsPtr, TileRecord, MAX_LEVELS, TOKEN_TILE};
use super::{FffWeightsView, Workspace};
use rayon::prelude::*;

/// Number of top levels for a tree of `levels` levels: the two halves hold about as many rows.
pub(super) fn split_level(levels: usize) -> usize {
    levels / 2
}

pub(super) fn bucketed(
    w: &FffWeightsView<'_>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
) {
    let c = &w.config;
    let levels = c.depth + 1;
    let split = split_level(levels);
    let buckets = 1usize << split;
    ws.ensure_bucketed(batch, split, buckets);
    let y_len = y.len();
    let y_ptr = RowsPtr(y.as_mut_ptr());
    for t in 0..c.trees {
        let base = t * c.nodes_per_tree();
        // 1. Top levels, contiguous tiles in parallel.
        let top_rows = &mut ws.top_rows[..batch * split];
        let top_acts = &mut ws.top_acts[..batch * split];
        let reached = &mut ws.reached[..batch];
        x.par_chunks(TOKEN_TILE * c.input_width)
            .zip(top_rows.par_chunks_mut(TOKEN_TILE * split.max(1)))
            .zip(top_acts.par_chunks_mut(TOKEN_TILE * split.max(1)))
            .zip(reached.par_chunks_mut(TOKEN_TILE))
            .for_each(|(((x, rows), acts), reached)| {
                dispatch(
                    level,
                    TopTile {
                        w,
                        base,
                        split,
                        x,
                        rows,
                        acts,
                        reached,
                    },
                )
            });
        // 2. Counting sort by the node reached at level `split` (first node of that level is
        //    2^split − 1).
        let first = buckets - 1;
        let start = &mut ws.bucket_start[..buckets + 1];
        start.fill(0);
        for &n in reached.iter() {
            start[n as usize - first + 1] += 1;
        }
        for b in 0..buckets {
            start[b + 1] += start[b];
        }
        let fill = &mut ws.bucket_fill[..buckets];
        fill.copy_from_slice(&start[..buckets]);
        let order = &mut ws.order[..batch];
        for (tk, &n) in reached.iter().enumerate() {
            let b = n as usize - first;
            order[fill[b]] = tk as u32;
            fill[b] += 1;
        }
        // 3. Bottom subtrees, one task per non-empty bucket.
        let (order, start, top_rows, top_acts, reached) =
            (&*order, &*start, &*top_rows, &*top_acts, &*reached);
        (0..buckets).into_par_iter().for_each(|b| {
            let tokens = &order[start[b]..start[b + 1]];
            if tokens.is_empty() {
                return;
            }
            dispatch(
                level,
                BottomBucket {
                    w,
                    base,
                    split,
                    x,
                    tokens,
                    top_rows,
                    top_acts,
                    reached,
                    y: y_ptr,
                    y_len,
                    overwrite: t == 0,
                },
            )
        });
    }
}

/// Top levels of one contiguous tile.
struct TopTile<'w, 'a> {
    w: &'w FffWeightsView<'a>,
    base: usize,
    split: usize,
    x: &'w [f32],
    rows: &'w mut [u32],
    acts: &'w mut [f32],
    reached: &'w mut [u32],
}

impl SimdTask for TopTile<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let cin = self.w.config.input_width;
        let tile = self.x.len() / cin;
        let mut xs: [&[f32]; TOKEN_TILE] = [&[]; TOKEN_TILE];
        for (j, x) in self.x.chunks_exact(cin).enumerate() {
            xs[j] = x;
        }
        let mut rec = TileRecord::new();
        route_tile(s, self.w, self.base, &xs[..tile], 0..self.split, &mut rec);
        for j in 0..tile {
            for l in 0..self.split {
                self.rows[j * self.split + l] = rec.rows[j][l] as u32;
                self.acts[j * self.split + l] = rec.acts[j][l];
            }
            self.reached[j] = rec.nodes[j] as u32;
        }
    }
}

/// Bottom levels of every input in one bucket, then their outputs.
struct BottomBucket<'w, 'a> {
    w: &'w FffWeightsView<'a>,
    base: usize,
    split: usize,
    x: &'w [f32],
    tokens: &'w [u32],
    top_rows: &'w [u32],
    top_acts: &'w [f32],
    reached: &'w [u32],
    y: RowsPtr,
    y_len: usize,
    overwrite: bool,
}

impl SimdTask for BottomBucket<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let c = &self.w.config;
        let (cin, cout) = (c.input_width, c.output_width);
        let levels = c.depth + 1;
        let split = self.split;
        debug_assert!(levels <= MAX_LEVELS);
        let mut rec = TileRecord::new();
        for tile in self.tokens.chunks(TOKEN_TILE) {
            let mut xs: [&[f32]; TOKEN_TILE] = [&[]; TOKEN_TILE];
            for (j, &tk) in tile.iter().enumerate() {
                let tk = tk as usize;
                xs[j] = &self.x[tk * cin..(tk + 1) * cin];
                rec.nodes[j] = self.reached[tk] as usize;
                for l in 0..split {
                    rec.rows[j][l] = self.top_rows[tk * split + l] as usize;
                    rec.acts[j][l] = self.top_acts[tk * split + l];
                }
            }
            route_tile(
                s,
                self.w,
                self.base,
                &xs[..tile.len()],
                split..levels,
                &mut rec,
            );
            for (j, &tk) in tile.iter().enumerate() {
                // SAFETY: each input is in exactly one bucket and once in it.
                let y = unsafe { self.y.row(tk as usize, cout, self.y_len) };
                accumulate_rows(
                    s,
                    self.w,
                    &rec.rows[j][..levels],
                    &rec.acts[j][..levels],
                    y,
                    self.overwrite,
                );
            }
        }
    }
}
