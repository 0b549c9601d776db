#!/usr/bin/env python3
"""Reference forward passes of the ORIGINAL Fast Feedforward layer, in numpy, and the
generator of the fixtures under ``crates/fastfeedforward/tests/fixtures/original_fff``.

What this is
------------
An independent re-implementation, in plain numpy and float64, of the formulas of
class ``FFF`` in the Python package ``fastfeedforward`` (Belcak & Wattenhofer,
"Fast Feedforward Networks", 2023), file ``fastfeedforward/fff.py`` of
``pbelcak/fastfeedforward`` at commit 283c9f4083610b6b5c1c189dd2262cc5f6b146a6.
It is written from reading that file; no code is copied from it.  No torch.

Parameters (the package's names and shapes; D = depth, N = 2^D - 1 nodes,
L = 2^D leaves, l = leaf width)::

    node_weights [N, in]   node_biases [N, 1]
    w1s [L, in, l]   b1s [L, l]   w2s [L, l, out]   b2s [L, out]

Initialisation as the package: uniform(+-1/sqrt(in)) for node_weights, node_biases,
w1s and b1s; uniform(+-1/sqrt(l)) for w2s and b2s (numpy default_rng(seed), float32).
Inputs x ~ normal(0, 1), float32.  Leaf activation: ReLU (the package default).

Forward passes computed (float64 from the float32 parameters and inputs):

* ``training_forward`` (soft): for each level d the nodes platform = 2^d - 1 ..
  next_platform = 2^(d+1) - 1 give p = sigmoid(x.w^T + b) [B, 2^d]; the mixture
  [B, L] (initially ones) is viewed as [B, 2*2^d, L/(2*2^d)] and multiplied by the
  interleaved modifier (1-p_0, p_0, 1-p_1, p_1, ...) [B, 2*2^d, 1], i.e. left
  child = 1 - p, right child = p, and leaf index bits are the path from the root,
  most significant bit = root decision.  Output =
  sum_leaf mixture[b, leaf] * (relu(x.w1s[leaf] + b1s[leaf]).w2s[leaf] + b2s[leaf]).
  Entropies: ``compute_entropy_safe`` (p and 1-p clamped to [1e-6, 1-1e-6],
  -p ln p - (1-p) ln(1-p)) per input and node, then the mean over the batch [N].
  No region leak and no dropout (both random; off in the fixture).
* ``training_forward(use_hard_decisions=True)``: the same, with p replaced by
  round(p) (torch.round: half to even, 0.5 -> 0, i.e. a tie goes LEFT) after the
  entropies have been computed; the entropies are identical to the soft ones.
* ``eval_forward`` (hard descent): from node 0, at each level choice = (x.w + b >= 0)
  (a tie goes RIGHT, unlike UltraFastBERT's ``> 0``), next = (n - platform)*2 +
  choice + next_platform; leaf = n - (2^D - 1); output =
  relu(x.w1s[leaf] + b1s[leaf]).w2s[leaf] + b2s[leaf] (what ``eval_forward_sparse``
  and ``eval_forward_greedy`` are meant to compute).  ``eval_forward_naive`` omits
  ``+ b2s[leaf]``; that variant is recorded as well.

The script checks itself (to 1e-12): the soft mixture built with the package's
view/interleave layout against per-leaf path products computed from the leaf's
binary index (walking nodes with n -> 2n+1+bit), the vectorised leaf outputs against
a per-input loop, the eval leaf indices (platform formula) against argmax of the
hard mixture, hard training output against eval output (no logit is within
ROUTE_MARGIN of 0, so no p is exactly 0.5 and no float32 summation order can flip
a route), and the files against a reload.

Where the package at that commit does not do what it means to (see also index.json)
-----------------------------------------------------------------------------------
* ``eval_forward_naive`` leaves out ``b2s``; ``sparse``/``greedy`` add it.
* ``eval_forward_sparse`` (the default of ``eval_forward``, hence of ``forward`` in
  eval mode) builds its COO row indices with ``arange(B).repeat(in)`` (tiled:
  0..B-1, 0..B-1, ...) while the column indices and values are laid out row-major
  per input (``y.flatten()``, ``x.flatten()``); value x[b, j] lands in row
  (b*in + j) mod B.  For B > 1 the rows are scrambled (same at the second layer with
  the leaf width), so its output is NOT the hard-descent output unless B == 1.
  ``eval_sparse_as_written`` emulates this literally (duplicates summed, as torch's
  sparse mm does) for the record; it is not a target for the Rust code.
* ``eval_forward_greedy`` calls ``.usqueeze`` (typo) and raises AttributeError.
* For depth 0 every ``eval_forward_*`` raises (``next_platform`` is only bound inside
  the depth loop); ``training_forward`` works (mixture = ones, one leaf).  The
  fixture's eval values for depth 0 use leaf 0, the natural extension.

Rerunning it
------------
::

    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install numpy safetensors
    /tmp/fixture-venv/bin/python3 tools/original_fff_reference.py \\
        --out crates/fastfeedforward/tests/fixtures/original_fff

(``python3 tools/original_fff_reference.py --out ...`` with any Python that has
numpy and safetensors.)  Output is deterministic for a given numpy version
(written with numpy 2.4.6, safetensors 0.8.0).

Files: ``index.json`` and one ``case_<name>.safetensors`` per case holding, all
float32 except ``leaves`` (int64): node_weights, node_biases, w1s, b1s, w2s, b2s,
x [B, in], soft_output [B, out], soft_mixture [B, L], entropies [N] (a [0] tensor
when N = 0), hard_train_output [B, out], eval_output [B, out],
eval_naive_without_b2 [B, out], leaves [B], eval_sparse_as_written [B, out].
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

PACKAGE_REPO = "pbelcak/fastfeedforward"
PACKAGE_FILE = "fastfeedforward/fff.py"
PACKAGE_COMMIT = "283c9f4083610b6b5c1c189dd2262cc5f6b146a6"

ENTROPY_EPSILON = 1e-6  # compute_entropy_safe
ROUTE_MARGIN = 1e-3  # every node logit of every input has |z| >= this
TOLERANCE = {"abs": 1e-5, "rel": 1e-5}

# name, depth, input width, leaf width, output width, batch, seed, min distinct leaves
CASES = [
    ("a", 0, 5, 3, 4, 6, 20230, 1),
    ("b", 1, 5, 2, 3, 7, 20231, 2),
    ("c", 3, 7, 4, 5, 9, 20233, 4),
    ("d", 4, 16, 8, 10, 33, 20234, 8),
]


# --------------------------------------------------------------------------------------
# Parameters and inputs
# --------------------------------------------------------------------------------------

def init_params(rng, depth, width_in, leaf, width_out):
    n_nodes, n_leaves = 2 ** depth - 1, 2 ** depth
    f1 = 1.0 / np.sqrt(width_in)
    f2 = 1.0 / np.sqrt(leaf)

    def u(shape, f):
        return rng.uniform(-f, f, size=shape).astype(np.float32)

    return {
        "node_weights": u((n_nodes, width_in), f1),
        "node_biases": u((n_nodes, 1), f1),
        "w1s": u((n_leaves, width_in, leaf), f1),
        "b1s": u((n_leaves, leaf), f1),
        "w2s": u((n_leaves, leaf, width_out), f2),
        "b2s": u((n_leaves, width_out), f2),
    }


def node_logits(P, x):
    """z[b, n] = x[b] . node_weights[n] + node_biases[n], float64, [B, N]."""
    w = P["node_weights"].astype(np.float64)
    b = P["node_biases"].astype(np.float64)
    return x.astype(np.float64) @ w.T + b.T


def draw_inputs(rng, P, depth, width_in, batch, min_leaves):
    """x ~ N(0,1) float32; rows with any |z| < ROUTE_MARGIN are redrawn, and the whole
    batch is redrawn until it reaches at least ``min_leaves`` distinct leaves."""
    for _ in range(1000):
        x = rng.standard_normal((batch, width_in)).astype(np.float32)
        for _ in range(1000):
            z = node_logits(P, x)
            bad = (np.abs(z) < ROUTE_MARGIN).any(axis=1) if z.shape[1] else np.zeros(batch, bool)
            if not bad.any():
                break
            x[bad] = rng.standard_normal((int(bad.sum()), width_in)).astype(np.float32)
        else:
            raise RuntimeError("could not satisfy the route margin")
        if len(set(eval_leaves(P, x, depth).tolist())) >= min_leaves:
            return x
    raise RuntimeError("could not reach enough distinct leaves")


# --------------------------------------------------------------------------------------
# The package's formulas
# --------------------------------------------------------------------------------------

def sigmoid(z):
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def entropy_safe(p, minus_p):
    p = np.clip(p, ENTROPY_EPSILON, 1 - ENTROPY_EPSILON)
    minus_p = np.clip(minus_p, ENTROPY_EPSILON, 1 - ENTROPY_EPSILON)
    return -p * np.log(p) - minus_p * np.log(minus_p)


def all_leaf_outputs(P, x):
    """[B, L, out]: relu(x.w1s[l] + b1s[l]).w2s[l] + b2s[l] for every leaf l."""
    x = x.astype(np.float64)
    h = np.einsum("bi,lih->blh", x, P["w1s"].astype(np.float64)) + P["b1s"].astype(np.float64)[None]
    h = np.maximum(h, 0.0)
    y = np.einsum("blh,lho->blo", h, P["w2s"].astype(np.float64))
    return y + P["b2s"].astype(np.float64)[None]


def training_forward(P, x, depth, hard):
    """Returns (output [B, out], node entropies averaged over the batch [N], mixture [B, L])."""
    batch = x.shape[0]
    n_nodes, n_leaves = 2 ** depth - 1, 2 ** depth
    xd = x.astype(np.float64)
    mixture = np.ones((batch, n_leaves))
    entropies = np.zeros((batch, n_nodes))
    for d in range(depth):
        platform, next_platform = 2 ** d - 1, 2 ** (d + 1) - 1
        level = 2 ** d
        w = P["node_weights"][platform:next_platform].astype(np.float64)
        b = P["node_biases"][platform:next_platform].astype(np.float64)
        p = sigmoid(xd @ w.T + b.T)  # [B, level]
        not_p = 1 - p
        entropies[:, platform:next_platform] = entropy_safe(p, not_p)
        if hard:
            p = np.round(p)  # half to even, like torch.round
            not_p = 1 - p
        modifier = np.stack((not_p, p), axis=-1).reshape(batch, 2 * level, 1)
        mixture = (mixture.reshape(batch, 2 * level, n_leaves // (2 * level)) * modifier)
        mixture = mixture.reshape(batch, n_leaves)
    out = (all_leaf_outputs(P, x) * mixture[:, :, None]).sum(axis=1)
    return out, entropies.mean(axis=0), mixture


def eval_leaves(P, x, depth):
    """Hard descent with the package's platform formula; ties (z == 0) go right."""
    batch = x.shape[0]
    w = P["node_weights"].astype(np.float64)
    b = P["node_biases"].astype(np.float64)[:, 0]
    xd = x.astype(np.float64)
    nodes = np.zeros(batch, dtype=np.int64)
    for d in range(depth):
        platform, next_platform = 2 ** d - 1, 2 ** (d + 1) - 1
        z = np.einsum("bi,bi->b", xd, w[nodes]) + b[nodes]
        choice = (z >= 0).astype(np.int64)
        nodes = (nodes - platform) * 2 + choice + next_platform
    return nodes - (2 ** depth - 1)


