"""MNIST and Fashion-MNIST as tensors, by the Rust crate's loader (checksums verified)."""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Union

import torch

from . import _native

__all__ = ["ImageSplit", "load_images"]


class ImageSplit(NamedTuple):
    """The standard train/test halves: images ``[N, 784]`` float32, labels ``[N]`` int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_images(
    name: str = "mnist",
    data_dir: Optional[Union[str, os.PathLike]] = None,
    minus_one_one: bool = False,
) -> ImageSplit:
    """Loads ``mnist`` or ``fashion-mnist``: from ``data_dir`` (a folder of the four IDX
    ``.gz`` files, or its parent) if given, else from the cache ``fff train`` uses
    (``$FFF_CACHE_DIR/<set>`` or ``~/.cache/fastfeedforward/datasets/<set>``), downloading the
    files there first from the public mirrors if needed. Pixels are scaled to [0, 1], or to
    [-1, 1] with ``minus_one_one``."""
    path = None if data_dir is None else os.fspath(data_dir)
    tx, ty, vx, vy = _native.load_images(name, path, minus_one_one)
    to_labels = lambda a: torch.from_numpy(a.astype("int64"))  # noqa: E731
    return ImageSplit(torch.from_numpy(tx), to_labels(ty), torch.from_numpy(vx), to_labels(vy))
