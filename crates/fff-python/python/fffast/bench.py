"""Side-by-side timings of ``fffast.FFF`` against plain PyTorch: ``python -m fffast.bench``.

* training step (forward, backward, SGD update) of a 1x11 FFF, width 768, batch 4096:
  ``FFF`` vs UltraFastBERT's masked formulation (``MaskedFFF``);
* inference (``torch.no_grad``) at batches 1, 128 and 16384: ``FFF`` vs a dense feedforward of
  the same 4095 neurons (``Linear -> GELU -> Linear``, PyTorch's own SGEMM) and vs the masked
  formulation.

Each repetition times a block of back-to-back calls of every contender, in turn (warm caches, as
in a loop over batches), so drift on a shared host hits all of them alike; figures are medians
over repetitions with the spread of the per-repetition ratios. Before timing, each row
checks that ``FFF`` and the masked layer agree on the outputs (and, for training, the gradients)
at the size it times. ``--out FILE`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
from torch import nn

from . import FFF, MaskedFFF, simd_level


def cpu_name() -> str:
    """The CPU's model name, for naming the machine beside a figure."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _l3() -> str:
    try:
        for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            base = f"/sys/devices/system/cpu/cpu0/cache/{index}"
            with open(f"{base}/level") as f:
                if f.read().strip() == "3":
                    with open(f"{base}/size") as g:
                        return g.read().strip()
    except OSError:
        pass
    return "unknown"


def write_json(path: str, doc) -> None:
    """Writes ``doc`` as JSON to ``path`` atomically: a temporary name, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _block(fn, budget_s: float) -> float:
    """Seconds per call of ``fn`` over a block of back-to-back calls lasting about
    ``budget_s`` (at least one call)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return elapsed / calls


def _race(contenders: dict, reps: int, budget_s: float) -> dict:
    """Per repetition, one block of back-to-back calls of each contender, in turn; returns the
    seconds per call of every block, by contender."""
    for fn in contenders.values():
        _block(fn, budget_s / 4)  # warm-up: first-touch pages, thread pools, caches
    seconds = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            seconds[name].append(_block(fn, budget_s))
    return seconds


def _ratio(seconds: dict, slow: str, fast: str) -> dict:
    per_rep = [s / f for s, f in zip(seconds[slow], seconds[fast])]
    return {
        "median": statistics.median(seconds[slow]) / statistics.median(seconds[fast]),
        "min": min(per_rep),
        "max": max(per_rep),
    }


def _check_close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    err = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    scale = max(1.0, theirs.abs().max().item() if theirs.numel() else 0.0)
    if not err <= 1e-3 * scale:
        raise SystemExit(f"bench: {name}: FFF and the masked layer disagree by {err:.3g}")
    return err


def training_row(width: int, depth: int, batch: int, reps: int, budget_s: float) -> dict:
    """One SGD step of both layers on the same batch; gradients checked against each other."""
    torch.manual_seed(0)
    ours = FFF(width, width, depth, 1, activation="gelu")
    masked = MaskedFFF(width, width, depth, 1, activation="gelu")
    masked.load_state_dict(ours.state_dict())
    x = torch.randn(batch, width)
    target = torch.randn(batch, width)

    def grads(layer):
        layer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(layer(x), target)
        loss.backward()
        return [p.grad.clone() for p in layer.parameters()]

    for name, g_ours, g_masked in zip(["w_in", "b_in", "w_out"], grads(ours), grads(masked)):
        _check_close(f"gradient of {name}", g_ours, g_masked)

    def step(layer, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(layer(x), target).backward()
            opt.step()

        return run

    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-3)
    opt_masked = torch.optim.SGD(masked.parameters(), lr=1e-3)
    seconds = _race({"fffast": step(ours, opt_ours), "masked": step(masked, opt_masked)}, reps, budget_s)
    return {
        "what": "training step (forward + backward + SGD)",
        "layer": f"{1}x{depth}, width {width}",
        "batch": batch,
        "seconds_median": {k: statistics.median(v) for k, v in seconds.items()},
        "speedup_vs_masked": _ratio(seconds, "masked", "fffast"),
    }


def inference_row(width: int, depth: int, batch: int, reps: int, budget_s: float) -> dict:
    """``FFF`` under ``no_grad`` vs a dense FF of the same neuron count and the masked layer."""
    torch.manual_seed(0)
    ours = FFF(width, width, depth, 1, activation="gelu").eval()
    masked = MaskedFFF(width, width, depth, 1, activation="gelu").eval()
    masked.load_state_dict(ours.state_dict())
    neurons = ours.n_nodes
    dense = nn.Sequential(nn.Linear(width, neurons), nn.GELU(), nn.Linear(neurons, width)).eval()
    x = torch.randn(batch, width)
    with torch.no_grad():
        _check_close(f"inference output at batch {batch}", ours(x), masked(x))

        def call(layer):
            return lambda: layer(x)

        seconds = _race(
            {"fffast": call(ours), "dense": call(dense), "masked": call(masked)}, reps, budget_s
        )
    return {
        "what": "inference (torch.no_grad)",
        "layer": f"1x{depth}, width {width}",
        "batch": batch,
        "dense_neurons": neurons,
        "seconds_median": {k: statistics.median(v) for k, v in seconds.items()},
        "speedup_vs_dense": _ratio(seconds, "dense", "fffast"),
        "speedup_vs_masked": _ratio(seconds, "masked", "fffast"),
    }


def main(argv=None) -> None:
    """Runs the benchmark and prints (and optionally writes) the figures."""
    p = argparse.ArgumentParser(prog="python -m fffast.bench", description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--depth", type=int, default=11)
    p.add_argument("--train-batch", type=int, default=4096)
    p.add_argument("--batches", default="1,128,16384", help="inference batch sizes")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per contender")
    p.add_argument("--block", type=float, default=0.5, help="seconds per timed block")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args(argv)

    machine = {
        "cpu": cpu_name(),
        "l3": _l3(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "simd": simd_level(),
    }
    print(
        f"machine: {machine['cpu']}, L3 {machine['l3']}, {machine['logical_cpus']} logical CPUs; "
        f"torch {machine['torch']} on {machine['torch_threads']} threads; fffast {machine['simd']}"
    )
    rows = []
    row = training_row(args.width, args.depth, args.train_batch, args.reps, args.block)
    r = row["speedup_vs_masked"]
    print(
        f"{row['what']}, {row['layer']}, batch {row['batch']}: "
        f"{r['median']:.1f}x faster than masked torch (per-rep {r['min']:.1f}-{r['max']:.1f}x)"
    )
    rows.append(row)
    for batch in [int(b) for b in args.batches.split(",") if b]:
        row = inference_row(args.width, args.depth, batch, args.reps, args.block)
        d, m = row["speedup_vs_dense"], row["speedup_vs_masked"]
        print(
            f"{row['what']}, {row['layer']}, batch {batch}: {d['median']:.1f}x faster than "
            f"dense torch ({d['min']:.1f}-{d['max']:.1f}x), {m['median']:.1f}x than masked "
            f"({m['min']:.1f}-{m['max']:.1f}x)"
        )
        rows.append(row)
    if args.out:
        doc = {"command": "python -m fffast.bench", "reps": args.reps, "block_s": args.block, "machine": machine, "rows": rows}
        write_json(args.out, doc)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
