"""``fffast.FFF`` held to UltraFastBERT's masked formulation, written out here in plain torch."""

import math

import pytest
import torch
import torch.nn.functional as F

import fffast
from fffast import FFF, ops

ACTS = {"gelu": F.gelu, "identity": lambda z: z, "relu": F.relu, "tanh": torch.tanh}


def masked_reference(x, w_in, b_in, w_out, depth, trees, act):
    """UltraFastBERT's training forward: every logit, a path mask, the output matmul."""
    m = 2 ** (depth + 1) - 1
    batch = x.shape[0]
    logits = x @ w_in.t() + b_in
    go_right = (logits > 0).view(batch, trees, m)
    mask = torch.zeros(batch, trees, m)
    node = torch.zeros(batch, trees, dtype=torch.long)
    for level in range(depth + 1):
        mask.scatter_(2, node.unsqueeze(-1), 1.0)
        if level < depth:
            right = torch.gather(go_right, 2, node.unsqueeze(-1)).squeeze(-1).long()
            node = 2 * node + 1 + right
    a = ACTS[act](logits).view(batch, trees, m) * mask
    return a.flatten(1) @ w_out.t()


def close(a, b, tol=1e-5):
    """Agreement within ``tol`` relative to the larger magnitude (at least 1)."""
    scale = max(1.0, b.abs().max().item() if b.numel() else 1.0)
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} x {scale:.3g}"


def run_both(layer, x, act):
    """Forward and the four gradients, by ``layer`` and by the masked reference."""
    params = [layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight]
    x = x.clone().requires_grad_(True)
    y = layer(x)
    g = torch.randn_like(y)
    ours = [y, *torch.autograd.grad(y, [x, *params], g, allow_unused=True)]
    xr = x.detach().clone().requires_grad_(True)
    pr = [p.detach().clone().requires_grad_(True) for p in params]
    lead = xr.shape[:-1]
    yr = masked_reference(xr.reshape(-1, layer.input_width), *pr, layer.depth,
                          layer.parallel_size, act).reshape(*lead, layer.output_width)
    theirs = [yr, *torch.autograd.grad(yr, [xr, *pr], g, allow_unused=True)]
    return ours, theirs


SHAPES = [
    # (input_width, output_width, depth, trees, batch)
    (1, 1, 0, 1, 1),
    (13, 7, 0, 3, 5),
    (13, 7, 3, 2, 1),
    (9, 17, 5, 1, 33),
    (31, 5, 2, 4, 64),
    (16, 24, 7, 2, 130),
    (100, 3, 4, 1, 7),
]


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_match_masked(shape, act):
    in_w, out_w, depth, trees, batch = shape
    torch.manual_seed(SHAPES.index(shape) * 10 + list(ACTS).index(act))
    layer = FFF(in_w, out_w, depth, trees, activation=act, init="normal(0.5)", seed=3)
    x = torch.randn(batch, in_w)
    ours, theirs = run_both(layer, x, act)
    for name, a, b in zip(["y", "grad x", "grad w_in", "grad b_in", "grad w_out"], ours, theirs):
        assert a.shape == b.shape, name
        close(a, b)


def test_inference_kernel_matches_masked_and_training_path():
    torch.manual_seed(1)
    for in_w, out_w, depth, trees, batch in SHAPES + [(768, 768, 11, 1, 300)]:
        layer = FFF(in_w, out_w, depth, trees, activation="gelu", init="normal(0.3)")
        x = torch.randn(batch, in_w)
        with torch.no_grad():
            fast = layer(x)
            ref = masked_reference(x, layer.linear_in.weight, layer.linear_in.bias,
                                   layer.linear_out.weight, depth, trees, "gelu")
        close(fast, ref, 1e-4 if in_w > 100 else 1e-5)
        close(fast, layer(x).detach(), 1e-4 if in_w > 100 else 1e-5)