def eval_forward(P, x, depth, with_b2=True):
    leaves = eval_leaves(P, x, depth)
    xd = x.astype(np.float64)
    h = np.einsum("bi,bih->bh", xd, P["w1s"][leaves].astype(np.float64)) + P["b1s"][leaves]
    h = np.maximum(h, 0.0)
    y = np.einsum("bh,bho->bo", h, P["w2s"][leaves].astype(np.float64))
    if with_b2:
        y = y + P["b2s"][leaves]
    return y, leaves


def eval_sparse_as_written(P, x, depth):
    """Literal emulation of eval_forward_sparse at PACKAGE_COMMIT, including its
    tiled ``arange(B).repeat(width)`` row indices (correct only for B == 1)."""
    batch, width_in = x.shape
    n_leaves, _, leaf = P["w1s"].shape
    leaves = eval_leaves(P, x, depth)
    xd = x.astype(np.float64)

    def sparse_rows_mm(values, width, dense):
        rows = np.tile(np.arange(batch), width)
        cols = (leaves[:, None] * width + np.arange(width)[None, :]).reshape(-1)
        m = np.zeros((batch, n_leaves * width))
        np.add.at(m, (rows, cols), values.reshape(-1))
        return m @ dense

    logits = sparse_rows_mm(xd, width_in, P["w1s"].astype(np.float64).reshape(n_leaves * width_in, leaf))
    act = np.maximum(logits + P["b1s"][leaves], 0.0)
    out = sparse_rows_mm(act, leaf, P["w2s"].astype(np.float64).reshape(n_leaves * leaf, -1))
    return out + P["b2s"][leaves]


