//! The fast inference kernel: batched conditional matrix multiplication on the CPU.
//!
//! Two strategies, chosen per call:
//! - **Per token** (small batches, latency): each input descends alone; while node `n`'s dot
//!   product runs, both children's input rows and `n`'s output row are prefetched, so the one
//!   dependent load per level overlaps with arithmetic instead of stalling on DRAM.
//! - **Grouped** (large batches, throughput): a depth-first walk of each tree that carries the
//!   set of inputs sitting on the current node. Each weight row is loaded once per group and
//!   reused across its inputs (4 inputs per pass of the row), the group is split into left/right
//!   subsets by a stable partition, and the two subtrees run in parallel. Deep in the tree the
//!   groups are small enough that their input and output rows stay in cache for the whole subtree.

use super::simd::{axpy, dispatch, dot, dot4, prefetch_row, Simd, SimdLevel, SimdTask};
use super::{check_io, child, FffWeightsView};
use crate::error::Result;
use rayon::prelude::*;

/// How the kernel walks the trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Pick per call from the batch size and depth.
    #[default]
    Auto,
    /// One input at a time, with prefetch of both children (best at small batches).
    PerToken,
    /// Inputs grouped by node, depth-first (best at large batches).
    Grouped,
}

/// Options of the inference kernel.
#[derive(Clone, Copy, Debug)]
pub struct InferOptions {
    /// Walk strategy.
    pub strategy: Strategy,
    /// Instruction set; a level the CPU lacks falls back to portable code.
    pub simd: SimdLevel,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions {
            strategy: Strategy::Auto,
            simd: SimdLevel::detect(),
        }
    }
}

/// Reusable scratch buffers, so that calls after the first allocate nothing.
#[derive(Debug, Default)]
pub struct Workspace {
    tokens: Vec<u32>,
    scratch: Vec<u32>,
    z: Vec<f32>,
}

impl Workspace {
    /// An empty workspace; it grows to the largest batch seen.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, batch: usize) {
        if self.tokens.len() < batch {
            self.tokens.resize(batch, 0);
            self.scratch.resize(batch, 0);
            self.z.resize(batch, 0.0);
        }
    }
}

/// Below this batch the grouped walk has too little reuse to pay for its bookkeeping.
const GROUPED_MIN_BATCH: usize = 32;
/// Inputs per parallel task in the per-token walk (they share the top of each tree in cache).
const TOKEN_TILE: usize = 8;
/// Inputs per parallel chunk when one node's group is split across threads.
const GROUP_CHUNK: usize = 128;
/// Smallest group whose two subtrees are worth running as separate tasks.
const JOIN_MIN: usize = 64;

/// Which strategy `Auto` resolves to for this call.
pub fn resolve_strategy(strategy: Strategy, depth: usize, batch: usize) -> Strategy {
    match strategy {
        Strategy::Auto if batch >= GROUPED_MIN_BATCH && depth >= 2 => Strategy::Grouped,
        Strategy::Auto => Strategy::PerToken,
        s => s,
    }
}

