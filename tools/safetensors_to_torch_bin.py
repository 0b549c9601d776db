#!/usr/bin/env python3
"""Convert a ``.safetensors`` file into a PyTorch ``torch.save`` checkpoint, without torch.

Used to make the ``pytorch_model.bin`` test fixture of ``crates/fff-bert`` (torch is too large
to install for that).  Needs ``numpy`` and ``safetensors`` (``tools/requirements.txt``).

    python tools/safetensors_to_torch_bin.py IN.safetensors OUT.bin [--prefix module.]
        [--tie NAME=SOURCE ...] [--no-metadata] [--archive-name archive]

The fixture ``crates/fff-bert/tests/fixtures/tiny-fff-bin/pytorch_model.bin`` was made with

    python tools/safetensors_to_torch_bin.py \
        crates/fff-bert/tests/fixtures/tiny-fff/model.safetensors \
        crates/fff-bert/tests/fixtures/tiny-fff-bin/pytorch_model.bin \
        --prefix module. --tie decoder.weight=encoder.embedding.word_embedding.weight

The output is what ``torch.save(state_dict, OUT)`` writes by default since torch 1.6 (the
zip-based format, ``_use_new_zipfile_serialization=True``):

* a zip archive of *stored* (uncompressed) records under one folder, ``archive/``:
  ``data.pkl``, ``byteorder`` (``little``), one ``data/<key>`` per storage (the raw
  little-endian element bytes), and ``version`` (``3`` and a newline), in that order;
  like torch's ``PyTorchStreamWriter``, every record's data starts at a multiple of 64 bytes
  in the file, padded through an extra field with id ``FB`` in the local header;
* ``data.pkl``: a protocol-2 pickle of a ``collections.OrderedDict`` of name -> tensor, each
  tensor pickled as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
  requires_grad, backward_hooks)`` with ``backward_hooks`` an empty ``OrderedDict`` and
  ``storage`` a persistent id ``('storage', torch.FloatStorage, key, 'cpu', numel)`` (or the
  storage class of the dtype); 0-d tensors have ``size == stride == ()``;
* the dict carries ``_metadata`` (an ``OrderedDict`` of module path -> ``{'version': 1}``), as
  ``nn.Module.state_dict()`` sets it; pickle writes it as a BUILD after the items.
  ``--no-metadata`` leaves it out.

``--prefix`` prepends a string to every name (``module.`` as ``DataParallel`` saves, or
``_orig_mod.`` as ``torch.compile`` does).  ``--tie NAME=SOURCE`` (names as in the input, which
must hold equal tensors under both) stores NAME as a view of SOURCE's storage, as torch saves
tied weights such as a decoder tied to the word embedding: one ``data/<key>``, two names.

The pickle is written by the standard ``pickle`` module: the tensor and storage references are
stand-in objects whose ``__module__``/``__qualname__`` name the torch globals, registered
as modules ``torch`` and ``torch._utils`` in ``sys.modules`` only while pickling (pickle
checks that a global it writes can be imported back), and the storages go out through
``Pickler.persistent_id`` exactly as torch's ``_save`` does.

After writing, the file is read back without torch (``zipfile`` and an ``Unpickler`` that
resolves only those globals and loads the storages through ``persistent_load``), and every
tensor is compared, bit for bit, with the source; the record alignment is checked too.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ALIGNMENT = 64  # torch's PyTorchStreamWriter kFieldAlignment
FORMAT_VERSION = 3  # the "version" record torch.save writes

# numpy dtype -> torch legacy storage class name (what `persistent_id` records).
STORAGE_OF_DTYPE = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}
DTYPE_OF_STORAGE = {v: k for k, v in STORAGE_OF_DTYPE.items()}


# ---------------------------------------------------------------------------------------------
# Stand-ins for the torch globals that pickle refers to.


def _rebuild_tensor_v2(*args):  # pragma: no cover - only ever pickled by reference
    raise RuntimeError("stand-in for torch._utils._rebuild_tensor_v2; never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"


def _storage_class(name: str) -> type:
    """A stand-in class that pickles as the global ``torch.<name>``."""
    return type(name, (), {"__module__": "torch", "__qualname__": name})


STORAGE_CLASSES = {name: _storage_class(name) for name in DTYPE_OF_STORAGE}


@contextlib.contextmanager
def fake_torch_modules():
    """Registers modules ``torch`` and ``torch._utils`` holding the stand-ins, for pickle's
    check that each global it writes resolves to the same object; restores sys.modules after."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name, cls in STORAGE_CLASSES.items():
        setattr(torch, name, cls)
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Storage:
    """One storage: its key (the record name under ``data/``), class and element count."""

    def __init__(self, key: str, array: np.ndarray):
        self.key = key
        self.storage_class = STORAGE_CLASSES[STORAGE_OF_DTYPE[array.dtype]]
        self.numel = int(array.size)
        self.data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