# --------------------------------------------------------------------------------------
# Independent checks
# --------------------------------------------------------------------------------------

def path_mixture_by_leaf_index(P, x, depth):
    """mixture[b, leaf] = prod over the root-to-leaf path of (p if bit else 1 - p), the
    bits of ``leaf`` read from the most significant one (root) down, nodes n -> 2n+1+bit."""
    batch = x.shape[0]
    z = node_logits(P, x)
    mix = np.ones((batch, 2 ** depth))
    for bi in range(batch):
        for leaf in range(2 ** depth):
            node, prob = 0, 1.0
            for d in range(depth):
                bit = (leaf >> (depth - 1 - d)) & 1
                p = 1.0 / (1.0 + np.exp(-z[bi, node]))
                prob *= p if bit else 1.0 - p
                node = 2 * node + 1 + bit
            mix[bi, leaf] = prob
    return mix


def leaf_output_loop(P, x, bi, leaf):
    xv = x[bi].astype(np.float64)
    h = [max(0.0, float(sum(xv[i] * float(P["w1s"][leaf, i, k]) for i in range(x.shape[1]))
                        + float(P["b1s"][leaf, k]))) for k in range(P["w1s"].shape[2])]
    return np.array([sum(h[k] * float(P["w2s"][leaf, k, o]) for k in range(len(h)))
                     + float(P["b2s"][leaf, o]) for o in range(P["w2s"].shape[2])])