/// Computes `y = FFF(x)` for `batch` rows of `x` (`[batch, in]`) into `y` (`[batch, out]`).
pub fn forward(
    w: &FffWeightsView<'_>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    opts: InferOptions,
) -> Result<()> {
    check_io(&w.config, x, y, batch)?;
    if batch == 0 {
        return Ok(());
    }
    match resolve_strategy(opts.strategy, w.config.depth, batch) {
        Strategy::Grouped => grouped(w, x, batch, y, ws, opts.simd),
        _ => per_token(w, x, batch, y, opts.simd),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Per-token walk.

fn per_token(w: &FffWeightsView<'_>, x: &[f32], batch: usize, y: &mut [f32], level: SimdLevel) {
    let (cin, cout) = (w.config.input_width, w.config.output_width);
    if batch <= TOKEN_TILE || rayon::current_num_threads() == 1 {
        dispatch(level, DescendTile { w, x, y });
        return;
    }
    y.par_chunks_mut(TOKEN_TILE * cout)
        .zip(x.par_chunks(TOKEN_TILE * cin))
        .for_each(|(y, x)| dispatch(level, DescendTile { w, x, y }));
}

/// Descends a tile of inputs through every tree; trees outermost so a tree's top rows stay hot.
struct DescendTile<'w, 'a> {
    w: &'w FffWeightsView<'a>,
    x: &'w [f32],
    y: &'w mut [f32],
}

impl SimdTask for DescendTile<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let c = &self.w.config;
        let (cin, cout) = (c.input_width, c.output_width);
        self.y.fill(0.0);
        for t in 0..c.trees {
            for (xb, yb) in self.x.chunks_exact(cin).zip(self.y.chunks_exact_mut(cout)) {
                descend_one(s, self.w, t, xb, yb);
            }
        }
    }
}

#[inline(always)]
fn descend_one<S: Simd>(s: S, w: &FffWeightsView<'_>, tree: usize, x: &[f32], y: &mut [f32]) {
    let c = &w.config;
    let base = tree * c.nodes_per_tree();
    let mut n = 0;
    for level in 0..=c.depth {
        let row = base + n;
        let out_row = w.w_out_row(row);
        if level < c.depth {
            // The next row is one of two; fetch both while this dot product runs.
            prefetch_row(s, w.w_in_row(base + 2 * n + 1));
            prefetch_row(s, w.w_in_row(base + 2 * n + 2));
        }
        prefetch_row(s, out_row);
        let z = dot(s, w.w_in_row(row), x) + w.b_in[row];
        axpy(s, c.activation.apply(z), out_row, y);
        n = child(n, z);
    }
}

// ---------------------------------------------------------------------------------------------
// Grouped depth-first walk.

/// Output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct RowsPtr(*mut f32);
// SAFETY: tasks only touch the rows of the inputs in their own group, and groups handled
// concurrently are disjoint (a tree sends each input down exactly one branch).
unsafe impl Send for RowsPtr {}
unsafe impl Sync for RowsPtr {}

struct GroupCtx<'w, 'a> {
    w: &'w FffWeightsView<'a>,
    x: &'w [f32],
    y: RowsPtr,
    y_len: usize,
    level: SimdLevel,
}

fn grouped(
    w: &FffWeightsView<'_>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
) {
    ws.ensure(batch);
    y.par_chunks_mut(GROUP_CHUNK * w.config.output_width)
        .for_each(|c| c.fill(0.0));
    let ctx = GroupCtx {
        w,
        x,
        y: RowsPtr(y.as_mut_ptr()),
        y_len: y.len(),
        level,
    };
    let tokens = &mut ws.tokens[..batch];
    let z = &mut ws.z[..batch];
    let scratch = &mut ws.scratch[..batch];
    for t in 0..w.config.trees {
        for (i, tk) in tokens.iter_mut().enumerate() {
            *tk = i as u32;
        }
        visit(&ctx, t, 0, 0, tokens, z, scratch);
    }
}

fn visit(
    ctx: &GroupCtx<'_, '_>,
    tree: usize,
    node: usize,
    level: usize,
    tokens: &mut [u32],
    z: &mut [f32],
    scratch: &mut [u32],
) {
    let len = tokens.len();
    if len == 0 {
        return;
    }
    let c = &ctx.w.config;
    let row = tree * c.nodes_per_tree() + node;
    if len >= 2 * GROUP_CHUNK && rayon::current_num_threads() > 1 {
        tokens
            .par_chunks(GROUP_CHUNK)
            .zip(z.par_chunks_mut(GROUP_CHUNK))
            .for_each(|(tokens, z)| node_group(ctx, row, tokens, z));
    } else {
        node_group(ctx, row, tokens, z);
    }
    if level == c.depth {
        return;
    }
    let left = stable_partition(tokens, z, scratch);
    let (tl, tr) = tokens.split_at_mut(left);
    let (zl, zr) = z.split_at_mut(left);
    let (sl, sr) = scratch.split_at_mut(left);
    let (nl, nr) = (2 * node + 1, 2 * node + 2);
    if len >= JOIN_MIN && rayon::current_num_threads() > 1 {
        rayon::join(
            || visit(ctx, tree, nl, level + 1, tl, zl, sl),
            || visit(ctx, tree, nr, level + 1, tr, zr, sr),
        );
    } else {
        visit(ctx, tree, nl, level + 1, tl, zl, sl);
        visit(ctx, tree, nr, level + 1, tr, zr, sr);
    }
}

