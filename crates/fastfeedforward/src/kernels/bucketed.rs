//! The bucketed walk for large batches: split each tree at a middle level `s`.
//!
//! 1. **Top**: every input descends levels `0..s` in tiles (the top `2^s − 1` rows are shared by
//!    all inputs and stay in cache), recording its rows, activations and the node it reaches.
//! 2. **Bucket**: a counting sort groups the inputs by that node, i.e. by bottom subtree.
//! 3. **Bottom**: buckets run in parallel. Inside a bucket, the subtree is walked depth first
//!    with the inputs on each node grouped, two levels at a time: one pass over a node's inputs
//!    takes their dot products with the node's row and both its children's rows, each loaded
//!    once per 4 inputs, so the inputs stream from cache once per two levels (the child an
//!    input does not take costs a wasted dot product and its share of that row's loads, but
//!    no extra input loads). Small buckets use the interleaved tile descent instead. Then each
//!    input's output is written once, with all its levels' output rows accumulated in
//!    registers; inputs are visited in leaf order, so neighbours share their output rows.
//!
//! Weight traffic drops from one row pair per input per level to about one pass over the
//! weights per chunk. The batch runs in chunks of 16384 inputs (see [`CHUNK_TOKENS`]); the top
//! prefetches the next tile's inputs; and outputs larger than any cache are written with
//! streaming stores, which skip the read of each line before it is overwritten.

use super::phases::{Clock, Phase};
use super::simd::{dispatch, dot3, Simd, SimdLevel, SimdTask};
use super::tile::{
    accumulate_rows, group_logits, route_tile, stable_partition, RouteSink, RowsPtr, SharedMut,
    TileRecord, MAX_LEVELS, TOKEN_TILE,
};
use super::{child, FffWeightsView, WeightElem, Workspace};
use rayon::prelude::*;

/// Number of top levels for a tree of `levels` levels: the two halves hold about as many rows.
pub(super) fn split_level(levels: usize) -> usize {
    levels / 2
}

/// Buckets with at least this many inputs are walked grouped; smaller ones in tiles.
const GROUPED_BUCKET_MIN: usize = 12;
/// Outputs at least this large are written with streaming stores.
const STREAM_MIN_BYTES: usize = 16 << 20;
/// Inputs per chunk. Each chunk reads the bottom subtrees' rows once (nearly all of the
/// weights: 25 MB for 1x11 at width 768), and reads its inputs twice, in the top and the bottom
/// walks. Chunks small enough for the second read to come from L3 would need the weights to stay
/// there as well, but on a shared host the L3 a process gets is far smaller than the die's
/// (`tools/bandwidth.c` measures it), so every chunk would fetch the weights from DRAM again;
/// large chunks read the weights once at the price of a second DRAM read of the inputs.
const CHUNK_TOKENS: usize = 16384;
/// Smallest token count worth splitting into two parallel tasks.
const JOIN_MIN_TOKENS: usize = 64;

pub(super) fn bucketed<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
    routes: Option<RouteSink>,
) {
    let c = &w.config;
    let large = std::mem::size_of_val(y) >= STREAM_MIN_BYTES;
    let chunk = CHUNK_TOKENS.min(batch).max(1);
    for (i, (x, y)) in x
        .chunks(chunk * c.input_width)
        .zip(y.chunks_mut(chunk * c.output_width))
        .enumerate()
    {
        let batch = x.len() / c.input_width;
        let routes = routes.map(|sink| (sink, i * chunk));
        for t in 0..c.trees {
            // Every tree streams, though the next tree reads the outputs back: outputs this
            // large do not stay in cache anyway, and a cached store first reads each line.
            bucketed_tree(w, t, x, batch, y, ws, level, large, routes);
        }
    }
}

