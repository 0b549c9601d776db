"""``FlatFFF``: the flat FFF (one hyperplane per level instead of one per node) on the path ops."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import ops
from .module import _check_tensor

__all__ = ["FlatFFF"]


class FlatFFF(nn.Module):
    """Flat FFF of ``depth`` levels: ``λ = x·X`` (``X`` ``[in, depth]``); the signs of ``λ``
    choose the path (``λ_d > 0`` turns right after level ``d``, a tie goes left); the output is
    ``y = Σ_d λ_d · Y[node_d]`` with ``Y`` ``[2^depth − 1, out]``. Parameter names and shapes
    are the Rust crate's ``flat:`` layer's, so its checkpoints' tensors load here.

    The output sum runs on ``fffast.ops.gather_sum`` (``λ`` is both the coefficients and the
    routing values), so only the ``depth`` visited rows of ``Y`` are read, in training and in
    inference, and only they receive gradient; ``X`` gets gradient on every input."""

    def __init__(self, input_width: int, output_width: int, depth: int, seed: int = 0) -> None:
        super().__init__()
        for name, value in [("input_width", input_width), ("output_width", output_width),
                            ("depth", depth)]:
            if int(value) < 1:
                raise ValueError(f"fffast.FlatFFF: `{name}` is {value}; expected at least 1")
        if depth > 24:
            raise ValueError(f"fffast.FlatFFF: `depth` is {depth}; expected at most 24")
        self.input_width, self.output_width, self.depth = int(input_width), int(output_width), int(depth)
        g = torch.Generator().manual_seed(int(seed))
        k1, k2 = math.sqrt(1.0 / self.input_width), math.sqrt(1.0 / self.depth)
        nodes = (1 << self.depth) - 1
        self.X = nn.Parameter(torch.empty(self.input_width, self.depth).uniform_(-k1, k1, generator=g))
        self.Y = nn.Parameter(torch.empty(nodes, self.output_width).uniform_(-k2, k2, generator=g))

    def extra_repr(self) -> str:
        return f"input_width={self.input_width}, output_width={self.output_width}, depth={self.depth}"

    def forward(self, x: Tensor) -> Tensor:
        """``y [..., out]`` for ``x [..., in]``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"fffast.FlatFFF: `input` must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.input_width:
            raise ValueError(f"fffast.FlatFFF: `input` has shape {list(x.shape)}; expected "
                             f"[..., {self.input_width}] (the layer's input_width)")
        _check_tensor("input", x, tuple(x.shape))
        _check_tensor("X", self.X, (self.input_width, self.depth))
        _check_tensor("Y", self.Y, ((1 << self.depth) - 1, self.output_width))
        lead = x.shape[:-1]
        lam = (x.reshape(-1, self.input_width) @ self.X).unsqueeze(1)  # [B, 1, D]
        # One tree of D levels is depth D − 1 in the path ops' terms.
        y = ops.gather_sum(lam, self.Y, lam.detach(), self.depth - 1, 1)
        return y.reshape(*lead, self.output_width)
