#!/usr/bin/env python3
"""Test fixtures for the Hugging Face BERT loader of ``crates/fff-bert``, written by
``transformers`` and ``sentence-transformers`` themselves.

What it writes (under ``--out``, normally ``crates/fff-bert/tests/fixtures/hf``)
------------------------------------------------------------------------------
Every model below is small and random (fixed seeds), with a WordPiece vocabulary
of about 400 tokens built here in the standard BERT layout ([PAD]=0,
[unused0..98]=1..99, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then
punctuation, digits, lower-case letters, a few non-ASCII characters, their
``##`` forms and some whole words / sub-words).  Weights are re-initialised so
that the numbers are not tiny: Linear / Embedding weights N(0, 0.3), biases
N(0, 0.1), LayerNorm weight 1 + N(0, 0.1), LayerNorm bias N(0, 0.1).

``tiny-st/``
    A sentence-transformers folder (Transformer -> mean Pooling -> Normalize),
    max_seq_length 20, around a ``transformers.BertModel`` (hidden 32, 2 layers,
    4 heads, intermediate 48, 40 positions, GELU): ``model.safetensors`` and
    ``config.json`` as ``SentenceTransformer.save`` wrote them (no ``bert.``
    prefix, pooler included), ``tokenizer.json`` built with the ``tokenizers``
    library and saved through ``transformers.BertTokenizerFast.save_pretrained``
    (``tokenizer_config.json`` with model_max_length 40; transformers 5 writes
    no special_tokens_map.json and, for a tokenizer built from a ``tokenizers``
    object, no vocab.txt: this script writes ``vocab.txt``), and
    ``modules.json`` / ``sentence_bert_config.json`` (max_seq_length 20,
    do_lower_case false) / ``1_Pooling/config.json`` (``pooling_mode_*``
    booleans) in the layout sentence-transformers 2.x-5.x wrote, which is what
    almost every model on the Hub has (all-MiniLM-L6-v2 included; no
    ``2_Normalize`` folder, as there).  ``SentenceTransformer(dir)`` loads it
    back with max_seq_length 20.
``tiny-st6/``
    The same model exactly as ``SentenceTransformer.save`` of
    sentence-transformers 6 writes it: ``sentence_bert_config.json`` without
    max_seq_length (it lives only in tokenizer_config.json's
    ``model_max_length``: 20), ``1_Pooling/config.json`` as
    ``{"embedding_dimension", "pooling_mode": "mean", "include_prompt"}``,
    ``2_Normalize/config.json``, module types under
    ``sentence_transformers.base.modules`` / ``.sentence_transformer.modules``.
    ``tiny-st/expected.*`` apply unchanged (checked: identical embeddings).
``tiny-mlm/``
    ``transformers.BertForMaskedLM`` (decoder tied to the word embeddings),
    saved as ``torch.save(model.state_dict(), "pytorch_model.bin")`` (names with
    the ``bert.`` / ``cls.predictions.`` prefixes; both the tied
    ``bert.embeddings.word_embeddings.weight`` and
    ``cls.predictions.decoder.weight`` are kept, sharing storage, as in real
    checkpoints) plus ``config.json``.  Cases contain ``[MASK]``.
``tiny-cls/``
    ``transformers.BertForSequenceClassification`` (3 labels, id2label
    negative / neutral / positive), ``model.safetensors`` via save_pretrained.
``minilm/``
    Expected outputs only (not the model) of
    ``/work/shared/models/all-MiniLM-L6-v2``, with the sha256 of its
    ``model.safetensors``.

Every folder has ``expected.json``::

    {"max_seq_length": N, "versions": {...},
     "cases": [{"text": str, "pair": str | null, "ids": [int], "type_ids": [int],
                "tokens": [str], "untruncated_len": int}, ...]}

``ids`` / ``type_ids`` are what the tokenizer gives, special tokens included,
with ``truncation="longest_first", max_length=max_seq_length``: the call
sentence-transformers' Transformer module makes (checked against its own
``preprocess``, pairs included).  Older sentence-transformers ``.strip()``-ped
every text first (6.x no longer does); the ids here are those of the stripped
texts, and the script asserts that stripping changes no id (the BERT
normaliser already turns every whitespace into a split), so a loader need not
strip.  ``untruncated_len`` is the length without truncation (specials
included).  ``max_seq_length`` is 20 for tiny-st, 40 (max_position_embeddings)
for tiny-mlm and tiny-cls, 256 for minilm.

and ``expected.safetensors`` (float32 unless said otherwise), case ``i``:

* ``case{i}.hidden``: ``last_hidden_state`` of the sequence run alone
  ([len, hidden], eval mode, attention mask all ones).  For minilm a case
  longer than 64 tokens is stored as ``case{i}.hidden_head`` (first 32 rows) and
  ``case{i}.hidden_tail`` (last 32 rows) instead (``"hidden_rows"`` in its
  expected.json case says which).
* tiny-st and minilm, single texts: ``case{i}.embedding`` =
  ``SentenceTransformer(dir).encode(text)`` (mean pooled, L2-normalised).
* tiny-st, every case: ``case{i}.pool.{mode}`` for mode in cls, max, mean,
  mean_sqrt_len, weightedmean, lasttoken: ``Pooling(32, pooling_mode=...)`` on
  ``case{i}.hidden`` (not normalised; mean_sqrt_len is sentence-transformers'
  ``mean_sqrt_len_tokens``).
* tiny-st: ``batch.hidden`` [n_single, padded_len, 32], ``batch.mask``
  (int64) [n_single, padded_len], ``batch.ids`` (int64, padded with [PAD]=0)
  from all single-text cases run as one right-padded batch, in case order;
  ``batch.pool.{mode}`` the Pooling modes over that padded batch and
  ``batch.embedding`` = ``encode(all single texts)``.  ``batch_cases`` in
  expected.json lists the case indices of the rows.
* tiny-mlm: ``case{i}.logits`` [len, vocab] (prediction scores).
* tiny-cls: ``case{i}.logits`` [3], ``case{i}.probs`` = softmax(logits) [3],
  ``case{i}.pooled`` (pooler output) [32], ``case{i}.hidden``.

The script checks itself: per-sequence hidden states against the rows of a
padded batch (largest difference printed, must be < 1e-5), embeddings against
mean-pool + normalise of the hidden states, the tokenizer through
``transformers`` against the bare ``tokenizers`` file (with its own truncation),
sentence-transformers' own preprocessing against the recorded ids, and every
saved model loaded back (``from_pretrained`` / ``SentenceTransformer(dir)``)
against the model that wrote it.

What a loader must match (all exercised by the cases)
----------------------------------------------------
* Added tokens ([PAD], [UNK], [CLS], [SEP], [MASK]: ``normalized`` false) are
  split out of the raw text before normalisation, case-sensitively: "[MASK]"
  is 103, "[mask]" is ``[ m ##a ##s ##k ]``.
* BertNormalizer: clean_text drops control and format characters (category
  C*, e.g. U+200B) and turns whitespace into spaces; CJK ideographs are
  isolated; lower-case, then strip accents (NFD, drop Mn) since strip_accents
  is null and lowercase true; characters that do not decompose (ß, æ, ø, ł)
  stay.  Words over 100 characters are one [UNK].
* The ``truncation`` / ``padding`` sections of tokenizer.json are ignored by
  transformers (all-MiniLM-L6-v2's says truncate at 128 and pad to 128);
  truncation is longest_first at max_seq_length, which for a pair is the
  tokenizers rule: with budget m = max_length - 3, if both are longer than
  m/2 the first gets floor(m/2) and the second ceil(m/2) when the first is
  not the longer one, the longer one gets ceil(m/2) otherwise; else only the
  longer is cut, to m - (the other's length).  Tokens are cut from the end,
  mid-word if need be.

Rerunning it
------------
::

    tools/encoder_peers.sh --help    # creates ~/.cache/fff-peers-venv if needed
    ~/.cache/fff-peers-venv/bin/python tools/hf_bert_fixtures.py \\
        --out crates/fff-bert/tests/fixtures/hf --minilm /work/shared/models/all-MiniLM-L6-v2

(--minilm: a sentence-transformers/all-MiniLM-L6-v2 folder; the sha256 of the
model.safetensors it was run on is in minilm/expected.json.)  It takes about
15 s on 2 cores.

Without ``--minilm`` (or if the folder is missing) ``minilm/`` is left as it is.
Requirements: ``tools/requirements-peers.txt``.  Written with torch 2.15.0,
transformers 5.25.0, sentence-transformers 6.3.0, tokenizers 0.23.3,
safetensors 0.8.0, numpy 2.4.6 (also recorded in each expected.json).  The
output is deterministic for a given set of versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from safetensors.numpy import save_file

POOL_MODES = {
    "cls": "cls",
    "max": "max",
    "mean": "mean",
    "mean_sqrt_len": "mean_sqrt_len_tokens",
    "weightedmean": "weightedmean",
    "lasttoken": "lasttoken",
}

HIDDEN = 32
MAX_POS = 40
ST_MAX_SEQ = 20


# --------------------------------------------------------------------------- vocab


def build_vocab() -> list[str]:
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab.index("[UNK]") == 100 and vocab.index("[MASK]") == 103
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    digits = list("0123456789")
    letters = list("abcdefghijklmnopqrstuvwxyz")
    # Characters that survive lower-casing + accent stripping (NFD, drop Mn): they
    # do not decompose.  The CJK pair and one emoji; 北, 京's neighbour 北 is not here.
    others = ["ß", "æ", "ø", "ł", "ω", "東", "京", "😀"]
    words = """
        the a an and of to in is it was for on with as at by be this that not no
        are you i am he she we they my your old how what who why where when
        quick brown fox jump over lazy dog hello world test text sentence word
        long short pair model token city very good bad great terrible boring okay
        movie film love loved hate guess year years six seven here there end
        cafe tokyo japan paris london bread food water man woman child play
        whitespace width zero tab new line punctuation mixed case accent combining
        emoji one two three first second maximum length truncated enough will
        certainly by tokenizer str leading trailing special lower upper number
        small big red green blue house car tree river street music song book
        read write run walk sun moon day night time people friend family school
        work happy sad fast slow open close left right
        """.split()
    subwords = """
        ##s ##ed ##ing ##er ##ly ##est ##ion ##ize ##izer ##ization ##able ##ive
        ##ume ##believ ##ful ##ness ##ment ##ai ##ve ##ch ##th ##ou ##ra ##ca
        ##sir ##re ##dz ##mega un re res na tok em bo
        """.split()
    out: list[str] = []
    for t in vocab + punct + digits + letters + others + ["##" + c for c in digits + letters + others[:5]] + words + subwords:
        if t not in out:
            out.append(t)
    return out


def build_tokenizer(vocab: list[str], model_max_length: int):
    """tokenizers.Tokenizer (BERT normaliser / pre-tokenizer / WordPiece / template)
    wrapped in transformers' BertTokenizerFast."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]]
    )
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, do_lower_case=True)