/// One tree over one chunk of inputs.
#[allow(clippy::too_many_arguments)]
fn bucketed_tree<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    t: usize,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
    stream: bool,
    routes: Option<(RouteSink, usize)>,
) {
    let c = &w.config;
    let levels = c.depth + 1;
    let split = split_level(levels);
    let bottom = levels - split;
    let buckets = 1usize << split;
    ws.ensure_bucketed(batch, split, bottom, buckets);
    let y_len = y.len();
    let y_ptr = SharedMut(y.as_mut_ptr());
    let base = t * c.nodes_per_tree();
    let clock = Clock::start();
    // 1. Top levels, contiguous tiles in parallel.
    let top_rows = &mut ws.top_rows[..batch * split];
    let top_acts = &mut ws.top_acts[..batch * split];
    let reached = &mut ws.reached[..batch];
    let tile_len = TOKEN_TILE * c.input_width;
    x.par_chunks(tile_len)
        .enumerate()
        .zip(top_rows.par_chunks_mut(TOKEN_TILE * split))
        .zip(top_acts.par_chunks_mut(TOKEN_TILE * split))
        .zip(reached.par_chunks_mut(TOKEN_TILE))
        .for_each(|((((i, tile), rows), acts), reached)| {
            let next = ((i + 1) * tile_len).min(x.len());
            let ahead = &x[next..(next + tile_len).min(x.len())];
            dispatch(
                level,
                TopTile {
                    w,
                    base,
                    split,
                    x: tile,
                    ahead,
                    rows,
                    acts,
                    reached,
                },
            )
        });
    clock.add_to(Phase::Top);
    let clock = Clock::start();
    // 2. Counting sort by the node reached at level `split` (the first node of that level
    //    is 2^split − 1).
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
    clock.add_to(Phase::Sort);
    let clock = Clock::start();
    // 3. Bottom subtrees.
    let ctx = BottomCtx {
        w,
        base,
        split,
        x,
        top_rows,
        top_acts,
        reached,
        bottom_rows: SharedMut(ws.bottom_rows.as_mut_ptr()),
        bottom_acts: SharedMut(ws.bottom_acts.as_mut_ptr()),
        records_len: batch * bottom,
        y: y_ptr,
        y_len,
        overwrite: t == 0,
        stream,
        level,
        tree: t,
        routes,
    };
    let scratch = WalkScratch {
        z: &mut ws.z[..batch],
        z_child: &mut ws.z_child[..batch],
        spare_tokens: &mut ws.scratch[..batch],
        z_spare: &mut ws.z_spare[..batch],
    };
    bucket_range(&ctx, 0..buckets, start, order, scratch);
    clock.add_to(Phase::Bottom);
}

/// Everything a bucket task reads, and the shared buffers it writes its own inputs' parts of.
struct BottomCtx<'w, 'a, E: WeightElem> {
    w: &'w FffWeightsView<'a, E>,
    base: usize,
    split: usize,
    x: &'w [f32],
    top_rows: &'w [u32],
    top_acts: &'w [f32],
    reached: &'w [u32],
    bottom_rows: SharedMut<u32>,
    bottom_acts: SharedMut<f32>,
    records_len: usize,
    y: RowsPtr,
    y_len: usize,
    overwrite: bool,
    /// Whether outputs bypass the caches: `y` is too large to stay in them anyway, and the read
    /// for ownership of each line before a cached store would add half again to the output's
    /// memory traffic.
    stream: bool,
    level: SimdLevel,
    tree: usize,
    /// Where to report each input's nodes, with the chunk's first input in the batch.
    routes: Option<(RouteSink, usize)>,
}

impl<E: WeightElem> BottomCtx<'_, '_, E> {
    /// Reports the rows input `tk` of the chunk visited, if asked: the rows its output sums.
    #[inline(always)]
    fn report(&self, tk: usize, rows: &[usize]) {
        if let Some((sink, first)) = self.routes {
            sink.record(first + tk, self.tree, rows);
        }
    }
}

/// Per-input scratch of a bucket walk (one slot per input of its range of buckets).
struct WalkScratch<'s> {
    /// Each input's logit at the node being walked.
    z: &'s mut [f32],
    /// Each input's logit at the child it goes to (paired levels).
    z_child: &'s mut [f32],
    /// Room for the right-going inputs during a partition.
    spare_tokens: &'s mut [u32],
    /// Room for their child logits.
    z_spare: &'s mut [f32],
}

