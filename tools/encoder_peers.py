#!/usr/bin/env python3
"""The peers of ``fff bench encoder``: the same BERT encoder run by PyTorch and by
ONNX Runtime (fp32 and dynamic int8), timed on the same inputs.

The Rust benchmark writes an inputs file, runs this script (normally through
``tools/encoder_peers.sh``, which makes the virtual environment), reads the
output file and prints engine and peers side by side.

Usage::

    python tools/encoder_peers.py --model DIR --inputs INPUTS.json --out OUT.json \\
        --threads 2 --reps 20 --workload-reps 3 [--warmup 3] [--runtimes torch,ort-fp32,ort-int8] \\
        [--cache-dir ~/.cache/fff-peers]

INPUTS.json::

    {"shapes": [{"name": "1x16", "ids": [[int, ...], ...], "type_ids": [[...]]}, ...],
     "workload": {"texts": [str, ...], "batch": 32},
     "check": {"texts": [str, ...], "embeddings": [[float, ...], ...]},
     "embed": {"texts": [str, ...]}}          (optional)

Every shape row has the same length (no padding, attention mask all ones).

Runtimes
--------
``torch``
    ``transformers.AutoModel`` in float32, eval, ``torch.inference_mode()``,
    ``torch.set_num_threads(threads)``, ``set_num_interop_threads(1)``, the
    attention implementation transformers picks by default (recorded).
``ort-fp32``
    The model exported with the TorchScript exporter
    (``torch.onnx.export(..., dynamo=False)``, opset 17, eager attention:
    that graph is the one ``onnxruntime.transformers.optimizer`` fully fuses
    (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu);
    with SDPA attention or the dynamo exporter no Attention node is fused),
    inputs input_ids / attention_mask / token_type_ids with dynamic batch and
    sequence axes, output last_hidden_state; then
    ``optimize_model(model_type="bert", num_heads, hidden_size)``.  Both the
    plain export and the optimised graph are checked and timed on the shapes;
    the faster one (geometric mean over the shapes) is used for the workload
    and reported (``"graph"``, both medians under ``"graphs"``).
    SessionOptions: intra_op_num_threads = threads, inter_op_num_threads = 1,
    ORT_ENABLE_ALL, CPUExecutionProvider.
``ort-int8``
    ``onnxruntime.quantization.quantize_dynamic`` of each fp32 graph:
    weight_type QInt8, per_channel True, op_types_to_quantize MatMul and
    Attention (the optimised graph becomes QAttention + MatMulInteger, the
    plain export MatMulInteger; the embedding tables stay fp32), activations
    uint8 quantised at run time, reduce_range False on a CPU with VNNI
    (avx512_vnni / avx_vnni / amx_int8), True otherwise (ORT's advice for u8s8
    without VNNI); ``DefaultTensorType`` FLOAT because shape inference cannot
    type the outputs of the fused contrib ops.  Per-channel is optimum's x86
    preset and matters: on all-MiniLM-L6-v2 per-tensor weights gave a minimum
    cosine to fp32 of 0.937 on 20 STS texts, per-channel 0.990.  Both int8
    graphs are checked (not gated) and timed on the shapes; the faster is used
    for the workload (``"graph"`` = the fp32 graph it was quantised from).
    Same session options.

The .onnx files are cached in ``--cache-dir/<sha256 of the weights file>[:16]/``,
written under a temporary name and renamed.

Pooling and tokenisation (check and workload) follow the model folder the way
sentence-transformers does: ``modules.json`` -> ``1_Pooling/config.json`` (both
the ``pooling_mode_*`` booleans and the newer ``"pooling_mode"`` key; modes
cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken; several modes
are concatenated) and Normalize (L2, eps 1e-12); without modules.json: mean,
no normalisation.  Tokens from ``transformers.AutoTokenizer`` (fast) with
``truncation="longest_first"``, ``max_length`` = sentence_bert_config.json's
``max_seq_length`` (default ``min(max_position_embeddings,
model_max_length)``), padded to the longest in the batch, texts ``.strip()``-ped.

Check before timing: every runtime embeds ``check.texts``; the fp32 runtimes
must match the engine's embeddings within 1e-5 absolute on every element, or
the script prints the worst difference and exits with status 3.  For int8 the
minimum cosine and the largest absolute difference are reported (``"passed"``
is null: not gated).

Timing: each shape gets 3 untimed warm-up calls, then ``reps`` timed calls of
the encoder alone (inputs converted to tensors / arrays beforehand),
``time.perf_counter``.  The workload gets one untimed pass over its first 2
batches, then ``workload_reps`` timed passes over all texts (tokenisation +
encoder + pooling + normalisation).

Embeddings for quality (``embed``, optional): after timing, every runtime embeds
``embed.texts`` (untimed, the workload's batch size) and writes them beside
OUT.json as ``<runtime>.embeddings.f32``: rows x dim little-endian float32, in
the order of the texts (written atomically); the caller scores them with its own
evaluation, so that a peer's quality (int8's above all) is measured by the same
code as the engine's.

OUT.json (written atomically)::

    {"machine": {"cpu": ..., "cores": ...}, "threads": 2, "versions": {...},
     "runtimes": {"torch": {"check": {"max_abs_diff", "min_cosine", "passed"},
                            "shapes": {"1x16": {"times_s": [...], "median_s": x}},
                            "workload": {"times_s": [...], "median_s": x, "texts": n,
                                         "tokens": n, "sentences_per_s": x},
                            "embeddings": {"file": "torch.embeddings.f32", "rows": n, "dim": d}},
                  "ort-fp32": {..., "graph": "optimized" | "exported"},
                  "ort-int8": {...}}}

Requirements: tools/requirements-peers.txt.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FP32_TOLERANCE = 1e-5
# The dynamic int8 recipe: per-channel weights (optimum's x86 presets; on all-MiniLM-L6-v2
# per-tensor weights give a minimum cosine to fp32 of 0.937 on the check texts, per-channel
# 0.990), the matrix products only (embedding tables stay fp32).
QUANT_PER_CHANNEL = True
QUANT_OPS = ("MatMul", "Attention")
ALL_RUNTIMES = ("torch", "ort-fp32", "ort-int8")
POOL_ORDER = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOL_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def log(msg: str) -> None:
    print(f"[encoder_peers] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="PyTorch / ONNX Runtime peers of `fff bench encoder`.")
    ap.add_argument("--model", required=True, type=Path, help="Hugging Face / sentence-transformers model folder")
    ap.add_argument("--inputs", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--workload-reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per shape before the timed ones")
    ap.add_argument("--runtimes", default=",".join(ALL_RUNTIMES))
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "fff-peers")
    args = ap.parse_args(argv)
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for r in args.runtimes:
        if r not in ALL_RUNTIMES:
            ap.error(f"unknown runtime {r!r} (known: {', '.join(ALL_RUNTIMES)})")
    if args.threads < 1 or args.reps < 1 or args.workload_reps < 1:
        ap.error("--threads, --reps and --workload-reps must be >= 1")
    return args


ARGS = parse_args()
# Thread pools are sized when the libraries load: set them first.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(1)


# --------------------------------------------------------------------------- model folder


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).exists():
            return model_dir / name
    raise SystemExit(f"no model.safetensors or pytorch_model.bin in {model_dir}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_pipeline(model_dir: Path, config: dict, tokenizer) -> dict:
    """Pooling modes, Normalize and max_seq_length the way sentence-transformers reads them."""
    modes, normalize, transformer_path = ["mean"], False, ""
    modules_json = model_dir / "modules.json"
    if modules_json.exists():
        modes = None
        for m in read_json(modules_json):
            kind = m["type"].rsplit(".", 1)[-1]
            if kind == "Transformer":
                transformer_path = m.get("path", "")
            elif kind == "Pooling":
                cfg = read_json(model_dir / m["path"] / "config.json")
                if "pooling_mode" in cfg:
                    pm = cfg["pooling_mode"]
                    modes = [pm] if isinstance(pm, str) else list(pm)
                else:
                    modes = [LEGACY_POOL_KEYS[k] for k in LEGACY_POOL_KEYS if cfg.get(k)]
                for mode in modes:
                    if mode not in POOL_ORDER:
                        raise SystemExit(f"unsupported pooling mode {mode!r}")
            elif kind == "Normalize":
                normalize = True
            else:
                raise SystemExit(f"unsupported sentence-transformers module {m['type']}")
        if modes is None:
            raise SystemExit("modules.json has no Pooling module: token embeddings are not supported")
    max_len = None
    sbc = model_dir / transformer_path / "sentence_bert_config.json"
    if sbc.exists():
        max_len = read_json(sbc).get("max_seq_length")
    if max_len is None:
        mml = tokenizer.model_max_length
        mpe = config.get("max_position_embeddings", mml)
        max_len = int(min(mpe, mml))
    return {"modes": modes, "normalize": normalize, "max_seq_length": int(max_len)}


def pool(hidden: np.ndarray, mask: np.ndarray, pipeline: dict) -> np.ndarray:
    """sentence-transformers' Pooling (right padding) and Normalize, in float32."""
    h = hidden.astype(np.float32, copy=False)
    m = mask.astype(np.float32)[:, :, None]
    outs = []
    for mode in pipeline["modes"]:
        if mode == "cls":
            outs.append(h[:, 0])
        elif mode == "max":
            outs.append(np.where(m > 0, h, -np.inf).max(axis=1).astype(np.float32))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            s = (h * m).sum(axis=1)
            n = np.maximum(m.sum(axis=1), np.float32(1e-9))
            outs.append(s / (n if mode == "mean" else np.sqrt(n)))
        elif mode == "weightedmean":
            w = m * np.arange(1, h.shape[1] + 1, dtype=np.float32)[None, :, None]
            outs.append((h * w).sum(axis=1) / np.maximum(w.sum(axis=1), np.float32(1e-9)))
        elif mode == "lasttoken":
            last = mask.sum(axis=1).astype(np.int64) - 1
            outs.append(h[np.arange(h.shape[0]), np.maximum(last, 0)])
    e = np.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    if pipeline["normalize"]:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), np.float32(1e-12))
    return e.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- runtimes