def write_vocab_txt(vocab: list[str], folder: Path) -> None:
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")


# --------------------------------------------------------------------------- models


def bert_config(vocab_size: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=MAX_POS,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        pad_token_id=0,
        **extra,
    )


def reinit(model: torch.nn.Module, seed: int) -> None:
    """Linear/Embedding weights N(0,0.3), biases N(0,0.1), LayerNorm 1+N(0,0.1) / N(0,0.1).
    named_parameters() yields a tied parameter once, so tying survives."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if isinstance(owner, torch.nn.LayerNorm):
                p.copy_((1.0 + 0.1 * noise) if leaf == "weight" else 0.1 * noise)
            elif leaf == "bias":
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)
    model.eval()


# --------------------------------------------------------------------------- helpers


def versions() -> dict[str, str]:
    import safetensors
    import sentence_transformers
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dump_json(obj: dict, path: Path) -> None:
    """Top level indented, one case per line."""
    lines = ["{"]
    items = list(obj.items())
    for k, (key, value) in enumerate(items):
        comma = "," if k + 1 < len(items) else ""
        if key == "cases":
            lines.append(f' "cases": [')
            for j, case in enumerate(value):
                lines.append("  " + json.dumps(case, ensure_ascii=False) + ("," if j + 1 < len(value) else ""))
            lines.append(" ]" + comma)
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def encode_case(tokenizer, text: str, pair: str | None, max_length: int, tokenizer_json: Path) -> dict:
    """ids as sentence-transformers' Transformer would feed them, checked against the bare
    tokenizers file with its own truncation."""
    from tokenizers import Tokenizer

    a = text.strip()
    b = pair.strip() if pair is not None else None
    enc = tokenizer(a, b, truncation="longest_first", max_length=max_length)
    raw = tokenizer(text, pair, truncation="longest_first", max_length=max_length)
    assert raw["input_ids"] == enc["input_ids"], f"strip() changes the ids of {text!r}"
    full = tokenizer(a, b, truncation=False)
    # all-MiniLM-L6-v2's tokenizer.json carries "truncation": 128 and "padding": Fixed 128;
    # transformers overrides both with the call's arguments, so must a loader.
    bare = Tokenizer.from_file(str(tokenizer_json))
    bare.no_padding()
    bare.enable_truncation(max_length=max_length, strategy="longest_first")
    e2 = bare.encode(a, b) if b is not None else bare.encode(a)
    assert e2.ids == enc["input_ids"] and e2.type_ids == enc["token_type_ids"], (text, pair, e2.ids, enc["input_ids"])
    return {
        "text": text,
        "pair": pair,
        "ids": list(enc["input_ids"]),
        "type_ids": list(enc["token_type_ids"]),
        "tokens": tokenizer.convert_ids_to_tokens(enc["input_ids"]),
        "untruncated_len": len(full["input_ids"]),
    }


def run_alone(bert, case: dict) -> torch.Tensor:
    ids = torch.tensor([case["ids"]])
    tt = torch.tensor([case["type_ids"]])
    with torch.inference_mode():
        out = bert(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=tt)
    return out


def run_batch(bert, cases: list[dict]):
    n = max(len(c["ids"]) for c in cases)
    ids = torch.zeros((len(cases), n), dtype=torch.int64)
    tt = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for r, c in enumerate(cases):
        k = len(c["ids"])
        ids[r, :k] = torch.tensor(c["ids"])
        tt[r, :k] = torch.tensor(c["type_ids"])
        mask[r, :k] = 1
    with torch.inference_mode():
        hidden = bert(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    return ids, mask, hidden


def check_batch_rows(name: str, singles: dict[int, torch.Tensor], rows: list[int], mask, hidden) -> float:
    worst = 0.0
    for r, i in enumerate(rows):
        k = int(mask[r].sum())
        worst = max(worst, float((hidden[r, :k] - singles[i]).abs().max()))
    print(f"{name}: per-sequence vs padded-batch hidden states, max |diff| = {worst:.3e}")
    assert worst < 1e-5, worst
    return worst


def st_module_classes():
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 5.2
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def pool(mode: str, token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    _, Pooling, _ = st_module_classes()
    p = Pooling(token_embeddings.shape[-1], pooling_mode=POOL_MODES[mode])
    with torch.inference_mode():
        return p({"token_embeddings": token_embeddings, "attention_mask": mask})["sentence_embedding"]


def check_st_preprocess(st, cases: list[dict]) -> None:
    """sentence-transformers' own tokenisation must give the recorded ids."""
    for c in cases:
        inp = c["text"] if c["pair"] is None else (c["text"], c["pair"])
        try:
            feats = st.preprocess([inp])
        except Exception as e:  # pairs may not be accepted by every version
            if c["pair"] is None:
                raise
            print(f"  (sentence-transformers does not preprocess pairs here: {type(e).__name__}: {e})")
            continue
        got = feats["input_ids"][0].tolist()
        assert got == c["ids"], (c["text"], c["pair"], got, c["ids"])
        if "token_type_ids" in feats:
            assert feats["token_type_ids"][0].tolist() == c["type_ids"]


