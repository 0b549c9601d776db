//! The grouped walk: a depth-first walk of each tree that carries the set of inputs sitting on
//! the current node. Each node's input row is loaded once per group and reused across 4 inputs
//! per pass; a stable partition splits the group into left and right, and the two subtrees run
//! in parallel. Kept as the "level-2" formulation for comparison: on machines where input and
//! output rows do not fit in L1, moving them once per level costs more than the shared weight
//! loads save, and the bucketed walk is faster.

use crate::kernels::simd::{axpy, dispatch, Simd, SimdLevel, SimdTask};
use crate::kernels::tile::{group_logits, stable_partition, RouteSink, RowsPtr, SharedMut};
use crate::kernels::{FffWeightsView, WeightElem, Workspace};
use rayon::prelude::*;

/// Inputs per parallel chunk when one node's group is split across threads.
const GROUP_CHUNK: usize = 128;
/// Smallest group whose two subtrees are worth running as separate tasks.
const JOIN_MIN: usize = 64;

struct GroupCtx<'w, 'a, E: WeightElem> {
    w: &'w FffWeightsView<'a, E>,
    x: &'w [f32],
    y: RowsPtr,
    y_len: usize,
    level: SimdLevel,
    routes: Option<RouteSink>,
}

pub(in crate::kernels) fn grouped<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    ws: &mut Workspace,
    level: SimdLevel,
    routes: Option<RouteSink>,
) {
    ws.ensure_grouped(batch);
    y.par_chunks_mut(GROUP_CHUNK * w.config.output_width)
        .for_each(|c| c.fill(0.0));
    let ctx = GroupCtx {
        w,
        x,
        y: SharedMut(y.as_mut_ptr()),
        y_len: y.len(),
        level,
        routes,
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

fn visit<E: WeightElem>(
    ctx: &GroupCtx<'_, '_, E>,
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
            .for_each(|(tokens, z)| node_group(ctx, row, level, tokens, z));
    } else {
        node_group(ctx, row, level, tokens, z);
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

fn node_group<E: WeightElem>(
    ctx: &GroupCtx<'_, '_, E>,
    row: usize,
    level: usize,
    tokens: &[u32],
    z: &mut [f32],
) {
    if let Some(sink) = ctx.routes {
        let tree = row / ctx.w.config.nodes_per_tree();
        for &tk in tokens {
            sink.record_level(tk as usize, tree, level, row);
        }
    }
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
struct NodeGroup<'c, 'w, 'a, E: WeightElem> {
    ctx: &'c GroupCtx<'w, 'a, E>,
    row: usize,
    tokens: &'c [u32],
    z: &'c mut [f32],
}

impl<E: WeightElem> SimdTask for NodeGroup<'_, '_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let ctx = self.ctx;
        let c = &ctx.w.config;
        let w_in = ctx.w.w_in_row(self.row);
        let w_out = ctx.w.w_out_row(self.row);
        let (scale_in, scale_out) = (ctx.w.w_in_scale(self.row), ctx.w.w_out_scale(self.row));
        let bias = ctx.w.b_in[self.row];
        group_logits(s, w_in, scale_in, bias, ctx.x, self.tokens, self.z);
        for (&tk, &z) in self.tokens.iter().zip(self.z.iter()) {
            add_output(s, ctx, tk, c.activation.apply_fast(z) * scale_out, w_out);
        }
    }
}

/// `y[tk] += a · w_out`. A plain function, not a closure: closures are not inlined into the
/// target-feature context, and the SIMD intrinsics inside them would become calls.
#[inline(always)]
fn add_output<S: Simd, E: WeightElem>(
    s: S,
    ctx: &GroupCtx<'_, '_, E>,
    tk: u32,
    a: f32,
    w_out: &[E],
) {
    let cout = w_out.len();
    let start = tk as usize * cout;
    assert!(start + cout <= ctx.y_len);
    // SAFETY: in bounds (checked above); this input's row is written by this task only.
    let y = unsafe { std::slice::from_raw_parts_mut(ctx.y.0.add(start), cout) };
    axpy(s, a, w_out, y);
}