impl<'s> WalkScratch<'s> {
    /// The first `at` slots and the rest.
    fn split_at(self, at: usize) -> (WalkScratch<'s>, WalkScratch<'s>) {
        let (z1, z2) = self.z.split_at_mut(at);
        let (c1, c2) = self.z_child.split_at_mut(at);
        let (t1, t2) = self.spare_tokens.split_at_mut(at);
        let (s1, s2) = self.z_spare.split_at_mut(at);
        (
            WalkScratch {
                z: z1,
                z_child: c1,
                spare_tokens: t1,
                z_spare: s1,
            },
            WalkScratch {
                z: z2,
                z_child: c2,
                spare_tokens: t2,
                z_spare: s2,
            },
        )
    }
}

/// Runs the buckets in `range`, whose inputs are `order` (bucket by bucket), in parallel
/// halves, with the matching slots of `scratch`.
fn bucket_range<E: WeightElem>(
    ctx: &BottomCtx<'_, '_, E>,
    range: std::ops::Range<usize>,
    start: &[usize],
    order: &mut [u32],
    scratch: WalkScratch<'_>,
) {
    if order.is_empty() {
        return;
    }
    if range.len() == 1 {
        if order.len() >= GROUPED_BUCKET_MIN {
            dispatch(
                ctx.level,
                GroupedBucket {
                    ctx,
                    tokens: order,
                    scratch,
                },
            );
        } else {
            dispatch(ctx.level, TiledBucket { ctx, tokens: order });
        }
        return;
    }
    let mid = (range.start + range.end) / 2;
    let cut = start[mid] - start[range.start];
    let (o1, o2) = order.split_at_mut(cut);
    let (s1, s2) = scratch.split_at(cut);
    if o1.len() + o2.len() >= JOIN_MIN_TOKENS {
        rayon::join(
            || bucket_range(ctx, range.start..mid, start, o1, s1),
            || bucket_range(ctx, mid..range.end, start, o2, s2),
        );
    } else {
        bucket_range(ctx, range.start..mid, start, o1, s1);
        bucket_range(ctx, mid..range.end, start, o2, s2);
    }
}

/// Top levels of one contiguous tile.
struct TopTile<'w, 'a, E: WeightElem> {
    w: &'w FffWeightsView<'a, E>,
    base: usize,
    split: usize,
    x: &'w [f32],
    /// The next tile's inputs, prefetched while this one runs.
    ahead: &'w [f32],
    rows: &'w mut [u32],
    acts: &'w mut [f32],
    reached: &'w mut [u32],
}

impl<E: WeightElem> SimdTask for TopTile<'_, '_, E> {
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
        let levels = 0..self.split;
        route_tile(
            s,
            self.w,
            self.base,
            &xs[..tile],
            levels,
            &mut rec,
            self.ahead,
        );
        for j in 0..tile {
            for l in 0..self.split {
                self.rows[j * self.split + l] = rec.rows[j][l] as u32;
                self.acts[j * self.split + l] = rec.acts[j][l];
            }
            self.reached[j] = rec.nodes[j] as u32;
        }
    }
}

/// Copies input `tk`'s top records (rows and activations of levels `0..split`) into `rows`,
/// `acts`.
#[inline(always)]
fn top_records<E: WeightElem>(
    ctx: &BottomCtx<'_, '_, E>,
    tk: usize,
    rows: &mut [usize; MAX_LEVELS],
    acts: &mut [f32; MAX_LEVELS],
) {
    let split = ctx.split;
    for l in 0..split {
        rows[l] = ctx.top_rows[tk * split + l] as usize;
        acts[l] = ctx.top_acts[tk * split + l];
    }
}

/// Writes the output of input `tk` from its top records and the bottom levels in `rows`, `acts`.
#[inline(always)]
fn write_output<S: Simd, E: WeightElem>(
    s: S,
    ctx: &BottomCtx<'_, '_, E>,
    tk: usize,
    rows: &mut [usize; MAX_LEVELS],
    acts: &mut [f32; MAX_LEVELS],
) {
    let c = &ctx.w.config;
    let levels = c.depth + 1;
    top_records(ctx, tk, rows, acts);
    // SAFETY: each input is in exactly one bucket and once in it.
    let y = unsafe { ctx.y.row(tk, c.output_width, ctx.y_len) };
    let (rows, acts) = (&rows[..levels], &acts[..levels]);
    ctx.report(tk, rows);
    accumulate_rows(s, ctx.w, rows, acts, y, ctx.overwrite, ctx.stream);
}

