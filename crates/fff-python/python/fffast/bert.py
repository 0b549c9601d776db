"""BERT-family encoders through the Rust pipeline (Hugging Face BERT, sentence-transformers,
UltraFastBERT / crammedBERT): ``fill_mask`` and ``embed``."""

from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Sequence, Union

import torch

from . import _native

__all__ = ["Bert", "MaskPrediction"]


class MaskPrediction(NamedTuple):
    """The most likely tokens at one ``<mask>``: ``top`` is ``[(token, probability)]``,
    most likely first, ``ids`` their token ids."""

    position: int
    top: List[tuple]
    ids: List[int]


class Bert:
    """A model folder (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
    ``tokenizer.json``; a sentence-transformers folder's ``modules.json`` and pooling config where
    present) of a Hugging Face BERT or an UltraFastBERT / crammedBERT checkpoint, run by the Rust
    encoder (FFF layers on the conditional kernel). Threads follow ``torch.get_num_threads()``."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self._model = _native.Bert.load(os.fspath(path))

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states (and of ``embed``'s vectors)."""
        return self._model.hidden_size

    def fill_mask(self, text: str, top_k: int = 5) -> List[MaskPrediction]:
        """The ``top_k`` most likely tokens at each ``<mask>`` of ``text``."""
        preds, _truncated = self._model.fill_mask(text, top_k, max(1, torch.get_num_threads()))
        return [MaskPrediction(pos, [(tok, prob) for _, tok, prob in top], [i for i, _, _ in top])
                for pos, top in preds]

    def embed(self, texts: Sequence[str], pooling: Optional[str] = None,
              normalize: Optional[bool] = None, batch_size: int = 32) -> torch.Tensor:
        """One vector per text, ``[len(texts), width]``: the final hidden states pooled and
        normalised as the model's sentence-transformers config says (mean pooling without
        normalisation for a folder without one), as ``SentenceTransformer.encode`` gives them.
        ``pooling`` (``mean``, ``first``/``cls``, ``max``, ``mean-sqrt-len``, ``weighted-mean``,
        ``last-token``) and ``normalize`` override the model's own."""
        if isinstance(texts, str):
            texts = [texts]
        array, _truncated = self._model.embed(list(texts), pooling, normalize, batch_size,
                                              max(1, torch.get_num_threads()))
        return torch.from_numpy(array)
