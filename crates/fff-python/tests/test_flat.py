"""``FlatFFF`` held to the flat formulation written out in plain torch."""

import pytest
import torch

from fffast import FlatFFF


def flat_reference(x, X, Y, depth):
    """Every level's λ, the path from their signs (ties left), the sum of λ_d·Y[node_d]."""
    lam = x @ X
    node = torch.zeros(x.shape[0], dtype=torch.long)
    y = torch.zeros(x.shape[0], Y.shape[1])
    for d in range(depth):
        y = y + lam[:, d:d + 1] * Y[node]
        node = 2 * node + 1 + (lam[:, d] > 0).long()
    return y


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (13, 7, 1, 5), (9, 17, 4, 33), (30, 5, 9, 130)],
                         ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_match_the_flat_formulation(shape):
    in_w, out_w, depth, batch = shape
    torch.manual_seed(depth)
    layer = FlatFFF(in_w, out_w, depth, seed=1)
    x = torch.randn(batch, in_w, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    ours = [y, *torch.autograd.grad(y, [x, layer.X, layer.Y], g)]
    xr, Xr, Yr = (t.detach().clone().requires_grad_(True) for t in (x, layer.X, layer.Y))
    yr = flat_reference(xr, Xr, Yr, depth)
    theirs = [yr, *torch.autograd.grad(yr, [xr, Xr, Yr], g)]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), yr.detach(), atol=1e-5, rtol=1e-5)


def test_ties_leading_dims_and_names():
    layer = FlatFFF(6, 3, 3)
    x = torch.zeros(2, 4, 6)  # λ = 0 everywhere: every input goes left
    torch.testing.assert_close(layer(x), torch.zeros(2, 4, 3))
    assert set(layer.state_dict()) == {"X", "Y"}
    assert layer.Y.shape == (7, 3)


def test_bad_input():
    with pytest.raises(ValueError, match="`depth` is 0"):
        FlatFFF(4, 4, 0)
    with pytest.raises(ValueError, match=r"`input` has shape \[2, 5\]"):
        FlatFFF(4, 4, 2)(torch.randn(2, 5))
    with pytest.raises(TypeError, match="float64"):
        FlatFFF(4, 4, 2)(torch.randn(2, 4, dtype=torch.float64))