/// A small bucket: interleaved tile descent of its bottom levels.
struct TiledBucket<'c, 'w, 'a, E: WeightElem> {
    ctx: &'c BottomCtx<'w, 'a, E>,
    tokens: &'c [u32],
}

impl<E: WeightElem> SimdTask for TiledBucket<'_, '_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let ctx = self.ctx;
        let c = &ctx.w.config;
        let cin = c.input_width;
        let levels = c.depth + 1;
        let mut rec = TileRecord::new();
        for tile in self.tokens.chunks(TOKEN_TILE) {
            let mut xs: [&[f32]; TOKEN_TILE] = [&[]; TOKEN_TILE];
            for (j, &tk) in tile.iter().enumerate() {
                let tk = tk as usize;
                xs[j] = &ctx.x[tk * cin..(tk + 1) * cin];
                rec.nodes[j] = ctx.reached[tk] as usize;
            }
            route_tile(
                s,
                ctx.w,
                ctx.base,
                &xs[..tile.len()],
                ctx.split..levels,
                &mut rec,
                &[],
            );
            for (j, &tk) in tile.iter().enumerate() {
                write_output(s, ctx, tk as usize, &mut rec.rows[j], &mut rec.acts[j]);
            }
        }
        s.fence();
    }
}

/// A large bucket: depth-first walk of its subtree with the inputs on each node grouped.
struct GroupedBucket<'c, 'w, 'a, E: WeightElem> {
    ctx: &'c BottomCtx<'w, 'a, E>,
    tokens: &'c mut [u32],
    scratch: WalkScratch<'c>,
}

impl<E: WeightElem> SimdTask for GroupedBucket<'_, '_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let ctx = self.ctx;
        let c = &ctx.w.config;
        let (levels, split) = (c.depth + 1, ctx.split);
        let tokens = self.tokens;
        let clock = Clock::start();
        let root = ctx.reached[tokens[0] as usize] as usize;
        walk_grouped(
            s,
            ctx.w,
            ctx.base,
            ctx.x,
            root,
            split..levels,
            tokens,
            self.scratch,
            |tk, l, row, z| {
                let act = c.activation.apply_fast(z) * ctx.w.w_out_scale(row);
                write_record(ctx, tk, l - split, row, act)
            },
        );
        clock.add_to(Phase::Walk);
        let clock = Clock::start();
        // Outputs in leaf order, four inputs at a time: neighbours share their top rows and
        // usually their upper bottom rows, and a shared row is loaded once for all four.
        let mut quads = tokens.chunks_exact(4);
        let mut rows = [[0usize; MAX_LEVELS]; 4];
        let mut acts = [[0f32; MAX_LEVELS]; 4];
        for quad in &mut quads {
            for (j, &tk) in quad.iter().enumerate() {
                bottom_records(ctx, tk as usize, &mut rows[j], &mut acts[j]);
            }
            write_outputs4(s, ctx, quad, &mut rows, &mut acts);
        }
        for &tk in quads.remainder() {
            let tk = tk as usize;
            bottom_records(ctx, tk, &mut rows[0], &mut acts[0]);
            write_output(s, ctx, tk, &mut rows[0], &mut acts[0]);
        }
        s.fence();
        clock.add_to(Phase::Output);
    }
}

