"""UltraFastBERT's masked training formulation in plain PyTorch, the baseline ``FFF`` replaces.

It computes all ``K·M`` node logits of every input, builds the path mask node by node, and
multiplies the off-path activations by zero before the output matmul: the same function and
gradients as ``FFF``, at dense cost. Kept for comparisons (``python -m fffast.bench``, the MNIST
example) and as a drop-in check: ``MaskedFFF`` and ``FFF`` load each other's state dicts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .module import FFF

__all__ = ["MaskedFFF"]


class MaskedFFF(FFF):
    """``FFF`` computed as UltraFastBERT trains it: every node, then a path mask."""

    def forward(self, x: Tensor) -> Tensor:
        """``y [..., out]`` for ``x [..., in]`` by the masked formulation."""
        lead = x.shape[:-1]
        x = x.reshape(-1, self.input_width)
        batch, k, m = x.shape[0], self.parallel_size, self.n_nodes
        logits = self.linear_in(x)
        decisions = (logits > 0).long().view(batch, k, m)
        activations = self.activation(logits).view(batch, k, m)
        with torch.no_grad():
            current = torch.zeros((batch, k), dtype=torch.long)
            mask = torch.zeros((batch, k, m), dtype=torch.float)
            mask.scatter_(2, current.unsqueeze(-1), 1.0)
            for d in range(self.depth):
                platform, next_platform = 2**d - 1, 2 ** (d + 1) - 1
                moves = torch.gather(decisions, 2, current.unsqueeze(2)).squeeze(2)
                current = (current - platform) * 2 + moves + next_platform
                mask.scatter_(2, current.unsqueeze(-1), 1.0)
        y = self.linear_out((activations * mask).flatten(1, 2))
        return y.reshape(*lead, self.output_width)
