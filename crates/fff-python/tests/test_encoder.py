"""A compressed model folder (FFF blocks from `fff compress`) as a trainable PyTorch module: it
computes what the Rust engine computes, its FFF blocks train, and the fine-tuned weights saved
back into the folder load in the engine with the same outputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fffast import FFF, Bert, BertEncoder

FIXTURES = Path(__file__).resolve().parents[2] / "fff-bert" / "tests" / "fixtures" / "hf"


def batch():
    """Token ids of the teacher fixture's single-text cases (the same tokenizer), padded."""
    cases = json.loads((FIXTURES / "tiny-st" / "expected.json").read_text())["cases"]
    cases = [c for c in cases if c["pair"] is None and c["text"].strip()][:6]
    width = max(len(c["ids"]) for c in cases)
    ids = torch.zeros(len(cases), width, dtype=torch.long)
    mask = torch.zeros(len(cases), width, dtype=torch.long)
    for i, c in enumerate(cases):
        ids[i, : len(c["ids"])] = torch.tensor(c["ids"])
        mask[i, : len(c["ids"])] = 1
    return [c["text"] for c in cases], ids, mask


@pytest.mark.parametrize("name", ["tiny-st-fff", "tiny-st-fff-branch", "tiny-st"])
def test_the_module_computes_what_the_engine_computes(name):
    texts, ids, mask = batch()
    enc = BertEncoder.from_pretrained(FIXTURES / name)
    assert enc.normalize and enc.pooling == "mean"
    has_fff = any(isinstance(m, FFF) for m in enc.modules())
    assert has_fff == (name != "tiny-st")
    # A dense branch beside the trees: the block's own FFN, 5 neurons wide.
    layer = enc.encoder.layer[0]
    assert hasattr(layer, "intermediate") == (name != "tiny-st-fff")
    if name == "tiny-st-fff-branch":
        assert layer.intermediate.dense.weight.shape == (5, 32)
    with torch.no_grad():
        ours = enc.embed(ids, mask)
    engine = Bert(FIXTURES / name).embed(texts)
    assert (ours - engine).abs().max() < 1e-5


def test_fine_tuned_fff_blocks_save_back_into_a_folder_the_engine_runs(tmp_path):
    texts, ids, mask = batch()
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "tiny-st-fff", folder)
    enc = BertEncoder.from_pretrained(folder)
    # Fine-tune only the FFF blocks and their output biases, towards a fixed random target.
    for name, p in enc.named_parameters():
        p.requires_grad = ".fff." in name or name.endswith("output.dense.bias")
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(enc.parameters()))
    target = torch.nn.functional.normalize(torch.randn(len(texts), 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    opt = torch.optim.Adam(trainable, lr=1e-2)
    before = enc.embed(ids, mask).detach()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (enc.embed(ids, mask) - target).pow(2).sum()
        loss.backward()
        fff = enc.encoder.layer[0].fff
        assert fff.linear_in.weight.grad is not None and fff.linear_in.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        after = enc.embed(ids, mask)
    assert (after - before).abs().max() > 1e-3
    enc.save_pretrained_weights(folder)
    engine = Bert(folder).embed(texts)
    assert (after - engine).abs().max() < 1e-5


def test_a_folder_of_another_model_type_is_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "tiny-st", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "roberta"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type"):
        BertEncoder.from_pretrained(folder)