class TensorRef:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, {})``."""

    def __init__(self, storage: Storage, shape: tuple[int, ...]):
        self.storage = storage
        self.shape = shape

    def __reduce__(self):
        hooks = collections.OrderedDict()
        return (
            _rebuild_tensor_v2,
            (self.storage, 0, self.shape, contiguous_stride(self.shape), False, hooks),
        )


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, as torch computes them (a 0-d tensor has none)."""
    stride = []
    step = 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


class TorchPickler(pickle.Pickler):
    """Writes each storage as torch's persistent id instead of pickling it."""

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_class, obj.key, "cpu", obj.numel)
        return None


def module_metadata(names) -> collections.OrderedDict:
    """``state_dict()._metadata``: every module path (the root is ``''``) -> ``{'version': 1}``."""
    meta = collections.OrderedDict()
    meta[""] = {"version": 1}
    for name in names:
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            meta.setdefault(".".join(parts[:i]), {"version": 1})
    return meta


# ---------------------------------------------------------------------------------------------
# Writing.


def parse_ties(ties: list[str], tensors: dict[str, np.ndarray]) -> dict[str, str]:
    """``NAME=SOURCE`` pairs -> {NAME: SOURCE}, checked: both exist, SOURCE is not itself tied,
    and the two tensors have equal dtype, shape and bytes."""
    tied = {}
    for tie in ties:
        name, sep, source = tie.partition("=")
        if not sep:
            raise SystemExit(f"--tie {tie!r}: expected NAME=SOURCE")
        for n in (name, source):
            if n not in tensors:
                raise SystemExit(f"--tie {tie!r}: no tensor {n!r} in the input")
        a, b = tensors[name], tensors[source]
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            raise SystemExit(f"--tie {tie!r}: the two tensors differ")
        tied[name] = source
    for name, source in tied.items():
        if source in tied or source == name:
            raise SystemExit(f"--tie {name}={source}: {source} is itself tied")
    return tied


def build_state_dict(
    tensors: dict[str, np.ndarray], prefix: str, tied: dict[str, str], metadata: bool
) -> tuple[collections.OrderedDict, list[Storage]]:
    state = collections.OrderedDict()
    storages: list[Storage] = []
    storage_of: dict[str, Storage] = {}
    # Storage keys are numbered in the order tensors are pickled, as torch's persistent_id does.
    for name in sorted(tensors):
        array = tensors[name]
        if array.dtype not in STORAGE_OF_DTYPE:
            raise SystemExit(f"{name}: dtype {array.dtype} is not supported")
        owner = tied.get(name, name)
        storage = storage_of.get(owner)
        if storage is None:
            storage = Storage(str(len(storages)), tensors[owner])
            storages.append(storage)
            storage_of[owner] = storage
        state[prefix + name] = TensorRef(storage, tuple(int(d) for d in array.shape))
    if metadata:
        state._metadata = module_metadata(state.keys())
    return state, storages


def pickle_state_dict(state: collections.OrderedDict) -> bytes:
    buf = io.BytesIO()
    with fake_torch_modules():
        TorchPickler(buf, protocol=2).dump(state)
    return buf.getvalue()