def check_case(P, x, depth, r):
    tol = 1e-12
    mix_ref = path_mixture_by_leaf_index(P, x, depth)
    assert np.abs(mix_ref - r["soft_mixture"]).max() <= tol, "mixture layout"
    leaf_out = np.stack([np.stack([leaf_output_loop(P, x, bi, l) for l in range(2 ** depth)])
                         for bi in range(x.shape[0])])
    assert np.abs(leaf_out - all_leaf_outputs(P, x)).max() <= tol, "leaf outputs"
    soft_ref = (leaf_out * mix_ref[:, :, None]).sum(axis=1)
    assert np.abs(soft_ref - r["soft_output"]).max() <= tol, "soft output"
    # no p exactly 0.5 anywhere; hard training == eval, leaves consistent
    z = node_logits(P, x)
    assert z.size == 0 or np.abs(z).min() >= ROUTE_MARGIN
    hard_mix = r["hard_mixture"]
    assert np.all((hard_mix == 0) | (hard_mix == 1)) and np.all(hard_mix.sum(axis=1) == 1)
    assert np.array_equal(hard_mix.argmax(axis=1), r["leaves"]), "leaf index order"
    assert np.abs(r["hard_train_output"] - r["eval_output"]).max() <= tol, "hard train vs eval"
    b2 = P["b2s"][r["leaves"]].astype(np.float64)
    assert np.abs(r["eval_output"] - b2 - r["eval_naive_without_b2"]).max() <= tol
    # entropies: the hard-decision pass computes them before rounding, same as soft
    assert np.array_equal(r["entropies"], r["hard_entropies"])
    # the sparse emulation is right one input at a time
    for bi in range(x.shape[0]):
        one = eval_sparse_as_written(P, x[bi:bi + 1], depth)
        assert np.abs(one[0] - r["eval_output"][bi]).max() <= tol, "sparse emulation, B=1"


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------

