"""The custom ops: registration (opcheck), finite-difference gradients, and torch.compile."""

import pytest
import torch

from fffast import FFF, MaskedFFF, ops

DEPTH, TREES = 3, 2
ROWS = TREES * (2 ** (DEPTH + 1) - 1)


def routed_inputs(batch=6, width=5, margin=0.05, seed=0):
    """``x, w_in, b_in, z`` with every visited logit at least ``margin`` from zero, so a
    finite-difference step cannot change a path."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(1000):
        x = torch.randn(batch, width, generator=g)
        w_in = torch.randn(ROWS, width, generator=g)
        b_in = torch.randn(ROWS, generator=g)
        z = ops.node_logits(x, w_in, b_in, DEPTH, TREES)
        if z.abs().min() > margin:
            return x, w_in, b_in, z
    raise AssertionError("no well-separated draw")


def op_samples():
    x, w_in, b_in, z = routed_inputs()
    coef = torch.randn(z.shape)
    w = torch.randn(ROWS, 4)
    v = torch.randn(x.shape[0], 4)
    rows = torch.randn(x.shape[0], 3)
    return [
        (ops.node_logits, (x, w_in, b_in, DEPTH, TREES)),
        (ops.gather_sum, (coef, w, z, DEPTH, TREES)),
        (ops.gather_dot, (v, w, z, DEPTH, TREES)),
        (ops.scatter_outer, (coef, rows, z, DEPTH, TREES)),
    ]


@pytest.mark.parametrize("index", range(4), ids=["node_logits", "gather_sum", "gather_dot",
                                                 "scatter_outer"])
def test_opcheck(index):
    op, args = op_samples()[index]
    args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) and i < 2 else a
                 for i, a in enumerate(args))
    torch.library.opcheck(op, args)


def test_opcheck_infer():
    x, w_in, b_in, _ = routed_inputs()
    w_out_t = torch.randn(ROWS, 4)
    torch.library.opcheck(ops.infer, (x, w_in, b_in, w_out_t, DEPTH, TREES, "gelu"))


@pytest.mark.parametrize("index", range(4), ids=["node_logits", "gather_sum", "gather_dot",
                                                 "scatter_outer"])
def test_gradcheck(index):
    """Finite differences in float32 (the kernels' only dtype): a loose but real check."""
    op, args = op_samples()[index]
    tensors = [a.clone().requires_grad_(i < 2 or (op is ops.node_logits and i < 3))
               for i, a in enumerate(args[:3])]
    torch.autograd.gradcheck(lambda *t: op(*t, *args[3:]), tensors, eps=1e-2, atol=2e-3,
                             rtol=2e-3, nondet_tol=1e-5)


@pytest.mark.parametrize("op", [ops.gather_sum, ops.gather_dot, ops.scatter_outer],
                         ids=["gather_sum", "gather_dot", "scatter_outer"])
def test_double_backward(op):
    """The three path primitives differentiate into each other, so second order works too."""
    _, args = next(s for s in op_samples() if s[0] is op)
    tensors = [a.clone().requires_grad_(i < 2) for i, a in enumerate(args[:3])]
    torch.autograd.gradgradcheck(lambda *t: op(*t, *args[3:]), tensors, eps=1e-2, atol=2e-3,
                                 rtol=2e-3, nondet_tol=1e-5)


def test_wrong_shapes_reach_a_clear_error_from_the_ops():
    x, w_in, b_in, z = routed_inputs()
    with pytest.raises(ValueError, match="linear_in.weight"):
        ops.node_logits(x, w_in[:-1], b_in, DEPTH, TREES)
    with pytest.raises(ValueError, match="coefficients"):
        ops.gather_sum(torch.randn(5, 3), torch.randn(ROWS, 4), z, DEPTH, TREES)


def test_torch_compile_training_and_inference():
    torch.manual_seed(0)
    net = torch.nn.Sequential(FFF(10, 8, 3, 2, activation="identity"), torch.nn.ReLU(),
                              FFF(8, 3, 2, 1, activation="gelu"))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(16, 10)
    eager_y = net(x)
    eager_y.square().sum().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    y = compiled(x)
    y.square().sum().backward()
    torch.testing.assert_close(y, eager_y)
    for p, g in zip(net.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))


def test_masked_module_is_the_same_function():
    torch.manual_seed(1)
    ours = FFF(14, 6, 4, 3, init="normal(0.4)")
    masked = MaskedFFF(14, 6, 4, 3, init="normal(0.4)", seed=1)
    masked.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 14)
    torch.testing.assert_close(ours(x), masked(x), atol=1e-5, rtol=1e-5)