/// Walks `levels` of the tree whose root row is `base` for the inputs `tokens` (rows of `x`),
/// all on `node` at the first of those levels, depth first with the inputs on each node grouped
/// and two levels per pass where two are left. Calls `record(tk, level, row, z)` for each node
/// an input visits, and leaves `tokens` in the order of the nodes they reach at the last level,
/// left first.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn walk_grouped<S: Simd, E: WeightElem>(
    s: S,
    w: &FffWeightsView<'_, E>,
    base: usize,
    x: &[f32],
    node: usize,
    levels: std::ops::Range<usize>,
    tokens: &mut [u32],
    scratch: WalkScratch<'_>,
    mut record: impl FnMut(usize, usize, usize, f32),
) {
    let WalkScratch {
        z,
        z_child,
        spare_tokens: spare,
        z_spare,
    } = scratch;
    let end = levels.end;
    // Explicit stack: recursion would leave this function's target-feature context. A paired
    // node pushes its four grandchildren, so it holds at most 1 + 3·(levels / 2) entries.
    let mut stack = [(0usize, 0usize, 0usize, 0usize); 4 * MAX_LEVELS + 4];
    let mut top = 0;
    if !levels.is_empty() {
        stack[0] = (node, levels.start, 0, tokens.len());
        top = 1;
    }
    while top > 0 {
        top -= 1;
        let (node, l, lo, hi) = stack[top];
        if lo == hi {
            continue;
        }
        let row = base + node;
        if l + 1 < end {
            // The node and both its children in one pass over the inputs: each input's vector
            // is loaded once for three rows (one of the children's dots is wasted), so the
            // inputs stream from cache once per two levels instead of once per level.
            let (left, right) = (base + 2 * node + 1, base + 2 * node + 2);
            pair_logits(
                s,
                w,
                x,
                [row, left, right],
                &tokens[lo..hi],
                &mut z[lo..hi],
                &mut z_child[lo..hi],
            );
            for ((&tk, &zv), &zc) in tokens[lo..hi].iter().zip(&z[lo..hi]).zip(&z_child[lo..hi]) {
                record(tk as usize, l, row, zv);
                record(tk as usize, l + 1, base + child(node, zv), zc);
            }
            // z <= 0 (and NaN) to the left child, each input's child logit moving with it.
            stable_partition(&mut z_child[lo..hi], &z[lo..hi], z_spare);
            let nl = stable_partition(&mut tokens[lo..hi], &z[lo..hi], spare);
            if l + 2 == end {
                continue;
            }
            let mid = lo + nl;
            let nll = stable_partition(&mut tokens[lo..mid], &z_child[lo..mid], spare);
            let nrl = stable_partition(&mut tokens[mid..hi], &z_child[mid..hi], spare);
            let (ln, rn) = (2 * node + 1, 2 * node + 2);
            // Leftmost grandchild on top of the stack, so it is walked first.
            stack[top] = (2 * rn + 2, l + 2, mid + nrl, hi);
            stack[top + 1] = (2 * rn + 1, l + 2, mid, mid + nrl);
            stack[top + 2] = (2 * ln + 2, l + 2, lo + nll, mid);
            stack[top + 3] = (2 * ln + 1, l + 2, lo, lo + nll);
            top += 4;
            continue;
        }
        // The last level alone.
        let group = &tokens[lo..hi];
        let zg = &mut z[lo..hi];
        group_logits(
            s,
            w.w_in_row(row),
            w.w_in_scale(row),
            w.b_in[row],
            x,
            group,
            zg,
        );
        for (&tk, &zv) in group.iter().zip(zg.iter()) {
            record(tk as usize, l, row, zv);
        }
    }
}

/// Records that input `tk` visited `row` with activation `act` at bottom level `bl`.
#[inline(always)]
fn write_record<E: WeightElem>(
    ctx: &BottomCtx<'_, '_, E>,
    tk: usize,
    bl: usize,
    row: usize,
    act: f32,
) {
    let c = &ctx.w.config;
    let bottom = c.depth + 1 - ctx.split;
    let at = tk * bottom + bl;
    assert!(at < ctx.records_len);
    // SAFETY: in bounds (checked); this input's records are written by this bucket only, and
    // by one node per level.
    unsafe {
        *ctx.bottom_rows.0.add(at) = row as u32;
        *ctx.bottom_acts.0.add(at) = act;
    }
}

