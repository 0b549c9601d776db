"""The O(depth) FFF kernels as PyTorch custom ops (``torch.ops.fffast.*``).

Training runs two ops with the node activation between them, so PyTorch differentiates the
activation itself:

1. ``node_logits(x [B,in], w_in [K·M,in], b_in [K·M]) -> z [B,K,D+1]`` descends the trees and
   returns the logit of every visited node;
2. ``a = act(z)`` (plain torch);
3. ``gather_sum(a, w_out_t [K·M,out], z) -> y [B,out]`` sums the visited nodes' output rows.

An input's path is a function of its ``z`` (right iff ``z > 0``; ties and NaN go left), so every
op takes ``z`` and re-derives the path: nothing else is kept between forward and backward.

The three path primitives ``gather_sum``, ``gather_dot`` and ``scatter_outer`` are closed under
differentiation (each one's gradient is made of the other two), so every op here has autograd
registered, double backward included. The gradients are exactly those of UltraFastBERT's masked
formulation: rows off an input's path get none, and ``z`` (a routing decision) gets none.

Each op reads and writes PyTorch's storage through NumPy views (no copy), releases the GIL and
runs on ``torch.get_num_threads()`` Rust threads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _native

__all__ = ["node_logits", "gather_sum", "gather_dot", "scatter_outer", "infer", "nodes_per_tree"]


def nodes_per_tree(depth: int) -> int:
    """``M = 2^(depth+1) - 1``: the nodes of one complete tree of depth ``depth``."""
    return (1 << (depth + 1)) - 1


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _view(t: Tensor):
    """A NumPy view of ``t``'s storage (made contiguous first if it is not)."""
    return t.detach().contiguous().numpy()


# --- node_logits -------------------------------------------------------------------------


@torch.library.custom_op("fffast::node_logits", mutates_args=())
def node_logits(x: Tensor, w_in: Tensor, b_in: Tensor, depth: int, trees: int) -> Tensor:
    """Logits of the visited nodes, ``z [B, K, D+1]``, of ``x [B, in]``."""
    z = x.new_empty((x.shape[0], trees, depth + 1))
    _native.node_logits(
        _view(x), _view(w_in), _view(b_in), z.numpy(), x.shape[1], depth, trees, _threads()
    )
    return z


@node_logits.register_fake
def _(x, w_in, b_in, depth, trees):
    return x.new_empty((x.shape[0], trees, depth + 1))


def _node_logits_context(ctx, inputs, output):
    x, w_in, _b_in, depth, trees = inputs
    ctx.save_for_backward(x, w_in, output)
    ctx.depth, ctx.trees = depth, trees


def _node_logits_backward(ctx, grad_z):
    x, w_in, z = ctx.saved_tensors
    d, k = ctx.depth, ctx.trees
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = gather_sum(grad_z, w_in, z, d, k) if need_x else None
    grad_w = scatter_outer(grad_z, x, z, d, k) if need_w else None
    grad_b = None
    if need_b:
        ones = grad_z.new_ones((grad_z.shape[0], 1))
        grad_b = scatter_outer(grad_z, ones, z, d, k).reshape(-1)
    return grad_x, grad_w, grad_b, None, None


node_logits.register_autograd(_node_logits_backward, setup_context=_node_logits_context)


# --- gather_sum: out[b] = Σ_i coef[b,i] · w[row(b,i)] ---------------------------------------


@torch.library.custom_op("fffast::gather_sum", mutates_args=())
def gather_sum(coef: Tensor, w: Tensor, z: Tensor, depth: int, trees: int) -> Tensor:
    """``out[b] = Σ_i coef[b,i] · w[row(b,i)]`` over the nodes input ``b`` visits: ``[B, C]``."""
    out = coef.new_empty((z.shape[0], w.shape[1]))
    _native.gather_sum(_view(coef), _view(w), _view(z), out.numpy(), depth, trees, _threads())
    return out


@gather_sum.register_fake
def _(coef, w, z, depth, trees):
    return coef.new_empty((z.shape[0], w.shape[1]))


def _save_three(ctx, inputs, output):
    a, b, z, depth, trees = inputs
    ctx.save_for_backward(a, b, z)
    ctx.depth, ctx.trees = depth, trees


