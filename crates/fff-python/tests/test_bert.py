"""UltraFastBERT folders through the Rust pipeline, held to the NumPy reference's outputs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fffast import Bert

FIXTURES = Path(__file__).resolve().parents[2] / "fff-bert" / "tests" / "fixtures"


def expected(name):
    folder = FIXTURES / name
    return json.loads((folder / "expected.json").read_text()), load_file(folder / "expected.safetensors")


@pytest.mark.parametrize("name", ["tiny-fff", "tiny-ff", "tiny-fff-forest"])
def test_fill_mask_picks_the_reference_winner(name):
    meta, tensors = expected(name)
    model = Bert(FIXTURES / name)
    text = meta["texts"][0]
    preds = model.fill_mask(text, top_k=3)
    assert len(preds) == 1
    logits = tensors["mlm_logits"][0, preds[0].position]
    assert preds[0].ids[0] == int(logits.argmax())
    probs = [p for _, p in preds[0].top]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


def test_embed_is_the_mean_of_the_reference_hidden_states():
    meta, tensors = expected("tiny-fff")
    model = Bert(FIXTURES / "tiny-fff")
    texts = meta["texts"][:3]
    ours = model.embed(texts, pooling="mean")
    assert ours.shape == (3, model.hidden_size)
    mask = torch.tensor(meta["attention_mask"][:3], dtype=torch.float32).unsqueeze(-1)
    hidden = tensors["hidden"][:3]
    reference = (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=1e-3)


def test_bad_folder_and_options(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        Bert(tmp_path)
    model = Bert(FIXTURES / "tiny-fff")
    with pytest.raises(ValueError, match="pooling"):
        model.embed(["a text"], pooling="median")
    with pytest.raises(ValueError, match="mask"):
        model.fill_mask("no mask here")


def test_sentence_transformers_folder_embeds_as_sentence_transformers():
    """A Hugging Face BERT sentence-transformers folder: the model's own mean pooling and
    Normalize by default, equal to SentenceTransformer.encode (tools/hf_bert_fixtures.py)."""
    folder = FIXTURES / "hf" / "tiny-st"
    meta, tensors = expected(Path("hf") / "tiny-st")
    singles = [i for i, c in enumerate(meta["cases"]) if c["pair"] is None]
    model = Bert(folder)
    ours = model.embed([meta["cases"][i]["text"] for i in singles])
    want = torch.stack([tensors[f"case{i}.embedding"] for i in singles])
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(singles)), atol=1e-5, rtol=0)
    # Overrides: first-token pooling without normalisation is the [CLS] row of the hidden states.
    cls = model.embed([meta["cases"][singles[0]]["text"]], pooling="cls", normalize=False)
    torch.testing.assert_close(cls[0], tensors[f"case{singles[0]}.hidden"][0], atol=1e-4, rtol=0)
