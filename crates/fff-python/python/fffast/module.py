"""``FFF``: UltraFastBERT's fast feedforward layer as an ``nn.Module`` on the Rust kernels."""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _native, ops

__all__ = ["FFF", "ACTIVATIONS"]

#: Node activations by name, each the function the training path applies between the ops.
ACTIVATIONS = {
    "gelu": F.gelu,  # the exact (erf) form, as the Rust kernels compute it
    "identity": lambda z: z,
    "relu": F.relu,
    "tanh": torch.tanh,
}

_MODULE_ACTIVATIONS = {nn.GELU: "gelu", nn.Identity: "identity", nn.ReLU: "relu", nn.Tanh: "tanh"}


def _activation_name(activation) -> str:
    """The activation's name, from a name or from UltraFastBERT's ``nn.GELU``-style class."""
    if isinstance(activation, str):
        name = activation.strip().lower()
        if name not in ACTIVATIONS:
            raise ValueError(
                f"activation is {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        return name
    cls = activation if isinstance(activation, type) else type(activation)
    if cls in _MODULE_ACTIVATIONS:
        if cls is nn.GELU and getattr(activation, "approximate", "none") != "none":
            raise ValueError("activation nn.GELU(approximate='tanh') is not supported; use 'gelu'")
        return _MODULE_ACTIVATIONS[cls]
    raise ValueError(
        f"activation is {activation!r}; expected one of {', '.join(ACTIVATIONS)} "
        "or nn.GELU / nn.Identity / nn.ReLU / nn.Tanh"
    )


def _is_cpu_f32(t, shape: tuple) -> bool:
    """Whether ``t`` is a float32 CPU tensor of ``shape`` (the fast check before the
    explaining one)."""
    return (
        isinstance(t, Tensor)
        and t.dtype is torch.float32
        and t.device.type == "cpu"
        and t.shape == shape
    )


def _check_tensor(name: str, t: Tensor, shape: tuple) -> None:
    """Raises a ``TypeError``/``ValueError`` naming ``name`` unless ``t`` is a float32 CPU
    tensor of ``shape``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"fffast.FFF: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise TypeError(
            f"fffast.FFF: `{name}` is on {t.device}; fffast runs on CPU tensors only "
            "(move the layer and its inputs with .cpu())"
        )
    if t.dtype != torch.float32:
        raise TypeError(f"fffast.FFF: `{name}` has dtype {t.dtype}; expected torch.float32")
    if tuple(t.shape) != shape:
        raise ValueError(
            f"fffast.FFF: `{name}` has shape {list(t.shape)}; expected {list(shape)}"
        )


class FFF(nn.Module):
    """A fast feedforward layer: ``parallel_size`` trees of depth ``depth``, one neuron per node.

    Constructor arguments, parameter names and layouts are UltraFastBERT's (``linear_in.weight``
    ``[K·M, in]``, ``linear_in.bias`` ``[K·M]``, ``linear_out.weight`` ``[out, K·M]``), so its
    state dicts load here and ours load there. Forward runs the O(depth) training op whenever a
    gradient is needed and the fast inference kernel otherwise (``torch.no_grad``, or nothing
    requires grad); both compute the same function, so ``eval()`` alone changes nothing.

    ``linear_out.weight`` is kept as a transposed view of node-major ``[K·M, out]`` storage,
    which is what the kernels read: no copy per call. Its ``state_dict`` entry is contiguous.
    """

    def __init__(
        self,
        input_width: int,
        output_width: int,
        depth: int,
        parallel_size: int = 1,
        activation: Union[str, type, nn.Module] = "gelu",
        init: str = "normal",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.activation_name = _activation_name(activation)
        self.input_width = int(input_width)
        self.output_width = int(output_width)
        self.depth = int(depth)
        self.parallel_size = int(parallel_size)
        for name, value, least in [
            ("input_width", self.input_width, 1),
            ("output_width", self.output_width, 1),
            ("depth", self.depth, 0),
            ("parallel_size", self.parallel_size, 1),
        ]:
            if value < least:
                raise ValueError(f"fffast.FFF: `{name}` is {value}; expected at least {least}")
        self.n_nodes = ops.nodes_per_tree(self.depth)
        # The Rust initialiser validates the shape (names the bad field) and draws the weights.
        w_in, b_in, w_out_t = _native.init(
            self.input_width, self.output_width, self.depth, self.parallel_size, init, int(seed)
        )
        rows = self.parallel_size * self.n_nodes
        self.linear_in = nn.utils.skip_init(nn.Linear, self.input_width, rows, bias=True)
        self.linear_out = nn.utils.skip_init(nn.Linear, rows, self.output_width, bias=False)
        self._set_node_major(w_in, b_in, w_out_t)
        self.linear_out.register_state_dict_post_hook(_contiguous_weight_entry)
        self.register_load_state_dict_post_hook(_node_major_after_load)

    @property
    def activation(self):
        """The node activation, as a function of the logits."""
        return ACTIVATIONS[self.activation_name]

    def extra_repr(self) -> str:
        return (
            f"input_width={self.input_width}, output_width={self.output_width}, "
            f"depth={self.depth}, parallel_size={self.parallel_size}, "
            f"activation={self.activation_name}"
        )

    def _parameters_checked(self):
        """``(w_in, b_in, w_out_t)``, each checked to be float32, on the CPU and of its shape."""
        rows = self.parallel_size * self.n_nodes
        w_in, b_in = self.linear_in.weight, self.linear_in.bias
        w_out = self.linear_out.weight
        if not (
            _is_cpu_f32(w_in, (rows, self.input_width))
            and _is_cpu_f32(b_in, (rows,))
            and _is_cpu_f32(w_out, (self.output_width, rows))
        ):
            _check_tensor("linear_in.weight", w_in, (rows, self.input_width))
            _check_tensor("linear_in.bias", b_in, (rows,))
            _check_tensor("linear_out.weight", w_out, (self.output_width, rows))
        return w_in, b_in, w_out.t()

    def forward(self, x: Tensor) -> Tensor:
        """``y [..., out]`` for ``x [..., in]``, any number of leading dimensions."""
        if not (
            isinstance(x, Tensor)
            and x.dtype is torch.float32
            and x.device.type == "cpu"
            and x.dim() > 0
            and x.shape[-1] == self.input_width
        ):
            self._explain_bad_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.input_width)
        w_in, b_in, w_out_t = self._parameters_checked()
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or w_in.requires_grad or b_in.requires_grad or w_out_t.requires_grad
        )
        d, k = self.depth, self.parallel_size
        if needs_grad:
            z = ops.node_logits(x2, w_in, b_in, d, k)
            y = ops.gather_sum(self.activation(z), w_out_t, z, d, k)
        elif torch.compiler.is_compiling():
            y = ops.infer(x2, w_in, b_in, w_out_t, d, k, self.activation_name)
        else:
            # The op's body without the dispatcher: at small batches that is most of the time.
            y = x2.new_empty((x2.shape[0], self.output_width))
            ops.infer_into(x2, w_in, b_in, w_out_t, y, d, k, self.activation_name)
        return y.reshape(*lead, self.output_width)

    def _explain_bad_input(self, x) -> None:
        """Raises the error that says what is wrong with input ``x``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"fffast.FFF: `input` must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.input_width:
            raise ValueError(
                f"fffast.FFF: `input` has shape {list(x.shape)}; expected [..., "
                f"{self.input_width}] (the layer's input_width)"
            )
        _check_tensor("input", x, tuple(x.shape))

    def save_safetensors(self, path: Union[str, os.PathLike]) -> None:
        """Writes the layer as a safetensors file the Rust crate and ``fff`` read (config in
        the metadata), atomically: a temporary name, then a rename."""
        w_in, b_in, w_out_t = self._parameters_checked()
        _native.save(
            os.fspath(path),
            w_in.detach().contiguous().numpy(),
            b_in.detach().contiguous().numpy(),
            w_out_t.detach().contiguous().numpy(),
            self.input_width,
            self.output_width,
            self.depth,
            self.parallel_size,
            self.activation_name,
        )

    @classmethod
    def from_safetensors(cls, path: Union[str, os.PathLike]) -> "FFF":
        """Reads a layer file written by the Rust crate, ``fff`` or ``save_safetensors``
        (shapes and finite values checked; errors name the file and the tensor)."""
        config, w_in, b_in, w_out_t = _native.load(os.fspath(path))
        layer = cls(
            config["input_width"],
            config["output_width"],
            config["depth"],
            config["trees"],
            config["activation"],
        )
        layer._set_node_major(w_in, b_in, w_out_t)
        return layer

    def _set_node_major(self, w_in, b_in, w_out_t) -> None:
        """Takes the parameters from NumPy arrays ``[K·M, in]``, ``[K·M]`` and node-major
        ``[K·M, out]``; ``linear_out.weight`` becomes a transposed view of the last."""
        with torch.no_grad():
            self.linear_in.weight.copy_(torch.from_numpy(w_in))
            self.linear_in.bias.copy_(torch.from_numpy(b_in))
        self.linear_out.weight = nn.Parameter(torch.from_numpy(w_out_t).t())


def _contiguous_weight_entry(module, state_dict, prefix, local_metadata) -> None:
    """Stores ``linear_out.weight`` contiguous, as safetensors and other readers expect."""
    key = prefix + "weight"
    t = state_dict.get(key)
    if isinstance(t, Tensor) and not isinstance(t, nn.Parameter) and not t.is_contiguous():
        state_dict[key] = t.contiguous()


def _node_major_after_load(module: FFF, incompatible_keys: Optional[object]) -> None:
    """After ``load_state_dict(..., assign=True)`` put ``linear_out.weight`` back on node-major
    storage, so forward reads it without a copy (an in-place load keeps it there anyway)."""
    w = module.linear_out.weight
    if isinstance(w, nn.Parameter) and w.device.type == "cpu" and not w.t().is_contiguous():
        module.linear_out.weight = nn.Parameter(
            w.detach().t().contiguous().t(), requires_grad=w.requires_grad
        )
