"""The MNIST example and the dataset loader, on the real images in ../shared/data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fffast

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(),
                                reason=f"MNIST not found in {DATA}; skipping")


@needs_data
def test_loader_reads_and_verifies_mnist():
    data = fffast.datasets.load_images("mnist", DATA)
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert data.train_y.dtype.is_floating_point is False and int(data.train_y.max()) == 9
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) == 1.0
    signed = fffast.datasets.load_images("mnist", DATA, minus_one_one=True)
    assert float(signed.test_x.min()) == -1.0


def test_loader_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        fffast.datasets.load_images("mnist", tmp_path)
    with pytest.raises(ValueError, match="expected mnist or fashion-mnist"):
        fffast.datasets.load_images("cifar", tmp_path)


@needs_data
def test_mnist_example_learns(tmp_path):
    out = tmp_path / "mnist.json"
    subprocess.run([sys.executable, str(ROOT / "examples" / "mnist_torch.py"), "--data-dir",
                    str(DATA), "--epochs", "1", "--no-masked", "--out", str(out)],
                   check=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=600)
    result = json.loads(out.read_text())
    assert result["epochs"][0]["val_accuracy"] > 0.85
    assert result["test_accuracy"] > 0.85
