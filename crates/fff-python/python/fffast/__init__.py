"""fffast: fast feedforward (FFF) layers for PyTorch, on the Rust kernels of fastfeedforward.

``FFF`` is UltraFastBERT's layer (same constructor arguments, parameter names and layouts)
trained at O(depth) cost per input and run at inference by the conditional kernel. The kernels
are also ``torch.ops.fffast.*`` custom ops (see ``fffast.ops``), so the layer works under
``torch.compile``. CPU, float32. ``Bert`` runs model folders (fill-mask, embeddings) through
the Rust encoder; ``BertEncoder`` is a BERT model folder, FFF blocks included (as ``fff compress``
writes them), as a trainable PyTorch module.
"""

from . import _native, datasets, ops
from .bert import Bert
from .encoder import BertEncoder
from .flat import FlatFFF
from .masked import MaskedFFF
from .module import ACTIVATIONS, FFF

__all__ = ["FFF", "FlatFFF", "MaskedFFF", "Bert", "BertEncoder", "ACTIVATIONS", "ops", "datasets", "simd_level"]


def simd_level() -> str:
    """The instruction set the inference kernel dispatched to on this CPU."""
    return _native.simd_level()