def np32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).numpy())


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- cases

ST_SINGLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello World! This is a TEST of the Tokenizer.",
    "Café naïve résumé",
    "東京 is a city 😀 and 北京 🙂",
    "Cafe\u0301 Straße Æsir Øre Łódź Ωmega",  # combining acute; characters that do not decompose
    "   leading and trailing whitespace \t\n",
    "",
    "This sentence is certainly long enough that it will be truncated at the maximum length of twenty.",
    "zero\u200bwidth, a tab\there and a new\nline; punctuation!?",
    "one word of " + "ab" * 55 + " chars",  # a 110-character word: [UNK] (max_input_chars_per_word 100)
]
ST_PAIRS = [
    ("How old are you?", "I am six years old."),
    ("Café in 東京", "The film was great 😀"),
    ("short one", "This second sentence is long enough that only it will be truncated here."),
    ("The first sentence is the longer one of this pair, by far.", "The second one is short too, no?"),
]

MLM_CASES = [
    ("The quick brown [MASK] jumps over the lazy dog.", None),
    ("[MASK] is a city in japan.", None),
    ("Hello [MASK][MASK]!", None),
    ("A lower-case [mask] is not special, but [MASK] is.", None),
    ("The film was [MASK].", "I [MASK] it."),
]

CLS_CASES = [
    ("This movie was great!", None),
    ("A terrible, boring film.", None),
    ("It was okay, I guess.", None),
    ("The film was great.", "I loved it."),
    ("Was the movie good?", "No, it was bad."),
    ("Café in 東京", "Very good 😀"),
]