def test_ties_at_zero_go_left_with_their_gradients():
    torch.manual_seed(2)
    layer = FFF(10, 6, 3, 2, activation="gelu", init="normal(0.5)")
    with torch.no_grad():
        # Half of the nodes see z == 0 exactly for every input: zero row, zero bias.
        layer.linear_in.weight[::2] = 0.0
        layer.linear_in.bias[::2] = 0.0
    x = torch.randn(40, 10)
    x[:5] = 0.0  # and these inputs see z == b_in at every node
    with torch.no_grad():
        layer.linear_in.bias[1::4] = 0.0
    ours, theirs = run_both(layer, x, "gelu")
    for a, b in zip(ours, theirs):
        close(a, b)
    z = ops.node_logits(x, layer.linear_in.weight, layer.linear_in.bias, 3, 2)
    assert (z == 0).any(), "the test must exercise ties"


def test_leading_dimensions_and_non_contiguous_input():
    torch.manual_seed(3)
    layer = FFF(12, 5, 4, 2, activation="identity", init="normal(0.5)")
    x = torch.randn(3, 4, 12)
    ours, theirs = run_both(layer, x, "identity")
    assert ours[0].shape == (3, 4, 5)
    for a, b in zip(ours, theirs):
        close(a, b)
    xt = torch.randn(12, 6).t()  # a transposed view
    assert not xt.is_contiguous()
    with torch.no_grad():
        close(layer(xt), layer(xt.contiguous()))


def test_batch_zero():
    layer = FFF(8, 3, 2, 2)
    x = torch.randn(0, 8, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert torch.count_nonzero(layer.linear_in.weight.grad) == 0
    with torch.no_grad():
        assert layer(torch.randn(2, 0, 8)).shape == (2, 0, 3)


def test_nan_input_propagates_and_goes_left_like_the_masked_layer():
    torch.manual_seed(4)
    layer = FFF(6, 4, 3, 1, activation="identity", init="normal(0.5)")
    x = torch.randn(5, 6)
    x[2, 1] = float("nan")
    with torch.no_grad():
        y = layer(x)
        ref = masked_reference(x, layer.linear_in.weight, layer.linear_in.bias,
                               layer.linear_out.weight, 3, 1, "identity")
        z = ops.node_logits(x, layer.linear_in.weight, layer.linear_in.bias, 3, 1)
    assert torch.isnan(y[2]).all() and torch.isnan(ref[2]).all()
    keep = [0, 1, 3, 4]
    close(y[keep], ref[keep])
    assert torch.isnan(z[2]).all()  # all NaN logits: the leftmost path, like the reference


def test_thread_count_follows_torch_and_changes_nothing():
    torch.manual_seed(5)
    layer = FFF(33, 9, 6, 3, init="normal(0.5)")
    x = torch.randn(257, 33)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(6)
        one = run_both(layer, x, "gelu")[0]
        torch.set_num_threads(max(2, before))
        torch.manual_seed(6)
        many = run_both(layer, x, "gelu")[0]
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        close(a, b)


def test_parameter_layout_is_ultrafastbert_and_zero_copy():
    layer = FFF(20, 11, 4, 3)
    rows = 3 * 31
    assert layer.linear_in.weight.shape == (rows, 20)
    assert layer.linear_in.bias.shape == (rows,)
    assert layer.linear_out.weight.shape == (11, rows)
    # Node-major storage behind linear_out.weight: the kernels read its transpose in place.
    assert layer.linear_out.weight.t().is_contiguous()
    sd = layer.state_dict()
    assert set(sd) == {"linear_in.weight", "linear_in.bias", "linear_out.weight"}
    assert sd["linear_out.weight"].is_contiguous()


def test_same_seed_same_weights_as_the_rust_initialiser():
    a, b = FFF(7, 5, 3, 2, seed=9), FFF(7, 5, 3, 2, seed=9)
    c = FFF(7, 5, 3, 2, seed=10)
    assert torch.equal(a.linear_in.weight, b.linear_in.weight)
    assert not torch.equal(a.linear_in.weight, c.linear_in.weight)
    std = FFF(64, 64, 6, 1, init="normal(0.05)").linear_in.weight.std().item()
    assert math.isclose(std, 0.05, rel_tol=0.1)


def test_activation_classes_as_in_ultrafastbert():
    assert FFF(4, 4, 1, 1, activation=torch.nn.GELU).activation_name == "gelu"
    assert FFF(4, 4, 1, 1, activation=torch.nn.Identity()).activation_name == "identity"
    assert "identity" in repr(FFF(4, 4, 1, 1, activation="Identity"))


def test_simd_level_is_reported():
    assert fffast.simd_level()