/// Moves inputs with `z <= 0` (or NaN) to the front, keeping order; returns how many.
fn stable_partition(tokens: &mut [u32], z: &[f32], scratch: &mut [u32]) -> usize {
    let (mut nl, mut nr) = (0, 0);
    for i in 0..tokens.len() {
        let tk = tokens[i];
        if z[i] > 0.0 {
            scratch[nr] = tk;
            nr += 1;
        } else {
            tokens[nl] = tk;
            nl += 1;
        }
    }
    tokens[nl..].copy_from_slice(&scratch[..nr]);
    nl
}

fn node_group(ctx: &GroupCtx<'_, '_>, row: usize, tokens: &[u32], z: &mut [f32]) {
    dispatch(
        ctx.level,
        NodeGroup {
            ctx,
            row,
            tokens,
            z,
        },
    );
}

/// One node applied to a group of inputs: z = w_in[row]·x + b, y += act(z)·w_out[row].
struct NodeGroup<'c, 'w, 'a> {
    ctx: &'c GroupCtx<'w, 'a>,
    row: usize,
    tokens: &'c [u32],
    z: &'c mut [f32],
}

impl SimdTask for NodeGroup<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let ctx = self.ctx;
        let c = &ctx.w.config;
        let cin = c.input_width;
        let w_in = ctx.w.w_in_row(self.row);
        let w_out = ctx.w.w_out_row(self.row);
        let bias = ctx.w.b_in[self.row];
        let act = c.activation;
        let mut tk4 = self.tokens.chunks_exact(4);
        let mut z4 = self.z.chunks_exact_mut(4);
        for (tk, zz) in (&mut tk4).zip(&mut z4) {
            let xs = [0, 1, 2, 3].map(|j| input_row(ctx.x, tk[j], cin));
            let d = dot4(s, w_in, xs);
            for j in 0..4 {
                zz[j] = d[j] + bias;
                add_output(s, ctx, tk[j], act.apply(zz[j]), w_out);
            }
        }
        for (tk, zz) in tk4.remainder().iter().zip(z4.into_remainder()) {
            *zz = dot(s, w_in, input_row(ctx.x, *tk, cin)) + bias;
            add_output(s, ctx, *tk, act.apply(*zz), w_out);
        }
    }
}

/// Input row of token `tk`.
#[inline(always)]
fn input_row(x: &[f32], tk: u32, width: usize) -> &[f32] {
    &x[tk as usize * width..(tk as usize + 1) * width]
}

/// `y[tk] += a · w_out`. A plain function, not a closure: closures are not inlined into the
/// target-feature context, and the SIMD intrinsics inside them would become calls.
#[inline(always)]
fn add_output<S: Simd>(s: S, ctx: &GroupCtx<'_, '_>, tk: u32, a: f32, w_out: &[f32]) {
    let cout = w_out.len();
    let start = tk as usize * cout;
    assert!(start + cout <= ctx.y_len);
    // SAFETY: in bounds (checked above); this input's row is written by this task only.
    let y = unsafe { std::slice::from_raw_parts_mut(ctx.y.0.add(start), cout) };
    axpy(s, a, w_out, y);
}