/// For inputs `tokens` on node `rows[0]` whose children are `rows[1]` and `rows[2]`: `z` is the
/// node's logit and `z_child` the logit of the child each input goes to.
#[inline(always)]
fn pair_logits<S: Simd, E: WeightElem>(
    s: S,
    weights: &FffWeightsView<'_, E>,
    x: &[f32],
    rows: [usize; 3],
    tokens: &[u32],
    z: &mut [f32],
    z_child: &mut [f32],
) {
    let cin = weights.config.input_width;
    let w = rows.map(|r| weights.w_in_row(r));
    let b = rows.map(|r| weights.b_in[r]);
    let k = rows.map(|r| weights.w_in_scale(r));
    let x = |tk: u32| &x[tk as usize * cin..(tk as usize + 1) * cin];
    let mut finish = |i: usize, d: [f32; 3]| {
        let zn = d[0] * k[0] + b[0];
        z[i] = zn;
        // Row 1 is the left child, row 2 the right: `child` picks 2n+1 or 2n+2.
        let r = child(0, zn);
        z_child[i] = d[r] * k[r] + b[r];
    };
    let mut i = 0;
    while i + 4 <= tokens.len() {
        let t = &tokens[i..i + 4];
        let d = dot3(s, w, [x(t[0]), x(t[1]), x(t[2]), x(t[3])]);
        for (j, d) in d.into_iter().enumerate() {
            finish(i + j, d);
        }
        i += 4;
    }
    if i + 2 <= tokens.len() {
        let d = dot3(s, w, [x(tokens[i]), x(tokens[i + 1])]);
        for (j, d) in d.into_iter().enumerate() {
            finish(i + j, d);
        }
        i += 2;
    }
    if i < tokens.len() {
        let [d] = dot3(s, w, [x(tokens[i])]);
        finish(i, d);
    }
}

/// Copies input `tk`'s bottom records (rows and activations by level) into `rows`, `acts`.
#[inline(always)]
fn bottom_records<E: WeightElem>(
    ctx: &BottomCtx<'_, '_, E>,
    tk: usize,
    rows: &mut [usize; MAX_LEVELS],
    acts: &mut [f32; MAX_LEVELS],
) {
    let c = &ctx.w.config;
    let (levels, split) = (c.depth + 1, ctx.split);
    let bottom = levels - split;
    for l in split..levels {
        rows[l] = ctx_row(ctx, tk * bottom + (l - split));
        acts[l] = ctx_act(ctx, tk * bottom + (l - split));
    }
}

/// Writes the outputs of the four inputs `quad` (bottom records in `rows`, `acts`): the rows
/// of the levels where all four sit on the same node (the top levels and the bucket's root at
/// least) are loaded once and multiplied into all four outputs; each input's other rows are
/// applied to it alone. Every output sums its rows in level order, exactly as
/// [`accumulate_rows`] would, so the result does not depend on which inputs share a quad.
#[inline(always)]
fn write_outputs4<S: Simd, E: WeightElem>(
    s: S,
    ctx: &BottomCtx<'_, '_, E>,
    quad: &[u32],
    rows: &mut [[usize; MAX_LEVELS]; 4],
    acts: &mut [[f32; MAX_LEVELS]; 4],
) {
    let c = &ctx.w.config;
    let (levels, cout) = (c.depth + 1, c.output_width);
    for (j, &tk) in quad.iter().enumerate() {
        top_records(ctx, tk as usize, &mut rows[j], &mut acts[j]);
        ctx.report(tk as usize, &rows[j][..levels]);
    }
    // Inputs on the same node at a level were on the same nodes above it: shared levels are a
    // prefix.
    let shared = (0..levels)
        .find(|&l| (1..4).any(|j| rows[j][l] != rows[0][l]))
        .unwrap_or(levels);
    debug_assert!((0..4).all(|a| (a + 1..4).all(|b| quad[a] != quad[b])));
    // SAFETY: the four inputs are distinct (`order` is a permutation of the chunk's inputs,
    // split into buckets), and each is in exactly one bucket and once in it.
    let mut ys: [&mut [f32]; 4] = unsafe {
        [
            ctx.y.row(quad[0] as usize, cout, ctx.y_len),
            ctx.y.row(quad[1] as usize, cout, ctx.y_len),
            ctx.y.row(quad[2] as usize, cout, ctx.y_len),
            ctx.y.row(quad[3] as usize, cout, ctx.y_len),
        ]
    };
    let l = S::LANES;
    let mut out = QuadOut {
        w: ctx.w,
        rows,
        acts,
        shared,
        levels,
        overwrite: ctx.overwrite,
        stream: ctx.stream,
    };
    let mut i = 0;
    // Four inputs' accumulators for 4 vectors fill 16 of AVX-512's 32 registers; AVX2 has 16.
    if l >= 16 {
        while i + 4 * l <= cout {
            out.block::<S, 4>(s, &mut ys, i);
            i += 4 * l;
        }
    }
    while i + 2 * l <= cout {
        out.block::<S, 2>(s, &mut ys, i);
        i += 2 * l;
    }
    while i + l <= cout {
        out.block::<S, 1>(s, &mut ys, i);
        i += l;
    }
    out.partial(s, &mut ys, i, cout);
}