class TorchRuntime:
    def __init__(self, model_dir: Path, use_type_ids: bool):
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.use_type_ids = use_type_ids
        self.info = {"attn_implementation": getattr(self.model.config, "_attn_implementation", None)}

    def prepare(self, ids, type_ids, mask):
        feed = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if self.use_type_ids:
            feed["token_type_ids"] = torch.from_numpy(type_ids)
        return feed

    def run(self, feed) -> np.ndarray:
        with torch.inference_mode():
            return self.model(**feed).last_hidden_state.numpy()


class OrtRuntime:
    def __init__(self, onnx_path: Path, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.info = {"onnx": str(onnx_path)}

    def prepare(self, ids, type_ids, mask):
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
        return {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feed.items() if k in self.inputs}

    def run(self, feed) -> np.ndarray:
        return self.session.run(["last_hidden_state"], feed)[0]


# --------------------------------------------------------------------------- ONNX files


def atomic_target(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def export_onnx(model_dir: Path, path: Path, use_type_ids: bool) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_type_ids else [])

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.m(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state

    ids = torch.full((2, 16), 1000, dtype=torch.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if use_type_ids else ())
    axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    tmp = atomic_target(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model),
            args,
            str(tmp),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    os.replace(tmp, path)


def optimize_onnx(src: Path, dst: Path, config: dict) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
    )
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    tmp = atomic_target(dst)
    opt.save_model_to_file(str(tmp))
    os.replace(tmp, dst)
    return stats


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def quantize_onnx(src: Path, dst: Path, reduce_range: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = atomic_target(dst)
    quantize_dynamic(
        str(src),
        str(tmp),
        weight_type=QuantType.QInt8,
        per_channel=QUANT_PER_CHANNEL,
        reduce_range=reduce_range,
        op_types_to_quantize=list(QUANT_OPS),
        # ONNX shape inference gives no type to the outputs of the fused contrib ops
        # (Attention, SkipLayerNormalization, ...) of the optimised graph.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    os.replace(tmp, dst)


def onnx_op_counts(path: Path) -> dict:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- measuring


class Embedder:
    def __init__(self, tokenizer, pipeline: dict):
        self.tokenizer = tokenizer
        self.pipeline = pipeline

    def tokenize(self, texts):
        enc = self.tokenizer(
            [t.strip() for t in texts],
            padding=True,
            truncation="longest_first",
            max_length=self.pipeline["max_seq_length"],
            return_tensors="np",
        )
        ids = enc["input_ids"].astype(np.int64)
        mask = enc["attention_mask"].astype(np.int64)
        tt = enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
        return ids, tt, mask

    def embed(self, runtime, texts) -> np.ndarray:
        ids, tt, mask = self.tokenize(texts)
        hidden = runtime.run(runtime.prepare(ids, tt, mask))
        return pool(hidden, mask, self.pipeline)

    def embed_all(self, runtime, texts, batch: int) -> np.ndarray:
        # As SentenceTransformer.encode does: batches of texts sorted by length, longest
        # first, so that each batch pads little; the embeddings are put back in input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        sorted_texts = [texts[i] for i in order]
        out = np.concatenate([self.embed(runtime, sorted_texts[i : i + batch]) for i in range(0, len(texts), batch)])
        result = np.empty_like(out)
        result[order] = out
        return result


def check(name: str, embedder: Embedder, runtime, inputs: dict, batch: int, gated: bool) -> dict:
    texts = inputs["check"]["texts"]
    want = np.asarray(inputs["check"]["embeddings"], dtype=np.float32)
    got = embedder.embed_all(runtime, texts, batch)
    if got.shape != want.shape:
        log(f"{name}: check embeddings have shape {got.shape}, the engine's {want.shape}")
        sys.exit(3)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    cos = (g * w).sum(1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1), 1e-300)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    res = {
        "max_abs_diff": float(diff.max()),
        "min_cosine": float(cos.min()),
        "texts": len(texts),
        "tolerance": FP32_TOLERANCE if gated else None,
        "passed": bool(diff.max() <= FP32_TOLERANCE) if gated else None,
    }
    log(f"{name}: check max |diff| {res['max_abs_diff']:.3e}, min cosine {res['min_cosine']:.8f}")
    if gated and not res["passed"]:
        t, e = int(worst[0]), int(worst[1])
        log(
            f"{name}: FAILED the check: text {t} ({texts[t][:60]!r}) element {e}: "
            f"peer {got[t, e]:.8g}, engine {want[t, e]:.8g}, |diff| {diff[t, e]:.3e} > {FP32_TOLERANCE}"
        )
        sys.exit(3)
    return res


def time_shapes(name: str, runtime, inputs: dict, reps: int, warmup: int = 3) -> dict:
    out = {}
    for shape in inputs["shapes"]:
        ids = np.asarray(shape["ids"], dtype=np.int64)
        tt = np.asarray(shape.get("type_ids") or np.zeros_like(ids), dtype=np.int64)
        if ids.ndim != 2 or tt.shape != ids.shape:
            raise SystemExit(f"shape {shape['name']}: ids must be a rectangular [batch][seq] list")
        feed = runtime.prepare(ids, tt, np.ones_like(ids))
        for _ in range(warmup):
            runtime.run(feed)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            runtime.run(feed)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[shape["name"]] = {"times_s": times, "median_s": med}
        log(f"{name}: {shape['name']}: median {med * 1e3:.3f} ms over {reps}")
    return out


def time_workload(name: str, embedder: Embedder, runtime, inputs: dict, reps: int) -> dict:
    texts = inputs["workload"]["texts"]
    batch = int(inputs["workload"].get("batch", 32))
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += int(embedder.tokenize(texts[i : i + batch])[2].sum())
    embedder.embed_all(runtime, texts[: 2 * batch], batch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        embedder.embed_all(runtime, texts, batch)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    log(f"{name}: workload: {len(texts)} texts, {tokens} tokens: median {med:.3f} s, {len(texts) / med:.1f} sentences/s")
    return {
        "times_s": times,
        "median_s": med,
        "texts": len(texts),
        "tokens": tokens,
        "batch": batch,
        "sentences_per_s": len(texts) / med,
    }


def geo_mean_ratio(a: dict, b: dict) -> float:
    names = list(a)
    return math.exp(sum(math.log(a[n]["median_s"] / b[n]["median_s"]) for n in names) / len(names))


# --------------------------------------------------------------------------- main


def machine() -> dict:
    cpu = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    if cpu is None:
        cpu = platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "vnni": cpu_has_vnni(), "loadavg_at_start": list(os.getloadavg())}


def versions() -> dict:
    import tokenizers
    import transformers

    v = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import onnx
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
        v["onnx"] = onnx.__version__
    except ImportError:
        v["onnxruntime"] = None
    return v


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_atomic(path: Path, obj: dict) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def embed_for_quality(name: str, embedder: Embedder, runtime, inputs: dict, batch: int, out_dir: Path) -> dict:
    texts = inputs["embed"]["texts"]
    emb = embedder.embed_all(runtime, texts, batch)
    path = out_dir / f"{name}.embeddings.f32"
    write_bytes_atomic(path, np.ascontiguousarray(emb, dtype="<f4").tobytes())
    log(f"{name}: embedded {len(texts)} texts for quality into {path.name}")
    return {"file": path.name, "rows": int(emb.shape[0]), "dim": int(emb.shape[1])}


def main() -> int:
    args = ARGS
    from transformers import AutoTokenizer

    inputs = read_json(args.inputs)
    model_dir = args.model
    config = read_json(model_dir / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(tokenizer, "is_fast", False):
        raise SystemExit("a fast (tokenizers) tokenizer is required")
    use_type_ids = "token_type_ids" in tokenizer.model_input_names
    pipeline = read_pipeline(model_dir, config, tokenizer)
    embedder = Embedder(tokenizer, pipeline)
    # No workload: the shapes alone are timed (the check and the embeddings for quality still
    # go in batches of the usual size).
    batch = int((inputs.get("workload") or {}).get("batch", 32))
    wfile = weights_file(model_dir)
    digest = sha256(wfile)
    log(f"model {model_dir} ({wfile.name} sha256 {digest[:16]}), pooling {pipeline}, threads {args.threads}")

    result = {
        "machine": machine(),
        "threads": args.threads,
        "reps": args.reps,
        "workload_reps": args.workload_reps,
        "versions": versions(),
        "model": str(model_dir),
        "model_sha256": digest,
        "pipeline": pipeline,
        "runtimes": {},
    }

    onnx_dir = args.cache_dir / digest[:16]
    paths = {
        "exported": onnx_dir / "exported-opset17.onnx",
        "optimized": onnx_dir / "optimized-bert.onnx",
    }
    if any(r.startswith("ort") for r in args.runtimes):
        onnx_dir.mkdir(parents=True, exist_ok=True)
        if not paths["exported"].exists():
            log(f"exporting ONNX to {paths['exported']}")
            export_onnx(model_dir, paths["exported"], use_type_ids)
        if not paths["optimized"].exists():
            log("optimising with onnxruntime.transformers.optimizer")
            optimize_onnx(paths["exported"], paths["optimized"], config)

    for name in args.runtimes:
        entry: dict = {}
        if name == "torch":
            rt = TorchRuntime(model_dir, use_type_ids)
            entry.update(rt.info)
            entry["check"] = check(name, embedder, rt, inputs, batch, gated=True)
            entry["shapes"] = time_shapes(name, rt, inputs, args.reps, args.warmup)
        elif name == "ort-fp32":
            graphs = {}
            timed = {}
            for g in ("optimized", "exported"):
                rt = OrtRuntime(paths[g], args.threads)
                chk = check(f"{name} ({g})", embedder, rt, inputs, batch, gated=True)
                timed[g] = (rt, chk, time_shapes(f"{name} ({g})", rt, inputs, args.reps, args.warmup))
                graphs[g] = {
                    "onnx": str(paths[g]),
                    "ops": onnx_op_counts(paths[g]),
                    "check": chk,
                    "shapes_median_s": {k: v["median_s"] for k, v in timed[g][2].items()},
                }
            ratio = geo_mean_ratio(timed["optimized"][2], timed["exported"][2])
            chosen = "optimized" if ratio <= 1.0 else "exported"
            log(f"{name}: optimized/exported time ratio (geometric mean over shapes) {ratio:.3f}: using {chosen}")
            rt, chk, shapes = timed[chosen]
            del timed
            entry.update({"graph": chosen, "optimized_over_exported": ratio, "graphs": graphs, "check": chk, "shapes": shapes})
        else:  # ort-int8
            reduce_range = not cpu_has_vnni()
            graphs = {}
            timed = {}
            for g in ("optimized", "exported"):
                qpath = onnx_dir / f"int8-dynamic-qint8-perchannel{'-rr' if reduce_range else ''}-from-{g}.onnx"
                if not qpath.exists():
                    log(f"quantising the {g} graph to {qpath}")
                    quantize_onnx(paths[g], qpath, reduce_range)
                rt = OrtRuntime(qpath, args.threads)
                chk = check(f"{name} (from {g})", embedder, rt, inputs, batch, gated=False)
                timed[g] = (rt, chk, time_shapes(f"{name} (from {g})", rt, inputs, args.reps, args.warmup))
                graphs[g] = {
                    "onnx": str(qpath),
                    "ops": onnx_op_counts(qpath),
                    "check": chk,
                    "shapes_median_s": {k: v["median_s"] for k, v in timed[g][2].items()},
                }
            ratio = geo_mean_ratio(timed["optimized"][2], timed["exported"][2])
            chosen = "optimized" if ratio <= 1.0 else "exported"
            log(f"{name}: from-optimized/from-exported time ratio {ratio:.3f}: using the one from {chosen}")
            rt, chk, shapes = timed[chosen]
            del timed
            entry["quantization"] = {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "QInt8",
                "activations": "QUInt8, dynamic (DynamicQuantizeLinear)",
                "per_channel": QUANT_PER_CHANNEL,
                "op_types_to_quantize": list(QUANT_OPS),
                "reduce_range": reduce_range,
                "why_reduce_range": "CPU has VNNI" if not reduce_range else "no VNNI on this CPU",
            }
            entry.update({"graph": chosen, "optimized_over_exported": ratio, "graphs": graphs, "check": chk, "shapes": shapes})
        if inputs.get("workload"):
            entry["workload"] = time_workload(name, embedder, rt, inputs, args.workload_reps)
        if inputs.get("embed") and inputs["embed"].get("texts"):
            entry["embeddings"] = embed_for_quality(name, embedder, rt, inputs, batch, args.out.parent)
        result["runtimes"][name] = entry
        del rt
        gc.collect()

    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    write_atomic(args.out, result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