LONG_PARAGRAPH = (
    "The history of the city goes back more than two thousand years. Its old town, with narrow "
    "streets, small squares and churches from many centuries, is one of the best preserved in "
    "Europe. Every summer thousands of visitors walk along the river, eat in the cafés near the "
    "market and listen to concerts in the evening. "
)
MINILM_SINGLES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Crème brûlée à la française, naïve café, coöperate, résumé.",
    "東京は日本の首都です。🍕 Ελληνικά и русский текст",
    "",
    (LONG_PARAGRAPH * 5).strip(),
    "  Leading/trailing whitespace, MIXED case & punctuation: (e.g.) 3.14159!  ",
]
MINILM_PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("How do I bake bread?", "Bread needs flour, water, yeast and salt."),
    ((LONG_PARAGRAPH * 3).strip(), (LONG_PARAGRAPH * 2).strip()),
]


# --------------------------------------------------------------------------- writers


def write_tiny_st(out: Path, vocab: list[str], vers: dict) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    Transformer, Pooling, Normalize = st_module_classes()
    folder = out / "tiny-st"
    folder6 = out / "tiny-st6"
    for f in (folder, folder6):
        if f.exists():
            shutil.rmtree(f)
    torch.manual_seed(0)
    bert0 = BertModel(bert_config(len(vocab)))
    reinit(bert0, seed=1)
    tokenizer = build_tokenizer(vocab, MAX_POS)

    # tiny-st6: the folder exactly as this sentence-transformers writes it.
    with tempfile.TemporaryDirectory() as tmp:
        bert0.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=ST_MAX_SEQ)
        st = SentenceTransformer(
            modules=[transformer, Pooling(HIDDEN, pooling_mode="mean"), Normalize()], device="cpu"
        )
        st.save(str(folder6))
    for junk in ["README.md"]:
        if (folder6 / junk).exists():
            (folder6 / junk).unlink()
    write_vocab_txt(vocab, folder6)

    # tiny-st: the same model in the layout of sentence-transformers 2.x-5.x, which is what
    # almost every model on the Hub has (all-MiniLM-L6-v2 included): max_seq_length in
    # sentence_bert_config.json, pooling_mode_* booleans, tokenizer model_max_length 40.
    folder.mkdir(parents=True)
    shutil.copy(folder6 / "model.safetensors", folder / "model.safetensors")
    shutil.copy(folder6 / "config.json", folder / "config.json")
    shutil.copy(folder6 / "config_sentence_transformers.json", folder / "config_sentence_transformers.json")
    tokenizer.save_pretrained(str(folder))
    write_vocab_txt(vocab, folder)
    (folder / "1_Pooling").mkdir()
    classic = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": ST_MAX_SEQ, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    }
    for name, obj in classic.items():
        (folder / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tokenizer_json = folder / "tokenizer.json"
    assert json.loads(tokenizer_json.read_text()) == json.loads((folder6 / "tokenizer.json").read_text())

    st = SentenceTransformer(str(folder), device="cpu")
    st.eval()
    assert st.max_seq_length == ST_MAX_SEQ, st.max_seq_length
    st6 = SentenceTransformer(str(folder6), device="cpu")
    st6.eval()
    assert st6.max_seq_length == ST_MAX_SEQ, st6.max_seq_length
    bert = BertModel.from_pretrained(str(folder)).eval()  # what the folder holds
    for (n0, p0), (n1, p1) in zip(sorted(bert0.state_dict().items()), sorted(bert.state_dict().items())):
        assert n0 == n1 and torch.equal(p0, p1), f"tiny-st: {n0} / {n1} differ after save + load"
    tokenizer = build_tokenizer(vocab, MAX_POS)

    cases = [encode_case(tokenizer, t, None, ST_MAX_SEQ, tokenizer_json) for t in ST_SINGLES]
    cases += [encode_case(tokenizer, a, b, ST_MAX_SEQ, tokenizer_json) for a, b in ST_PAIRS]
    check_st_preprocess(st, cases)

    tensors: dict[str, np.ndarray] = {}
    singles: dict[int, torch.Tensor] = {}
    for i, c in enumerate(cases):
        h = run_alone(bert, c).last_hidden_state[0]
        singles[i] = h
        tensors[f"case{i}.hidden"] = np32(h)
        ones = torch.ones((1, h.shape[0]), dtype=torch.int64)
        for mode in POOL_MODES:
            tensors[f"case{i}.pool.{mode}"] = np32(pool(mode, h[None], ones)[0])
        if c["pair"] is None:
            emb = st.encode(c["text"], convert_to_numpy=True)
            assert emb.shape == (HIDDEN,) and emb.dtype == np.float32
            mean = h.mean(0)
            ref = mean / mean.norm().clamp_min(1e-12)
            d = float(np.abs(emb - ref.numpy()).max())
            assert d < 1e-5, (i, d)
            tensors[f"case{i}.embedding"] = emb

    rows = [i for i, c in enumerate(cases) if c["pair"] is None]
    ids, mask, hidden = run_batch(bert, [cases[i] for i in rows])
    check_batch_rows("tiny-st", singles, rows, mask, hidden)
    tensors["batch.hidden"] = np32(hidden)
    tensors["batch.mask"] = mask.numpy().astype(np.int64)
    tensors["batch.ids"] = ids.numpy().astype(np.int64)
    for mode in POOL_MODES:
        tensors[f"batch.pool.{mode}"] = np32(pool(mode, hidden, mask))
    tensors["batch.embedding"] = st.encode([cases[i]["text"] for i in rows], convert_to_numpy=True, batch_size=32)
    d = float(np.abs(tensors["batch.embedding"] - np.stack([tensors[f"case{i}.embedding"] for i in rows])).max())
    print(f"tiny-st: encode(all) vs encode(each), max |diff| = {d:.3e}")
    assert d < 1e-5
    e6 = st6.encode([cases[i]["text"] for i in rows], convert_to_numpy=True, batch_size=32)
    assert np.array_equal(e6, tensors["batch.embedding"]), "tiny-st6 and tiny-st differ"
    check_st_preprocess(st6, cases)

    save_file(tensors, str(folder / "expected.safetensors"))
    dump_json(
        {
            "max_seq_length": ST_MAX_SEQ,
            "versions": vers,
            "pooling_modes": {k: v for k, v in POOL_MODES.items()},
            "batch_cases": rows,
            "cases": cases,
        },
        folder / "expected.json",
    )
    summary("tiny-st", folder, cases)
    (folder6 / "SAME_AS_TINY_ST.txt").write_text(
        "The model of ../tiny-st saved by SentenceTransformer.save() of sentence-transformers "
        f"{vers['sentence_transformers']} (max_seq_length only in tokenizer_config.json's model_max_length, "
        "pooling_mode in 1_Pooling/config.json); ../tiny-st/expected.* apply to it unchanged.\n",
        encoding="utf-8",
    )
    print(f"tiny-st6: {folder_size(folder6) / 1024:.0f} KiB in {folder6} (same weights, ST {vers['sentence_transformers']} layout)")


def write_tiny_mlm(out: Path, vocab: list[str], vers: dict) -> None:
    from transformers import BertForMaskedLM

    folder = out / "tiny-mlm"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config(len(vocab), architectures=["BertForMaskedLM"]))
    reinit(model, seed=2)
    emb = model.bert.embeddings.word_embeddings.weight
    dec = model.cls.predictions.decoder.weight
    assert emb.data_ptr() == dec.data_ptr(), "decoder is not tied to the word embeddings"
    state = model.state_dict()
    torch.save(state, str(folder / "pytorch_model.bin"))
    model.config.save_pretrained(str(folder))
    tokenizer = build_tokenizer(vocab, MAX_POS)
    tokenizer.save_pretrained(str(folder))
    write_vocab_txt(vocab, folder)

    loaded = BertForMaskedLM.from_pretrained(str(folder)).eval()
    cases = [encode_case(tokenizer, a, b, MAX_POS, folder / "tokenizer.json") for a, b in MLM_CASES]
    tensors = {}
    for i, c in enumerate(cases):
        logits = run_alone(model, c).logits[0]
        again = run_alone(loaded, c).logits[0]
        assert torch.equal(logits, again), f"tiny-mlm case {i}: reloaded model differs"
        tensors[f"case{i}.logits"] = np32(logits)
    save_file(tensors, str(folder / "expected.safetensors"))
    names = sorted(state.keys())
    by_ptr: dict[int, list[str]] = {}
    for n in names:
        by_ptr.setdefault(state[n].data_ptr(), []).append(n)
    tied = [group for group in by_ptr.values() if len(group) > 1]
    dump_json(
        {
            "max_seq_length": MAX_POS,
            "versions": vers,
            "state_dict_names": names,
            "tied": tied,
            "cases": cases,
        },
        folder / "expected.json",
    )
    summary("tiny-mlm", folder, cases)
    print(f"  state_dict: {len(names)} names; sharing storage: {tied}")


