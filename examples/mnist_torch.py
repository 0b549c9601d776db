"""MNIST in PyTorch with fffast's FFF layer, timed against UltraFastBERT's masked formulation.

    python examples/mnist_torch.py --data-dir ../shared/data --epochs 10 --out docs/python_mnist.json

The net is the node-activation study's FFF net (784 -> FFF d8 -> ReLU -> FFF d8 -> 10, identity
nodes; AdamW, lr 1e-3, batch 64). The last 5000 training images are the validation split: the
epoch reported as best is chosen on it, and the test set is read once, at that epoch. Then the
same net, from the same initial weights, is built from `MaskedFFF` layers (every node computed,
then masked, as UltraFastBERT trains) and trained for one epoch on the same batches, so the two
epoch times are measured side by side in one run.

Without --data-dir the images come from fff's dataset cache, downloaded there on first use.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

import fffast
from fffast import FFF, MaskedFFF
from fffast.bench import cpu_name, write_json


def make_net(layer=FFF, seed=0, depth=8):
    return nn.Sequential(
        layer(784, 500, depth, 1, activation="identity", seed=seed),
        nn.ReLU(),
        layer(500, 10, depth, 1, activation="identity", seed=seed + 1),
    )


def accuracy(net, x, y, batch=1000):
    with torch.no_grad():
        correct = sum((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                      for i in range(0, len(x), batch))
    return correct / len(x)


def epoch(net, opt, x, y, batch, generator):
    """One pass over (x, y) in a seeded order; returns its seconds and the part of them spent
    in the optimizer's update."""
    order = torch.randperm(len(x), generator=generator)
    in_optimizer = 0.0
    start = time.perf_counter()
    net.train()
    for i in range(0, len(x), batch):
        idx = order[i:i + batch]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        before = time.perf_counter()
        opt.step()
        in_optimizer += time.perf_counter() - before
    return time.perf_counter() - start, in_optimizer


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (or its parent)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--depth", type=int, default=8, help="depth of both FFF layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-masked", action="store_true", help="skip the masked-layer epoch")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args()

    data = fffast.datasets.load_images("mnist", args.data_dir)
    train_x, train_y = data.train_x[:-5000], data.train_y[:-5000]
    val_x, val_y = data.train_x[-5000:], data.train_y[-5000:]

    torch.manual_seed(args.seed)
    net = make_net(FFF, args.seed, args.depth)
    masked = make_net(MaskedFFF, args.seed, args.depth)
    masked.load_state_dict(net.state_dict())  # same initial weights
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    rows, best, best_state = [], -1.0, None
    for e in range(1, args.epochs + 1):
        seconds, in_opt = epoch(net, opt, train_x, train_y, args.batch,
                                torch.Generator().manual_seed(args.seed * 1000 + e))
        net.eval()
        val = accuracy(net, val_x, val_y)
        rows.append({"epoch": e, "seconds": seconds, "optimizer_seconds": in_opt,
                     "val_accuracy": val})
        print(f"epoch {e}: {seconds:.2f} s ({in_opt:.2f} s in AdamW's update), "
              f"validation accuracy {100 * val:.2f}%")
        if val > best:
            best, best_state = val, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    best_epoch = max(rows, key=lambda r: r["val_accuracy"])["epoch"]
    test = accuracy(net.eval(), data.test_x, data.test_y)
    print(f"test accuracy at the best validation epoch ({best_epoch}): {100 * test:.2f}%")

    result = {
        "command": "python examples/mnist_torch.py " + " ".join(
            [f"--epochs {args.epochs}", f"--batch {args.batch}", f"--depth {args.depth}",
             f"--seed {args.seed}"]),
        "net": f"FFF(784, 500, depth {args.depth}, identity) -> ReLU -> "
               f"FFF(500, 10, depth {args.depth}, identity)",
        "machine": {"cpu": cpu_name(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "epochs": rows,
        "best_epoch": best_epoch,
        "test_accuracy": test,
    }
    if not args.no_masked:
        opt_m = torch.optim.AdamW(masked.parameters(), lr=1e-3, weight_decay=0.0)
        seconds, in_opt = epoch(masked, opt_m, train_x, train_y, args.batch,
                                torch.Generator().manual_seed(args.seed * 1000 + 1))
        first, first_opt = rows[0]["seconds"], rows[0]["optimizer_seconds"]
        result["masked_epoch_seconds"] = seconds
        result["masked_optimizer_seconds"] = in_opt
        result["epoch_speedup_vs_masked"] = seconds / first
        result["speedup_outside_optimizer"] = (seconds - in_opt) / (first - first_opt)
        print(f"masked formulation, epoch 1: {seconds:.2f} s ({in_opt:.2f} s in AdamW's "
              f"update), {seconds / first:.1f}x the FFF layer's {first:.2f} s; outside the "
              f"update {(seconds - in_opt) / (first - first_opt):.1f}x")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