def build_case(name, depth, width_in, leaf, width_out, batch, seed, min_leaves):
    rng = np.random.default_rng(seed)
    P = init_params(rng, depth, width_in, leaf, width_out)
    x = draw_inputs(rng, P, depth, width_in, batch, min_leaves)

    soft_out, ent, soft_mix = training_forward(P, x, depth, hard=False)
    hard_out, hard_ent, hard_mix = training_forward(P, x, depth, hard=True)
    ev, leaves = eval_forward(P, x, depth, with_b2=True)
    ev_naive, _ = eval_forward(P, x, depth, with_b2=False)
    sparse = eval_sparse_as_written(P, x, depth)
    r = {
        "soft_output": soft_out, "soft_mixture": soft_mix, "entropies": ent,
        "hard_entropies": hard_ent, "hard_mixture": hard_mix, "hard_train_output": hard_out,
        "eval_output": ev, "eval_naive_without_b2": ev_naive, "leaves": leaves,
    }
    check_case(P, x, depth, r)

    tensors = dict(P)
    tensors["x"] = x
    for k in ("soft_output", "soft_mixture", "entropies", "hard_train_output",
              "eval_output", "eval_naive_without_b2"):
        tensors[k] = r[k].astype(np.float32)
    tensors["leaves"] = leaves.astype(np.int64)
    tensors["eval_sparse_as_written"] = sparse.astype(np.float32)
    z = node_logits(P, x)
    info = {
        "name": name, "file": f"case_{name}.safetensors", "depth": depth,
        "input_width": width_in, "leaf_width": leaf, "output_width": width_out,
        "batch": batch, "n_nodes": 2 ** depth - 1, "n_leaves": 2 ** depth, "seed": seed,
        "min_abs_node_logit": float(np.abs(z).min()) if z.size else None,
        "distinct_leaves": sorted(set(leaves.tolist())),
        "leaves": leaves.tolist(),
        "max_abs": {k: float(np.abs(tensors[k]).max()) if tensors[k].size else 0.0
                    for k in ("soft_output", "eval_output", "hard_train_output")},
        "sparse_as_written_max_abs_diff_from_eval": float(np.abs(sparse - ev).max()),
    }
    return tensors, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    infos = []
    for case in CASES:
        tensors, info = build_case(*case)
        path = os.path.join(args.out, info["file"])
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        # one metadata key only: safetensors writes the metadata map in hash order
        save_file(tensors, path, metadata={"source": f"{PACKAGE_REPO}@{PACKAGE_COMMIT}:{PACKAGE_FILE}"})
        back = load_file(path)
        assert set(back) == set(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
        infos.append(info)
        print(f"case {info['name']}: depth {info['depth']} in {info['input_width']} "
              f"leaf {info['leaf_width']} out {info['output_width']} batch {info['batch']} "
              f"min|z| {info['min_abs_node_logit']} leaves {info['distinct_leaves']} "
              f"sparse-bug diff {info['sparse_as_written_max_abs_diff_from_eval']:.3g}")

    index = {
        "description": "Reference outputs of the original Fast Feedforward layer "
                       "(fastfeedforward.FFF), computed in float64 by "
                       "tools/original_fff_reference.py from float32 parameters/inputs, stored float32.",
        "package": PACKAGE_REPO, "file": PACKAGE_FILE, "commit": PACKAGE_COMMIT,
        "activation": "relu",
        "tolerance": dict(TOLERANCE, note="|got - want| <= abs + rel * |want|; magnitudes are ~1"),
        "route_margin": ROUTE_MARGIN,
        "dtypes": "all float32 except 'leaves' (int64); entropies is a [0] tensor when n_nodes = 0; "
                  "node_weights [0, in] and node_biases [0, 1] when depth = 0",
        "tensors": {
            "node_weights": "[N, in]", "node_biases": "[N, 1]", "w1s": "[L, in, leaf]",
            "b1s": "[L, leaf]", "w2s": "[L, leaf, out]", "b2s": "[L, out]", "x": "[B, in]",
            "soft_output": "[B, out] training_forward, soft decisions, no dropout/region leak",
            "soft_mixture": "[B, L] final mixture of the soft pass",
            "entropies": "[N] compute_entropy_safe (clamp 1e-6), mean over the batch "
                         "(same for the hard pass: computed before rounding)",
            "hard_train_output": "[B, out] training_forward(use_hard_decisions=True)",
            "eval_output": "[B, out] hard descent, relu(x.w1s[l]+b1s[l]).w2s[l] + b2s[l]",
            "eval_naive_without_b2": "[B, out] eval_forward_naive: same without b2s[l]",
            "leaves": "[B] int64 leaf reached by hard descent",
            "eval_sparse_as_written": "[B, out] NOT A TARGET: literal emulation of the package's "
                                      "eval_forward_sparse, whose COO row indices are scrambled for B > 1",
        },
        "leaf_index_bits": "leaf = sum_d choice_d * 2^(D-1-d): the root decision is the most "
                           "significant bit; choice 1 = right child = factor p in the soft mixture; "
                           "node ids are heap order (children of n are 2n+1, 2n+2)",
        "tie_rule": "eval_forward: right iff x.w + b >= 0 (a tie goes right, unlike UltraFastBERT's > 0); "
                    "training_forward with hard decisions: torch.round(sigmoid(z)), half to even, so "
                    "p == 0.5 goes LEFT. Every |z| in the fixtures is >= route_margin, so neither matters here.",
        "b2_note": "eval_forward_naive omits b2s; eval_forward_sparse/greedy and training_forward add it. "
                   "eval_output includes b2s, eval_naive_without_b2 does not.",
        "package_quirks": [
            "eval_forward_sparse (the default eval path) pairs arange(B).repeat(width) (tiled) row "
            "indices with row-major column indices/values, so for B > 1 its rows are scrambled; "
            "correct only for B == 1 (see eval_sparse_as_written).",
            "eval_forward_greedy calls .usqueeze (typo): AttributeError.",
            "depth 0: every eval_forward_* raises (next_platform unbound); training_forward works. "
            "Fixture eval values for depth 0 use leaf 0.",
        ],
        "cases": infos,
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