def write_tiny_cls(out: Path, vocab: list[str], vers: dict) -> None:
    from transformers import BertForSequenceClassification

    folder = out / "tiny-cls"
    if folder.exists():
        shutil.rmtree(folder)
    torch.manual_seed(0)
    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    cfg = bert_config(
        len(vocab),
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(cfg)
    reinit(model, seed=3)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer = build_tokenizer(vocab, MAX_POS)
    tokenizer.save_pretrained(str(folder))
    write_vocab_txt(vocab, folder)
    loaded = BertForSequenceClassification.from_pretrained(str(folder)).eval()

    cases = [encode_case(tokenizer, a, b, MAX_POS, folder / "tokenizer.json") for a, b in CLS_CASES]
    tensors = {}
    for i, c in enumerate(cases):
        ids = torch.tensor([c["ids"]])
        tt = torch.tensor([c["type_ids"]])
        with torch.inference_mode():
            out_ = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=tt)
            again = loaded(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=tt)
            base = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=tt)
        assert torch.equal(out_.logits, again.logits)
        logits = out_.logits[0]
        tensors[f"case{i}.logits"] = np32(logits)
        tensors[f"case{i}.probs"] = np32(torch.softmax(logits, -1))
        tensors[f"case{i}.hidden"] = np32(base.last_hidden_state[0])
        tensors[f"case{i}.pooled"] = np32(base.pooler_output[0])
    save_file(tensors, str(folder / "expected.safetensors"))
    dump_json({"max_seq_length": MAX_POS, "versions": vers, "id2label": id2label, "cases": cases}, folder / "expected.json")
    summary("tiny-cls", folder, cases)
    for i in range(len(cases)):
        p = tensors[f"case{i}.probs"]
        print(f"  case{i} probs {np.round(p, 4).tolist()}")


