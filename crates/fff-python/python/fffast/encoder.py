"""A Hugging Face BERT encoder as a trainable PyTorch module, with FFF blocks where the model
folder has them (a model written by ``fff compress``): fine-tune a compressed model further, then
save it back to a folder the ``fff`` engine serves.

Module and parameter names are the checkpoint's own (Hugging Face's for the kept tensors,
UltraFastBERT's ``encoder.layer.{i}.fff.*`` for the FFF blocks), so ``state_dict()`` is the
folder's ``model.safetensors`` and ``load_state_dict(strict=True)`` checks every tensor. The FFF
blocks run on fffast's O(depth) training op when a gradient is needed and on the conditional
kernel otherwise. Post-LN BERT with absolute positions and exact GELU, as the Rust loader takes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .module import FFF

__all__ = ["BertEncoder"]

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class _Bias(nn.Module):
    """The output bias an FFF block keeps, under its dense layer's name (``output.dense.bias``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, mask_bias: Tensor) -> Tensor:
        b, s, d = h.shape
        split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask_bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's attention output and FFN output."""

    def __init__(self, width_in: int, hidden: int, eps: float, fff: bool = False) -> None:
        super().__init__()
        self.dense = _Bias(hidden) if fff else nn.Linear(width_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        setattr(self, "self", _SelfAttention(hidden, heads))
        self.output = _DenseNorm(hidden, hidden, eps)

    def forward(self, h: Tensor, mask_bias: Tensor) -> Tensor:
        a = getattr(self, "self")(h, mask_bias)
        return self.output.LayerNorm(self.output.dense(a) + h)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, width)


class _Layer(nn.Module):
    """A BERT block whose FFN is dense, an FFF, or an FFF beside a dense branch (``fff`` with
    ``dense_branch`` > 0: the branch under the block's own FFN names, that many neurons wide)."""

    def __init__(self, c: dict, fff: Optional[dict]) -> None:
        super().__init__()
        hidden, eps = c["hidden_size"], c.get("layer_norm_eps", 1e-12)
        self.attention = _Attention(hidden, c["num_attention_heads"], eps)
        branch = fff.get("dense_branch", 0) if fff is not None else 0
        width = c["intermediate_size"] if fff is None else branch
        if fff is not None:
            self.fff = FFF(hidden, hidden, fff["depth"], fff["trees"], fff["node_activation"])
        if width > 0:
            self.intermediate = _Intermediate(hidden, width)
            self.act = _ACTIVATIONS[c.get("hidden_act", "gelu")]()
        self.output = _DenseNorm(width, hidden, eps, fff=fff is not None and width == 0)

    def forward(self, h: Tensor, mask_bias: Tensor) -> Tensor:
        h = self.attention(h, mask_bias)
        if hasattr(self, "intermediate"):
            y = self.output.dense(self.act(self.intermediate.dense(h)))
        else:
            y = self.output.dense.bias
        if hasattr(self, "fff"):
            y = self.fff(h) + y
        return self.output.LayerNorm(y + h)


class _Embeddings(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        hidden = c["hidden_size"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(c.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=c.get("layer_norm_eps", 1e-12))

    def forward(self, ids: Tensor, type_ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        e = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(type_ids)
        return self.LayerNorm(e)


class _Encoder(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        fff = c.get("fff")
        fff_layers = set(fff["layers"]) if fff else set()
        self.layer = nn.ModuleList(
            _Layer(c, fff if i in fff_layers else None) for i in range(c["num_hidden_layers"])
        )


class BertEncoder(nn.Module):
    """A BERT encoder (``BertModel`` without its pooler) whose FFN blocks may be FFF layers.

    ``forward(input_ids, attention_mask, token_type_ids=None)`` gives the final hidden states
    ``[batch, seq, hidden]``; ``embed`` pools them as the folder's sentence-transformers config
    says (mean, CLS or max, then L2 normalisation where ``modules.json`` lists it).
    """

    def __init__(self, config: dict, pooling: str = "mean", normalize: bool = False) -> None:
        super().__init__()
        if config.get("model_type") != "bert":
            raise ValueError(f"fffast.BertEncoder: model_type is {config.get('model_type')!r}; expected 'bert'")
        self.config = config
        self.pooling = pooling
        self.normalize = normalize
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self._prefix = ""
        self._extra = {}

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> "BertEncoder":
        """Loads ``config.json``, ``model.safetensors`` and the sentence-transformers pooling
        config of a model folder; every tensor must be there, with its shape."""
        from safetensors.torch import load_file

        path = os.fspath(path)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        pooling, normalize = "mean", False
        modules = os.path.join(path, "modules.json")
        if os.path.exists(modules):
            with open(modules, encoding="utf-8") as f:
                listed = json.load(f)
            for m in listed:
                kind = m.get("type", "")
                if kind.endswith("Normalize"):
                    normalize = True
                if kind.endswith("Pooling"):
                    with open(os.path.join(path, m["path"], "config.json"), encoding="utf-8") as f:
                        p = json.load(f)
                    modes = [n for n, key in [("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"),
                                              ("max", "pooling_mode_max_tokens")] if p.get(key)]
                    if len(modes) != 1 or any(p.get(k) for k in ["pooling_mode_mean_sqrt_len_tokens",
                                                                   "pooling_mode_weightedmean_tokens",
                                                                   "pooling_mode_lasttoken"]):
                        raise ValueError(f"fffast.BertEncoder: {m['path']}/config.json: only one of cls, mean or max pooling is supported")
                    pooling = modes[0]
        model = cls(config, pooling, normalize)
        tensors = load_file(os.path.join(path, "model.safetensors"))
        prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
        state = {k[len(prefix):]: v.float() for k, v in tensors.items()
                 if k.startswith(prefix) and not k.endswith("position_ids")
                 and (k[len(prefix):].startswith("embeddings.") or k[len(prefix):].startswith("encoder."))}
        model.load_state_dict(state, strict=True)
        # Tensors the encoder does not use (a pooler, a head, buffers) go back out unchanged.
        model._prefix = prefix
        model._extra = {k: v for k, v in tensors.items() if k[len(prefix):] not in state}
        return model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        h = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            h = layer(h, mask_bias)
        return h

    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        """Sentence embeddings ``[batch, hidden]`` pooled as the model folder says."""
        h = self(input_ids, attention_mask, token_type_ids)
        m = attention_mask[..., None].float()
        if self.pooling == "cls":
            e = h[:, 0]
        elif self.pooling == "max":
            e = h.masked_fill(m == 0, torch.finfo(h.dtype).min).amax(1)
        else:
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(e, dim=-1) if self.normalize else e

    def save_pretrained_weights(self, path: Union[str, os.PathLike]) -> None:
        """Writes the parameters as ``model.safetensors`` into an existing model folder (written
        to a temporary name, then renamed), under the names they were loaded with, with the
        tensors the encoder does not use (pooler, heads) as they were."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        tmp = os.path.join(path, ".model.safetensors.tmp")
        out = {self._prefix + k: v.detach().contiguous() for k, v in self.state_dict().items()}
        out.update(self._extra)
        save_file(out, tmp)
        os.replace(tmp, os.path.join(path, "model.safetensors"))
