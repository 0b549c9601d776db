#!/usr/bin/env python3
"""The standard quality figures of a sentence-embedding model, computed through
sentence-transformers / scipy / scikit-learn, for the Rust evaluation to match.

Usage::

    python tools/embed_eval_reference.py --model DIR --sts stsb-en-dev.csv \\
        --probe movie-sentences.tsv --out OUT.json [--batch 32]

Embeddings: ``SentenceTransformer(DIR, device="cpu").encode(texts,
batch_size=32, convert_to_numpy=True)``, float32, whatever the model folder's
modules do (all-MiniLM-L6-v2: mean pooling, then L2 normalisation).

STS (``--sts``: CSV without header, ``sentence1,sentence2,score``, standard CSV
quoting): Spearman rank correlation (``scipy.stats.spearmanr``, average ranks
for ties) between cosine(emb(s1), emb(s2)) (computed in float64) and the gold
score, times 100.

Probe (``--probe``: TSV with header ``split	label	score	text``, no quoting,
split train/test, label 0/1): L2-regularised logistic regression on the frozen
embeddings, ``sklearn.linear_model.LogisticRegression(C=1.0, penalty="l2",
solver="lbfgs", max_iter=10000, tol=1e-10, fit_intercept=True)`` trained on the
train rows (embeddings cast to float64 first: the same float32 values, but the
solver then works in float64), accuracy times 100 on the test rows.

The objective that the fit minimises, in the form the Rust side minimises::

    J(w, b) = C * sum_i log(1 + exp(-y_i (w . x_i + b))) + 0.5 * ||w||^2,   y_i in {-1, +1}

(scikit-learn minimises J / (C * n_train), the same minimiser; the intercept
is not penalised).  The output records J at the solution, the intercept, the
L2 norm of w, the gradient's largest component at the solution, and the
iteration count.

Output (JSON): sts_spearman, sts_pairs, probe_accuracy, probe_train,
probe_test, probe_intercept, probe_coef_l2_norm, probe_objective, plus
details (versions, model sha256, the per-class counts, timings).

Requirements: tools/requirements-peers.txt.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def log(msg: str) -> None:
    print(f"[embed_eval_reference] {msg}", file=sys.stderr, flush=True)


def read_sts(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if len(row) != 3:
                raise SystemExit(f"{path}: expected 3 columns, got {len(row)}: {row!r}")
            s1.append(row[0])
            s2.append(row[1])
            gold.append(float(row[2]))
    return s1, s2, np.asarray(gold, dtype=np.float64)


def read_probe(path: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    out: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        for row in reader:
            split = row[col["split"]]
            if split not in out:
                raise SystemExit(f"{path}: unknown split {split!r}")
            out[split][0].append(row[col["text"]])
            out[split][1].append(int(row[col["label"]]))
    return {k: (t, np.asarray(y, dtype=np.int64)) for k, (t, y) in out.items()}


def sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def objective(w: np.ndarray, b: float, x: np.ndarray, y01: np.ndarray, c: float) -> tuple[float, float]:
    """C * sum(logloss) + 0.5 ||w||^2 and the largest |component| of its gradient, in float64."""
    s = 2.0 * y01 - 1.0
    z = x @ w + b
    m = s * z
    loss = np.logaddexp(0.0, -m).sum()  # log(1 + exp(-m)), stable
    p = 1.0 / (1.0 + np.exp(m))  # sigmoid(-m)
    r = -s * p  # d loss / d z
    gw = c * (x.T @ r) + w
    gb = c * r.sum()
    return float(c * loss + 0.5 * float(w @ w)), float(max(np.abs(gw).max(), abs(gb)))


def main() -> int:
    ap = argparse.ArgumentParser(description="STS Spearman and logistic-probe accuracy through sentence-transformers.")
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--sts", required=True, type=Path)
    ap.add_argument("--probe", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import scipy
    import sentence_transformers
    import sklearn
    import torch
    import transformers
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    if args.threads:
        torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(args.model), device="cpu")
    model.eval()

    def embed(texts: list[str]) -> np.ndarray:
        e = model.encode(texts, batch_size=args.batch, convert_to_numpy=True, show_progress_bar=False)
        assert e.dtype == np.float32
        return e

    t0 = time.perf_counter()
    s1, s2, gold = read_sts(args.sts)
    e1 = embed(s1).astype(np.float64)
    e2 = embed(s2).astype(np.float64)
    cos = (e1 * e2).sum(1) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1))
    rho = spearmanr(cos, gold).statistic
    t_sts = time.perf_counter() - t0
    log(f"STS: {len(gold)} pairs, Spearman x100 = {100 * rho:.4f} ({t_sts:.1f} s)")

    t0 = time.perf_counter()
    probe = read_probe(args.probe)
    xtr = embed(probe["train"][0]).astype(np.float64)
    ytr = probe["train"][1]
    xte = embed(probe["test"][0]).astype(np.float64)
    yte = probe["test"][1]
    t_embed = time.perf_counter() - t0
    c = 1.0
    import warnings

    # scikit-learn >= 1.8 deprecates penalty= (l1_ratio=0 is the same L2 penalty); the
    # brief's exact call is kept and that one warning silenced.
    warnings.filterwarnings("ignore", message=".*'penalty' was deprecated.*", category=FutureWarning)
    clf = LogisticRegression(C=c, penalty="l2", solver="lbfgs", max_iter=10000, tol=1e-10, fit_intercept=True)
    t0 = time.perf_counter()
    clf.fit(xtr, ytr)
    t_fit = time.perf_counter() - t0
    assert list(clf.classes_) == [0, 1], clf.classes_
    w = clf.coef_[0].astype(np.float64)
    b = float(clf.intercept_[0])
    acc = float((clf.predict(xte) == yte).mean())
    train_acc = float((clf.predict(xtr) == ytr).mean())
    obj, grad = objective(w, b, xtr, ytr, c)
    log(
        f"probe: train {len(ytr)}, test {len(yte)}: accuracy x100 = {100 * acc:.4f}; objective {obj:.10g}, "
        f"max |gradient| {grad:.2e}, {int(clf.n_iter_[0])} iterations ({t_fit:.1f} s)"
    )

    weights = next((p for p in (args.model / "model.safetensors", args.model / "pytorch_model.bin") if p.exists()), None)
    result = {
        "sts_spearman": 100.0 * float(rho),
        "sts_pairs": int(len(gold)),
        "probe_accuracy": 100.0 * acc,
        "probe_train": int(len(ytr)),
        "probe_test": int(len(yte)),
        "probe_intercept": b,
        "probe_coef_l2_norm": float(np.linalg.norm(w)),
        "probe_objective": obj,
        "details": {
            "model": str(args.model),
            "model_weights_sha256": sha256(weights) if weights else None,
            "embedding_dim": int(xtr.shape[1]),
            "sts_file": str(args.sts),
            "probe_file": str(args.probe),
            "batch": args.batch,
            "probe_train_accuracy": 100.0 * train_acc,
            "probe_train_positives": int(ytr.sum()),
            "probe_test_positives": int(yte.sum()),
            "probe_C": c,
            "probe_objective_form": "C*sum_i log(1+exp(-s_i*(w.x_i+b))) + 0.5*||w||^2, s_i = 2*label-1, b not penalised",
            "probe_objective_max_abs_gradient": grad,
            "probe_n_iter": int(clf.n_iter_[0]),
            "probe_solver": "sklearn LogisticRegression(C=1.0, penalty='l2', solver='lbfgs', max_iter=10000, tol=1e-10), float64 inputs",
            "seconds": {"sts": t_sts, "probe_embed": t_embed, "probe_fit": t_fit},
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "scipy": scipy.__version__,
                "sklearn": sklearn.__version__,
                "numpy": np.__version__,
            },
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=str(args.out.parent))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