def write_minilm(out: Path, model_dir: Path, vers: dict) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertModel

    folder = out / "minilm"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.eval()
    max_seq = st.max_seq_length
    assert max_seq == 256, max_seq
    bert = BertModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    cases = [encode_case(tokenizer, t, None, max_seq, model_dir / "tokenizer.json") for t in MINILM_SINGLES]
    cases += [encode_case(tokenizer, a, b, max_seq, model_dir / "tokenizer.json") for a, b in MINILM_PAIRS]
    check_st_preprocess(st, cases)
    assert any(c["untruncated_len"] > max_seq and c["pair"] is None for c in cases)
    assert any(c["untruncated_len"] > max_seq and c["pair"] is not None for c in cases)

    tensors = {}
    singles = {}
    for i, c in enumerate(cases):
        h = run_alone(bert, c).last_hidden_state[0]
        singles[i] = h
        if h.shape[0] > 64:
            c["hidden_rows"] = "head_tail"
            tensors[f"case{i}.hidden_head"] = np32(h[:32])
            tensors[f"case{i}.hidden_tail"] = np32(h[-32:])
        else:
            c["hidden_rows"] = "full"
            tensors[f"case{i}.hidden"] = np32(h)
        if c["pair"] is None:
            emb = st.encode(c["text"], convert_to_numpy=True)
            mean = h.mean(0)
            ref = mean / mean.norm().clamp_min(1e-12)
            d = float(np.abs(emb - ref.numpy()).max())
            assert d < 1e-5, (i, d)
            tensors[f"case{i}.embedding"] = emb
    rows = list(range(len(cases)))
    _, mask, hidden = run_batch(bert, cases)
    check_batch_rows("minilm", singles, rows, mask, hidden)

    save_file(tensors, str(folder / "expected.safetensors"))
    dump_json(
        {
            "max_seq_length": max_seq,
            "versions": vers,
            "model": str(model_dir),
            "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
            "cases": cases,
        },
        folder / "expected.json",
    )
    summary("minilm", folder, cases)