/// The rows and activations of four inputs by level, applied column block by block.
struct QuadOut<'q, 'a, E: WeightElem> {
    w: &'q FffWeightsView<'a, E>,
    rows: &'q [[usize; MAX_LEVELS]; 4],
    acts: &'q [[f32; MAX_LEVELS]; 4],
    /// Levels `0..shared` are on the same node for all four inputs.
    shared: usize,
    levels: usize,
    overwrite: bool,
    stream: bool,
}

impl<E: WeightElem> QuadOut<'_, '_, E> {
    /// Columns `i..i + NV·LANES` of the four outputs.
    #[inline(always)]
    fn block<S: Simd, const NV: usize>(&mut self, s: S, ys: &mut [&mut [f32]; 4], i: usize) {
        let lanes = S::LANES;
        let mut acc = [[s.zero(); NV]; 4];
        if !self.overwrite {
            for (a, y) in acc.iter_mut().zip(ys.iter()) {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = s.load(&y[i + v * lanes..]);
                }
            }
        }
        for l in 0..self.shared {
            let out = &self.w.w_out_row(self.rows[0][l])[i..];
            let mut wv = [s.zero(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = s.load_w(&out[v * lanes..]);
            }
            for (a, act) in acc.iter_mut().zip(self.acts) {
                let cv = s.splat(act[l]);
                for (a, &wv) in a.iter_mut().zip(&wv) {
                    *a = s.mul_add(cv, wv, *a);
                }
            }
        }
        for ((a, rows), acts) in acc.iter_mut().zip(self.rows).zip(self.acts) {
            for l in self.shared..self.levels {
                let out = &self.w.w_out_row(rows[l])[i..];
                let cv = s.splat(acts[l]);
                for (v, a) in a.iter_mut().enumerate() {
                    *a = s.mul_add(cv, s.load_w(&out[v * lanes..]), *a);
                }
            }
        }
        for (a, y) in acc.iter().zip(ys.iter_mut()) {
            for (v, &a) in a.iter().enumerate() {
                s.store_maybe_stream(&mut y[i + v * lanes..], a, self.stream);
            }
        }
    }

    /// Columns `at..end` (fewer than a vector) of the four outputs.
    #[inline(always)]
    fn partial<S: Simd>(&mut self, s: S, ys: &mut [&mut [f32]; 4], at: usize, end: usize) {
        if at == end {
            return;
        }
        let mut acc = [s.zero(); 4];
        if !self.overwrite {
            for (a, y) in acc.iter_mut().zip(ys.iter()) {
                *a = s.load_partial(&y[at..end]);
            }
        }
        for l in 0..self.shared {
            let wv = s.load_w_partial(&self.w.w_out_row(self.rows[0][l])[at..end]);
            for (a, act) in acc.iter_mut().zip(self.acts) {
                *a = s.mul_add(s.splat(act[l]), wv, *a);
            }
        }
        for ((a, rows), acts) in acc.iter_mut().zip(self.rows).zip(self.acts) {
            for l in self.shared..self.levels {
                let wv = s.load_w_partial(&self.w.w_out_row(rows[l])[at..end]);
                *a = s.mul_add(s.splat(acts[l]), wv, *a);
            }
        }
        for (a, y) in acc.iter().zip(ys.iter_mut()) {
            s.store_partial(&mut y[at..end], *a);
        }
    }
}

/// Bottom record `at` (written by this bucket's walk above).
#[inline(always)]
fn ctx_row<E: WeightElem>(ctx: &BottomCtx<'_, '_, E>, at: usize) -> usize {
    assert!(at < ctx.records_len);
    // SAFETY: in bounds; written by this task before, read by no other task.
    unsafe { *ctx.bottom_rows.0.add(at) as usize }
}

/// Bottom activation record `at`.
#[inline(always)]
fn ctx_act<E: WeightElem>(ctx: &BottomCtx<'_, '_, E>, at: usize) -> f32 {
    assert!(at < ctx.records_len);
    // SAFETY: as in `ctx_row`.
    unsafe { *ctx.bottom_acts.0.add(at) }
}