def write_aligned(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """A stored record whose data starts at a multiple of ALIGNMENT bytes, padded through an
    ``FB`` extra field in the local header as torch does."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 0
    encoded = name.encode("ascii")  # torch's record names are ASCII; so are ours
    # zipfile adds a 20-byte zip64 extra to the local header of records this large.
    zip64_extra = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0
    start = zf.fp.tell() + 30 + len(encoded) + zip64_extra + 4
    pad = -start % ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def write_torch_zip(path: Path, archive: str, pickled: bytes, storages: list[Storage]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        write_aligned(zf, f"{archive}/data.pkl", pickled)
        write_aligned(zf, f"{archive}/byteorder", b"little")
        for storage in storages:
            write_aligned(zf, f"{archive}/data/{storage.key}", storage.data)
        write_aligned(zf, f"{archive}/version", f"{FORMAT_VERSION}\n".encode())


# ---------------------------------------------------------------------------------------------
# Reading back, without torch.


def _read_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, *metadata):
    array, numel = storage
    assert array.size == numel, f"storage holds {array.size} elements, id says {numel}"
    if len(size) == 0:
        return array[offset : offset + 1].reshape(())
    itemsize = array.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        array[offset:], shape=size, strides=tuple(s * itemsize for s in stride)
    ).copy()


class TorchUnpickler(pickle.Unpickler):
    """Loads ``data.pkl``, resolving only the globals a plain state dict uses."""

    def __init__(self, file, zf: zipfile.ZipFile, archive: str):
        super().__init__(file)
        self.zf = zf
        self.archive = archive
        self.globals_seen: set[tuple[str, str]] = set()

    def find_class(self, module, name):
        self.globals_seen.add((module, name))
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _read_rebuild_tensor_v2
        if module == "torch" and name in DTYPE_OF_STORAGE:
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_class, key, location, numel = pid
        assert kind == "storage" and location == "cpu", pid
        raw = self.zf.read(f"{self.archive}/data/{key}")
        dtype = DTYPE_OF_STORAGE[storage_class].newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype), numel


def read_torch_zip(path: Path):
    """(state dict of numpy arrays, the globals the pickle used) of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl")]
        assert len(pkls) == 1, names
        archive = pkls[0][: -len("/data.pkl")]
        assert zf.read(f"{archive}/byteorder") == b"little"
        assert zf.read(f"{archive}/version") == f"{FORMAT_VERSION}\n".encode()
        with open(path, "rb") as raw:
            for info in zf.infolist():
                assert info.compress_type == zipfile.ZIP_STORED, info
                raw.seek(info.header_offset)
                header = raw.read(30)
                assert header[:4] == b"PK\x03\x04", info.filename
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                data_start = info.header_offset + 30 + name_len + extra_len
                assert data_start % ALIGNMENT == 0, (info.filename, data_start)
        unpickler = TorchUnpickler(io.BytesIO(zf.read(pkls[0])), zf, archive)
        state = unpickler.load()
    return state, unpickler.globals_seen


def verify(
    out: Path, tensors: dict[str, np.ndarray], prefix: str, metadata: bool, storages: int
) -> None:
    state, globals_seen = read_torch_zip(out)
    with zipfile.ZipFile(out) as zf:
        records = [n for n in zf.namelist() if "/data/" in n]
    assert len(records) == storages, f"{len(records)} data records, expected {storages}"
    assert isinstance(state, collections.OrderedDict), type(state)
    assert list(state) == [prefix + n for n in sorted(tensors)], "names or order differ"
    for name, want in tensors.items():
        got = state[prefix + name]
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), f"{name}: values differ"
    assert hasattr(state, "_metadata") == metadata
    assert ("torch._utils", "_rebuild_tensor_v2") in globals_seen or not tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="the .safetensors file")
    parser.add_argument("output", type=Path, help="the torch.save zip to write")
    parser.add_argument("--prefix", default="", help="prepended to every name, e.g. module.")
    parser.add_argument(
        "--tie",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="store NAME in SOURCE's storage, as torch saves tied weights (repeatable)",
    )
    parser.add_argument(
        "--no-metadata", action="store_true", help="leave out state_dict()._metadata"
    )
    parser.add_argument(
        "--archive-name", default="archive", help="the folder inside the zip (default archive)"
    )
    args = parser.parse_args()

    tensors = load_file(args.input)
    tied = parse_ties(args.tie, tensors)
    state, storages = build_state_dict(tensors, args.prefix, tied, not args.no_metadata)
    write_torch_zip(args.output, args.archive_name, pickle_state_dict(state), storages)
    verify(args.output, tensors, args.prefix, not args.no_metadata, len(storages))
    print(
        f"wrote {args.output}: {len(state)} tensors in {len(storages)} storages, "
        f"{args.output.stat().st_size} bytes; read back and compared"
    )


if __name__ == "__main__":
    main()