def summary(name: str, folder: Path, cases: list[dict]) -> None:
    n_single = sum(c["pair"] is None for c in cases)
    trunc = sum(c["untruncated_len"] > len(c["ids"]) for c in cases)
    lens = [len(c["ids"]) for c in cases]
    unk = sum(c["ids"].count(100) for c in cases)
    print(
        f"{name}: {len(cases)} cases ({n_single} single, {len(cases) - n_single} pairs, {trunc} truncated), "
        f"lengths {min(lens)}..{max(lens)}, {unk} [UNK]s; {folder_size(folder) / 1024:.0f} KiB in {folder}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--minilm", type=Path, default=None, help="a sentence-transformers all-MiniLM-L6-v2 folder")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    vers = versions()
    vocab = build_vocab()
    print(f"vocabulary: {len(vocab)} tokens; versions {vers}")
    write_tiny_st(args.out, vocab, vers)
    write_tiny_mlm(args.out, vocab, vers)
    write_tiny_cls(args.out, vocab, vers)
    if args.minilm is not None and (args.minilm / "model.safetensors").exists():
        write_minilm(args.out, args.minilm, vers)
    else:
        print("minilm: skipped (no --minilm folder)")
    print(f"total: {folder_size(args.out) / 1024:.0f} KiB under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