def _gather_sum_backward(ctx, grad):
    coef, w, z = ctx.saved_tensors
    d, k = ctx.depth, ctx.trees
    grad_coef = gather_dot(grad, w, z, d, k) if ctx.needs_input_grad[0] else None
    grad_w = scatter_outer(coef, grad, z, d, k) if ctx.needs_input_grad[1] else None
    return grad_coef, grad_w, None, None, None


gather_sum.register_autograd(_gather_sum_backward, setup_context=_save_three)


# --- gather_dot: out[b,i] = v[b] · w[row(b,i)] ----------------------------------------------


@torch.library.custom_op("fffast::gather_dot", mutates_args=())
def gather_dot(v: Tensor, w: Tensor, z: Tensor, depth: int, trees: int) -> Tensor:
    """``out[b,i] = v[b] · w[row(b,i)]`` for each node input ``b`` visits: ``[B, K, D+1]``."""
    out = v.new_empty(z.shape)
    _native.gather_dot(_view(v), _view(w), _view(z), out.numpy(), depth, trees, _threads())
    return out


@gather_dot.register_fake
def _(v, w, z, depth, trees):
    return v.new_empty(z.shape)


def _gather_dot_backward(ctx, grad):
    v, w, z = ctx.saved_tensors
    d, k = ctx.depth, ctx.trees
    grad_v = gather_sum(grad, w, z, d, k) if ctx.needs_input_grad[0] else None
    grad_w = scatter_outer(grad, v, z, d, k) if ctx.needs_input_grad[1] else None
    return grad_v, grad_w, None, None, None


gather_dot.register_autograd(_gather_dot_backward, setup_context=_save_three)


# --- scatter_outer: out[row] = Σ coef[b,i] · rows[b] over the visits of row -------------------


@torch.library.custom_op("fffast::scatter_outer", mutates_args=())
def scatter_outer(coef: Tensor, rows: Tensor, z: Tensor, depth: int, trees: int) -> Tensor:
    """``out[row] = Σ coef[b,i] · rows[b]`` over the visits of each node row: ``[K·M, C]``."""
    out = rows.new_empty((trees * nodes_per_tree(depth), rows.shape[1]))
    _native.scatter_outer(_view(coef), _view(rows), _view(z), out.numpy(), depth, trees, _threads())
    return out


@scatter_outer.register_fake
def _(coef, rows, z, depth, trees):
    return rows.new_empty((trees * nodes_per_tree(depth), rows.shape[1]))


def _scatter_outer_backward(ctx, grad):
    coef, rows, z = ctx.saved_tensors
    d, k = ctx.depth, ctx.trees
    grad_coef = gather_dot(rows, grad, z, d, k) if ctx.needs_input_grad[0] else None
    grad_rows = gather_sum(coef, grad, z, d, k) if ctx.needs_input_grad[1] else None
    return grad_coef, grad_rows, None, None, None


scatter_outer.register_autograd(_scatter_outer_backward, setup_context=_save_three)


# --- inference -------------------------------------------------------------------------------


@torch.library.custom_op("fffast::infer", mutates_args=())
def infer(
    x: Tensor, w_in: Tensor, b_in: Tensor, w_out_t: Tensor, depth: int, trees: int, activation: str
) -> Tensor:
    """The whole layer by the fast inference kernel, ``y [B, out]`` (no autograd)."""
    y = x.new_empty((x.shape[0], w_out_t.shape[1]))
    infer_into(x, w_in, b_in, w_out_t, y, depth, trees, activation)
    return y


@infer.register_fake
def _(x, w_in, b_in, w_out_t, depth, trees, activation):
    return x.new_empty((x.shape[0], w_out_t.shape[1]))


def infer_into(
    x: Tensor,
    w_in: Tensor,
    b_in: Tensor,
    w_out_t: Tensor,
    y: Tensor,
    depth: int,
    trees: int,
    activation: str,
) -> None:
    """Writes the layer's output for ``x`` into ``y`` (the op's body, callable without the
    dispatcher: at batch 1 its overhead is most of the time)."""
    _native.infer(
        _view(x),
        _view(w_in),
        _view(b_in),
        _view(w_out_t),
        y.numpy(),
        x.shape[1],
        w_out_t.shape[1],
        depth,
        trees,
        activation,
        _threads(),
    )
