#!/usr/bin/env python3
"""Reference forward pass of crammedBERT / UltraFastBERT in numpy, and the generator
of the small test fixtures under ``crates/fff-bert/tests/fixtures``.

What this is
------------
An independent re-implementation, in plain numpy and float64, of the inference
(eval-mode, no dropout) forward pass of the PyTorch models that UltraFastBERT was
trained and released with.  It is written from reading the original code; no
code is copied from it.  The original code it follows:

* ``pbelcak/UltraFastBERT``: ``training/cramming/architectures/crammed_bert.py``
  (``TransformerLayer``, ``FFNComponent``, ``ScriptableLM``,
  ``ScriptableLMForPreTraining``, ``ScriptableLMForSequenceClassification``),
  ``training/cramming/architectures/fff.py`` (class ``FFF``) and
  ``training/cramming/config/arch/crammed-bert-fff.yaml``;
* ``JonasGeiping/cramming``: ``cramming/architectures/components.py``
  (``EmbeddingComponent``, ``PoolingComponent``, ``GLU``, ``_get_nonlin_fn``,
  ``get_extended_attention_mask``), ``cramming/architectures/embeddings.py``
  (``SinusoidalPositional`` / ``ScaledSinosoidal``) and
  ``cramming/architectures/attention.py`` (``SeqFirstSelfAttention``,
  ``TorchSoftmax``).

The model, in short (B = batch, S = sequence, H = hidden):

* embedding: ``word_embedding[ids] + scale_factor * pe[:S]`` where ``pe`` is the
  sinusoid table (``pe[:, 0::2] = sin(pos*div)``, ``pe[:, 1::2] = cos(pos*div)``,
  ``div = exp(arange(0, H, 2) * (-ln(10000)/H))``, computed in float32 as torch
  does), then LayerNorm;
* pre-LN blocks: ``h += attn(norm1(h))``, ``h += ffn(norm2(h))``;
* attention: ``query_key_value`` (no bias) gives ``[..., 3H]``, viewed as
  ``[..., heads, 3*head_dim]`` and split into q | k | v along the last axis;
  ``scores = q.k * norm_factor`` (the stored buffer ``1/sqrt(head_dim)``), plus
  ``(1 - mask) * -10000`` over the key axis, softmax over keys, ``probs.v``,
  heads concatenated in order, then ``attn.dense``;
* FFN: either the FFF (``linear_in`` with bias -> GELU on every node -> hard
  descent from node 0 of every tree for ``depth`` steps, ``next = 2n+1+(z>0)``
  -> only the visited nodes keep their activation -> ``linear_out``, no bias),
  or the dense crammedBERT FFN (``dense_in`` -> GELU-GLU -> ``dense_out``);
* final LayerNorm, then the tied MLM decoder ``h . word_embedding^T`` (no bias,
  no head transform), or the classifier: first token -> Linear -> Tanh -> Linear.

The script checks itself: the attention is computed a second time with plain
loops over heads and positions, and the FFF a second time by walking each
token's path node by node (with the ``2n+1+(z>0)`` rule, while the vectorised
form uses the original's "platform" formula); both must agree to 1e-10.  The
saved checkpoints are then loaded back (prefix stripping, decoder fallback) and
the forward pass is repeated from the files; it must agree bit for bit.

Rerunning it
------------
::

    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install -r tools/requirements.txt
    /tmp/fixture-venv/bin/python3 tools/ultrafastbert_reference.py --out crates/fff-bert/tests/fixtures

Requirements (``tools/requirements.txt``): numpy, safetensors, tokenizers.  No
torch.  The output is deterministic for a given set of package versions.

Tokenization and special tokens (the Rust side must do exactly this)
--------------------------------------------------------------------
Special tokens, ids 0..6: ``<pad> <s> </s> <unk> <cls> <sep> <mask>``.  The
tokenizer (WordPiece with a vocabulary built from ~30 sentences, see
``build_tokenizer``; lowercase normalizer, BERT whitespace+punctuation
pre-tokenizer, no post-processor) is applied with
``encode(text, add_special_tokens=False)``; ``<mask>`` written in a text is
matched as the special token.  Then, with ``L = max_seq_length``:

* MLM input:  ``tokens(A)[:L-1] + [<sep>]``.
* Classification input: ``[<cls>] + A + [<sep>] + B + [<sep>]``, with B empty
  for a single text (cramming's downstream preparation encodes single texts as a
  pair with an empty second text, so fine-tuned checkpoints saw
  ``<cls> A <sep> <sep>``), where A and B are first truncated "longest first":
  while ``len(A) + len(B) > L - 3``, drop the last token of the longer of A and
  B (of A when they are equally long).  For a single text this is ``A[:L-3]``.

The batch is right-padded with ``<pad>`` (id 0) to its longest sequence and the
attention mask is 1 on real tokens, 0 on padding.  Padded positions are run
through the model like any other (they attend only to the real keys), and are
included in every stored tensor.

Fixtures written (each folder: config.json, model.safetensors, tokenizer.json,
expected.json, expected.safetensors)
-----------------------------------------------------------------------------
* ``tiny-fff``: 2 layers, hidden 64, 4 heads, FFF with 1 tree of depth 3, MLM,
  ``decoder.weight`` saved.
* ``tiny-fff-forest``: as tiny-fff but 2 trees of depth 2; no ``decoder.weight``
  (a loader must fall back to the word embedding) and every key prefixed with
  ``_orig_mod.`` (as ``torch.compile`` saves them).
* ``tiny-ff``: dense crammedBERT FFN (``intermed_type`` "ff", intermed_size 128,
  GELU-GLU, so ``dense_out`` takes 64), ``use_bias`` true, MLM.
* ``tiny-fff-cls``: as tiny-fff but a sequence classifier (3 labels, head_dim 32,
  "zero_index" pooler), no decoder.

``expected.safetensors`` holds ``embedding`` (after the embedding LayerNorm),
``layer0`` (after block 0), ``hidden`` (after the final norm), all [B, S, H], and
``mlm_logits`` [B, S, V] or ``cls_logits`` [B, 3] (+ ``pooled`` [B, head_dim]).
``expected.json`` holds the texts, token strings, input_ids, attention_mask, and
for FFF models ``routes[layer][sequence][position][tree]`` (the visited node
indices within the tree, root first) and ``route_min_abs_z``, the smallest |z|
over all routing decisions (weights are re-drawn until it is >= ROUTE_MARGIN).

Where the original differs from a plain reading of the architecture
-------------------------------------------------------------------
* UltraFastBERT's ``TransformerLayer`` builds the dense FFN only when
  ``intermed_type`` is absent or exactly ``'ff'`` (lower case) and the FFF only for
  exactly ``'fff'``; anything else, e.g. ``'FF'``, raises.  The dense fixture
  therefore says ``"ff"``.
* ``FFF.linear_in`` always has a bias and ``linear_out`` never has one, whatever
  ``use_bias`` says; the pooler and classifier ``Linear`` layers always have
  biases; ``qkv_bias`` (false) governs ``query_key_value`` only.
* ``norm_factor`` is ``torch.tensor(head_dim).rsqrt()``, a persistent float32
  buffer of shape [] that is saved in the checkpoint.
* The original MLM model returns logits flattened to [B*S, V]; here they are
  kept as [B, S, V].
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 3, 4, 5, 6

MAX_SEQ_LENGTH = 16
NORM_EPS = 1e-12
MASK_FILL = -10000.0  # get_extended_attention_mask: (1 - mask) * -10000
WEIGHT_STD = 0.2  # std of the random linear weights and embeddings
ROUTE_MARGIN = 5e-3  # every routing logit must satisfy |z| >= this (float32 errors are ~1e-5)
SELF_CHECK_TOL = 1e-10
TOKENIZER_VOCAB_SIZE = 180
SUFFIX_PIECES = ["##s", "##es", "##ed", "##er", "##ing", "##ly"]

TRUNCATION_RULE = (
    "Tokenize with encode(text, add_special_tokens=False). L = max_seq_length = 16. "
    "MLM: ids = A[:L-1] + [<sep>=5]. "
    "Classification: ids = [<cls>=4] + A + [<sep>=5] + B + [<sep>=5], B empty for a single "
    "text (cramming encodes single texts as a pair with an empty second text); before adding "
    "the specials, while len(A) + len(B) > L - 3, remove the last token of the longer of A and "
    "B (A on a tie), i.e. 'longest first'. For a single text this is A[:L-3]. Right-pad the batch with <pad>=0 to its longest sequence; attention_mask is "
    "1 on real tokens, 0 on padding."
)

# ~30 short sentences the tiny WordPiece vocabulary is built from.  No digits, no "!" and no
# accented letters, so that words containing them become <unk>.
CORPUS = [
    "The cat sat on the mat.",
    "A dog is running in the park.",
    "The quick brown fox jumps over the lazy dog.",
    "She reads a book under the tall tree.",
    "We walked along the river in the morning.",
    "The old man was reading the news.",
    "Birds sing in the garden every morning.",
    "He drinks coffee and she drinks tea.",
    "The children are playing with a red ball.",
    "It was raining when we left the house.",
    "The small cat and the big dog are friends.",
    "Is it raining outside today?",
    "My brother likes to cook dinner for us.",
    "They opened the window to let the air in.",
    "The train was late again this evening.",
    "Please close the door when you leave.",
    "The sun is shining over the green hills.",
    "I think the movie was very good.",
    "Our teacher told a funny story in class.",
    "The market sells fresh bread and fruit.",
    "A little boy lost his blue hat.",
    "The river bank was quiet and cold.",
    "She wrote a long letter to her friend.",
    "The dog runs fast across the field.",
    "We should plant more trees in the city.",
    "The phone rang twice but nobody answered.",
    "He painted the fence white last summer.",
    "The kitten is sleeping on the warm bed.",
    "Hello world, this is a tiny model.",
    "Good models learn from many small examples.",
]

# Inputs of the MLM fixtures.  The fourth one is longer than 15 content tokens and
# is truncated.  "!" (third) and the accented word (fifth) are not in the
# vocabulary and become <unk>.
MLM_TEXTS = [
    "The brown fox <mask> over the dog.",
    "A <mask> sat on the mat",
    "Hello world!",
    "The small cat and the big dog walked along the river bank while the old man was "
    "reading a <mask> book under the tall tree.",
    "We drank caf\u00e9 and <mask> tea.",
]

# Inputs of the classification fixture: single texts and pairs.  The fourth pair has
# both texts truncated (longest first), the fifth only its second text.
CLS_TEXTS = [
    ["The cat sat on the mat."],
    ["A dog is running.", "The dog runs."],
    ["Hello"],
    [
        "The small cat and the big dog are friends in the garden.",
        "The children are playing with a red ball in the park every morning.",
    ],
    ["Is it raining?", "It was raining when we left the house and the train was late again."],
]


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def build_tokenizer() -> Tokenizer:
    """A tiny WordPiece tokenizer "trained" on CORPUS by a deterministic rule.

    (The `tokenizers` WordPieceTrainer breaks ties between equally frequent merges
    differently from run to run, so its vocabulary is not reproducible.)  The
    vocabulary is: the 7 special tokens (ids 0..6), then every character of the
    normalized, pre-tokenized corpus as a word start ("c") and as a continuation
    ("##c"), a few common suffix pieces, and the most frequent corpus words (ties by
    alphabetical order) up to TOKENIZER_VOCAB_SIZE.  Ids after the specials are
    assigned in (length, text) order.  Words outside the vocabulary are split by
    WordPiece's greedy longest match; a word with a character that is not in the
    vocabulary becomes <unk>.
    """
    normalizer = normalizers.Lowercase()
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for sentence in CORPUS:
        for word, _span in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)):
            counts[word] = counts.get(word, 0) + 1
    pieces = set()
    for word in counts:
        pieces.add(word[0])
        pieces.update("##" + c for c in word[1:])
    pieces.update(SUFFIX_PIECES)
    budget = TOKENIZER_VOCAB_SIZE - len(SPECIAL_TOKENS) - len(pieces)
    by_frequency = sorted((w for w in counts if w not in pieces), key=lambda w: (-counts[w], w))
    learned = sorted(pieces | set(by_frequency[:budget]), key=lambda t: (len(t), t))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + learned)}

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL_TOKENS)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert tok.get_vocab_size() == TOKENIZER_VOCAB_SIZE
    assert tok.post_processor is None
    return tok


def content_ids(tok: Tokenizer, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def encode_mlm(tok: Tokenizer, text: str, max_len: int) -> list[int]:
    return content_ids(tok, text)[: max_len - 1] + [SEP_ID]


def encode_cls(tok: Tokenizer, texts: list[str], max_len: int) -> list[int]:
    assert len(texts) in (1, 2)
    a = content_ids(tok, texts[0])
    b = content_ids(tok, texts[1]) if len(texts) == 2 else []
    budget = max_len - 3
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return [CLS_ID] + a + [SEP_ID] + b + [SEP_ID]


def pad_batch(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    s = max(len(x) for x in seqs)
    ids = np.full((len(seqs), s), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(seqs), s), dtype=np.int64)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return ids, mask


# --------------------------------------------------------------------------------------
# Numerical building blocks (float64)
# --------------------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray) -> np.ndarray:
    """torch.nn.GELU() with approximate='none': x * Phi(x)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """torch.nn.LayerNorm: biased variance, eps inside the square root."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w.T
    return y if b is None else y + b


def sinusoid_table(max_len: int, dim: int) -> np.ndarray:
    """SinusoidalPositional.pe, in float32 like torch builds it."""
    position = np.arange(max_len, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2).astype(np.float32) * np.float32(-math.log(10000.0) / dim))
    angles = (position * div).astype(np.float32)
    pe = np.zeros((max_len, dim), dtype=np.float32)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)
    return pe


def softmax_last(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------
# Attention: vectorised and loop forms
# --------------------------------------------------------------------------------------


def attention(x, mask_add, w_qkv, w_dense, b_dense, heads, norm_factor):
    """SeqFirstSelfAttention + AttentionComponent.dense, batch-first.

    x: [B, S, H]; mask_add: [B, S] additive key mask.
    """
    bsz, seq, hid = x.shape
    d = hid // heads
    mixed = linear(x, w_qkv, None).reshape(bsz, seq, heads, 3 * d)
    q, k, v = mixed[..., :d], mixed[..., d : 2 * d], mixed[..., 2 * d :]
    scores = np.einsum("bihd,bjhd->bhij", q, k) * norm_factor
    scores = scores + mask_add[:, None, None, :]
    probs = softmax_last(scores)
    ctx = np.einsum("bhij,bjhd->bihd", probs, v).reshape(bsz, seq, hid)
    return linear(ctx, w_dense, b_dense)


def attention_loops(x, mask_add, w_qkv, w_dense, b_dense, heads, norm_factor):
    """Same thing, computed with explicit loops over batch, heads and positions."""
    bsz, seq, hid = x.shape
    d = hid // heads
    out = np.zeros_like(x)
    for b in range(bsz):
        ctx = np.zeros((seq, hid))
        for h in range(heads):
            base = h * 3 * d  # rows of head h in the fused weight: Q, then K, then V
            wq, wk, wv = w_qkv[base : base + d], w_qkv[base + d : base + 2 * d], w_qkv[base + 2 * d : base + 3 * d]
            qs = [wq @ x[b, i] for i in range(seq)]
            ks = [wk @ x[b, j] for j in range(seq)]
            vs = [wv @ x[b, j] for j in range(seq)]
            for i in range(seq):
                s = [sum(qs[i][t] * ks[j][t] for t in range(d)) * norm_factor + mask_add[b, j] for j in range(seq)]
                e = [math.exp(sj) for sj in s]
                tot = sum(e)
                for j in range(seq):
                    ctx[i, h * d : (h + 1) * d] += (e[j] / tot) * vs[j]
        for i in range(seq):
            out[b, i] = w_dense @ ctx[i] + (0.0 if b_dense is None else b_dense)
    return out


# --------------------------------------------------------------------------------------
# FFF: vectorised (as the original: masked dense form, "platform" descent) and path walk
# --------------------------------------------------------------------------------------


def fff_dense(x2d, w_in, b_in, w_out, depth, trees):
    n_nodes = 2 ** (depth + 1) - 1
    n = x2d.shape[0]
    z = linear(x2d, w_in, b_in)  # [N, K*M]
    act = gelu(z).reshape(n, trees, n_nodes)
    decisions = (z > 0).astype(np.int64).reshape(n, trees, n_nodes)
    current = np.zeros((n, trees), dtype=np.int64)
    decision_map = np.zeros((n, trees, n_nodes))
    np.put_along_axis(decision_map, current[..., None], 1.0, axis=2)
    for dd in range(depth):
        current_platform = 2**dd - 1
        next_platform = 2 ** (dd + 1) - 1
        moves = np.take_along_axis(decisions, current[..., None], axis=2)[..., 0]
        nxt = (current - current_platform) * 2 + moves + next_platform
        np.put_along_axis(decision_map, nxt[..., None], 1.0, axis=2)
        current = nxt
    return linear((act * decision_map).reshape(n, trees * n_nodes), w_out, None)


def fff_walk(x2d, w_in, b_in, w_out, depth, trees):
    """Per token, per tree: visit depth+1 nodes, computing only their logits.

    Returns (output [N, H_out], routes [N][K] -> list of node indices within the tree,
    smallest |z| among the routing decisions (the leaf's z decides nothing)).
    """
    n_nodes = 2 ** (depth + 1) - 1
    out = np.zeros((x2d.shape[0], w_out.shape[0]))
    routes = []
    margin = math.inf
    for t in range(x2d.shape[0]):
        per_tree = []
        for k in range(trees):
            node = 0
            path = []
            for step in range(depth + 1):
                row = k * n_nodes + node
                zn = float(np.dot(w_in[row], x2d[t]) + b_in[row])
                out[t] += float(gelu(np.array(zn))) * w_out[:, row]
                path.append(node)
                if step < depth:
                    margin = min(margin, abs(zn))
                    node = 2 * node + 1 + (1 if zn > 0 else 0)
            per_tree.append(path)
        routes.append(per_tree)
    return out, routes, margin


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def load_checkpoint_like_a_loader(path: str) -> dict[str, np.ndarray]:
    """Read model.safetensors the way a loader should: strip `_orig_mod.`, tie the decoder."""
    raw = load_file(path)
    w = {}
    for k, v in raw.items():
        w[k[len("_orig_mod.") :] if k.startswith("_orig_mod.") else k] = v
    return w


def forward(w: dict[str, np.ndarray], arch: dict, ids: np.ndarray, mask: np.ndarray, self_check: bool = False):
    """Eval-mode forward pass.  `w` holds float32 arrays keyed by the (unprefixed) names.

    Returns a dict of float64 arrays: embedding, layer0, hidden, and mlm_logits or
    (pooled, cls_logits); plus `routes` and `route_margin` for FFF models.
    """
    p = {k: v.astype(np.float64) for k, v in w.items()}
    hid = arch["hidden_size"]
    heads = arch["attention"]["num_attention_heads"]
    eps = arch["norm_eps"]
    use_bias = arch["use_bias"]
    itype = (arch.get("intermed_type") or "ff").lower()
    bsz, seq = ids.shape
    assert seq <= arch["embedding"]["max_seq_length"]

    res = {}
    pe = sinusoid_table(arch["embedding"]["max_seq_length"], hid)[:seq].astype(np.float64)
    emb = p["encoder.embedding.word_embedding.weight"][ids] + p["encoder.embedding.pos_embedding.scale_factor"] * pe
    h = layer_norm(emb, p["encoder.embedding.norm.weight"], p["encoder.embedding.norm.bias"], eps)
    res["embedding"] = h

    mask_add = (1.0 - mask.astype(np.float64)) * MASK_FILL
    all_routes = []
    margin = math.inf
    for i in range(arch["num_transformer_layers"]):
        pre = f"encoder.layers.{i}."
        # attention sub-block
        x = layer_norm(h, p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps)
        args = (
            x,
            mask_add,
            p[pre + "attn.self_attention.query_key_value.weight"],
            p[pre + "attn.dense.weight"],
            p.get(pre + "attn.dense.bias") if use_bias else None,
            heads,
            float(p[pre + "attn.self_attention.norm_factor"]),
        )
        a = attention(*args)
        if self_check:
            a2 = attention_loops(*args)
            err = np.abs(a - a2).max()
            assert err < SELF_CHECK_TOL, f"attention self-check failed in layer {i}: {err}"
        h = h + a
        # FFN sub-block
        x = layer_norm(h, p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps).reshape(bsz * seq, hid)
        if itype == "fff":
            depth, trees = arch["intermed_depth"], arch["intermed_size"]
            fargs = (x, p[pre + "ffn.linear_in.weight"], p[pre + "ffn.linear_in.bias"], p[pre + "ffn.linear_out.weight"], depth, trees)
            f = fff_dense(*fargs)
            f2, routes, m = fff_walk(*fargs)
            if self_check:
                err = np.abs(f - f2).max()
                assert err < SELF_CHECK_TOL, f"FFF self-check failed in layer {i}: {err}"
            margin = min(margin, m)
            all_routes.append([routes[b * seq : (b + 1) * seq] for b in range(bsz)])
        elif itype == "ff":
            assert arch["nonlin"] == "GELUglu"
            u = linear(x, p[pre + "ffn.dense_in.weight"], p.get(pre + "ffn.dense_in.bias") if use_bias else None)
            half = u.shape[-1] // 2
            xx, gate = u[:, :half], u[:, half:]  # GLU: x, gate = chunk(2); act(gate) * x
            f = linear(gelu(gate) * xx, p[pre + "ffn.dense_out.weight"], p.get(pre + "ffn.dense_out.bias") if use_bias else None)
        else:
            raise ValueError(itype)
        h = h + f.reshape(bsz, seq, hid)
        if i == 0:
            res["layer0"] = h
    h = layer_norm(h, p["encoder.final_norm.weight"], p["encoder.final_norm.bias"], eps)
    res["hidden"] = h

    if arch["num_labels"] is None:
        dec = p.get("decoder.weight", p["encoder.embedding.word_embedding.weight"])
        res["mlm_logits"] = h @ dec.T
    else:
        pooled = np.tanh(linear(h[:, 0], p["pooler.dense.weight"], p["pooler.dense.bias"]))
        res["pooled"] = pooled
        res["cls_logits"] = linear(pooled, p["head.weight"], p["head.bias"])
    if itype == "fff":
        res["routes"] = all_routes
        res["route_margin"] = margin
    return res


# --------------------------------------------------------------------------------------
# Random weights and configs
# --------------------------------------------------------------------------------------


def make_arch(*, vocab_size, layers, hidden, heads, intermed_type, intermed_size, intermed_depth, use_bias, num_labels, head_dim):
    arch = {
        "architectures": ["ScriptableCrammedBERT"],
        "num_transformer_layers": layers,
        "hidden_size": hidden,
        "intermed_type": intermed_type,
        "intermed_size": intermed_size,
    }
    if intermed_type == "fff":
        arch["intermed_depth"] = intermed_depth
    arch.update(
        {
            "hidden_dropout_prob": 0.1,
            "norm": "LayerNorm",
            "norm_eps": NORM_EPS,
            "norm_scheme": "pre",
            "nonlin": "GELU" if intermed_type == "fff" else "GELUglu",
            "tie_weights": True,
            "decoder_bias": False,
            "sparse_prediction": 0.25,
            "loss": "cross-entropy",
            "objective_layout": "MLM",
            "embedding": {
                "vocab_size": vocab_size,
                "pos_embedding": "scaled-sinusoidal",
                "dropout_prob": 0.1,
                "pad_token_id": PAD_ID,
                "max_seq_length": MAX_SEQ_LENGTH,
                "embedding_dim": hidden,
                "normalization": True,
                "stable_low_precision": False,
            },
            "attention": {
                "type": "self-attention",
                "causal_attention": False,
                "num_attention_heads": heads,
                "dropout_prob": 0.1,
                "skip_output_projection": False,
                "qkv_bias": False,
                "rotary_embedding": False,
                "seq_op_in_fp32": False,
                "sequence_op": "torch-softmax",
                "high_level_fusion": False,
                "low_level_fusion": False,
            },
            "init": {"type": "normal", "std": 0.02},
            "ffn_layer_frequency": 1,
            "skip_head_transform": True,
            "use_bias": use_bias,
            "final_norm": True,
            "num_labels": num_labels,
            "classification_head": {
                "pooler": "zero_index",
                "include_ff_layer": True,
                "head_dim": head_dim,
                "nonlin": "Tanh",
                "classifier_dropout": 0.1,
            },
        }
    )
    return arch


def hf_config(arch: dict) -> dict:
    return {
        "architectures": ["ScriptableCrammedBERT"],
        "model_type": "crammedBERT",
        "torch_dtype": "float32",
        "transformers_version": "4.35.0",
        "arch": arch,
    }


def make_weights(arch: dict, rng: np.random.Generator, with_decoder: bool) -> dict[str, np.ndarray]:
    hid = arch["hidden_size"]
    vocab = arch["embedding"]["vocab_size"]
    heads = arch["attention"]["num_attention_heads"]
    use_bias = arch["use_bias"]

    def normal(*shape, std=WEIGHT_STD):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ln(prefix):
        w[prefix + ".weight"] = (1.0 + 0.1 * rng.standard_normal(hid)).astype(np.float32)
        w[prefix + ".bias"] = (0.1 * rng.standard_normal(hid)).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    w["encoder.embedding.word_embedding.weight"] = normal(vocab, hid)
    w["encoder.embedding.pos_embedding.scale_factor"] = np.array([0.5 + 0.05 * rng.standard_normal()], dtype=np.float32)
    ln("encoder.embedding.norm")
    for i in range(arch["num_transformer_layers"]):
        pre = f"encoder.layers.{i}."
        ln(pre + "norm1")
        ln(pre + "norm2")
        w[pre + "attn.self_attention.query_key_value.weight"] = normal(3 * hid, hid)
        w[pre + "attn.self_attention.norm_factor"] = np.array(1.0 / math.sqrt(hid // heads), dtype=np.float32)
        w[pre + "attn.dense.weight"] = normal(hid, hid)
        if use_bias:
            w[pre + "attn.dense.bias"] = normal(hid, std=0.1)
        if arch["intermed_type"] == "fff":
            width = arch["intermed_size"] * (2 ** (arch["intermed_depth"] + 1) - 1)
            w[pre + "ffn.linear_in.weight"] = normal(width, hid)
            w[pre + "ffn.linear_in.bias"] = normal(width, std=0.1)  # FFF.linear_in always has a bias
            w[pre + "ffn.linear_out.weight"] = normal(hid, width)
        else:
            inter = arch["intermed_size"]
            w[pre + "ffn.dense_in.weight"] = normal(inter, hid)
            w[pre + "ffn.dense_out.weight"] = normal(hid, inter // 2)  # GLU halves the width
            if use_bias:
                w[pre + "ffn.dense_in.bias"] = normal(inter, std=0.1)
                w[pre + "ffn.dense_out.bias"] = normal(hid, std=0.1)
    ln("encoder.final_norm")
    if arch["num_labels"] is None:
        if with_decoder:
            w["decoder.weight"] = w["encoder.embedding.word_embedding.weight"].copy()
    else:
        head_dim = arch["classification_head"]["head_dim"]
        w["pooler.dense.weight"] = normal(head_dim, hid, std=0.1)  # keep tanh mostly unsaturated
        w["pooler.dense.bias"] = normal(head_dim, std=0.1)
        w["head.weight"] = normal(arch["num_labels"], head_dim)
        w["head.bias"] = normal(arch["num_labels"], std=0.1)
    return w


def routing_is_nontrivial(arch: dict, routes, mask: np.ndarray) -> bool:
    """Every (layer, tree) must send the real tokens to at least 3 different leaves."""
    trees = arch["intermed_size"]
    for layer_routes in routes:
        for k in range(trees):
            leaves = {
                tuple(layer_routes[b][s][k])
                for b in range(mask.shape[0])
                for s in range(mask.shape[1])
                if mask[b, s]
            }
            if len(leaves) < 3:
                return False
    return True


# --------------------------------------------------------------------------------------
# Fixture generation
# --------------------------------------------------------------------------------------


def generate(out_root: str, name: str, tok: Tokenizer, tok_json: str, *, seed0: int, arch_kw: dict,
             texts: list, mlm: bool, with_decoder: bool, key_prefix: str = "") -> dict:
    vocab = tok.get_vocab_size()
    arch = make_arch(vocab_size=vocab, **arch_kw)
    if mlm:
        seqs = [encode_mlm(tok, t, MAX_SEQ_LENGTH) for t in texts]
    else:
        seqs = [encode_cls(tok, t, MAX_SEQ_LENGTH) for t in texts]
    ids, mask = pad_batch(seqs)
    is_fff = arch["intermed_type"] == "fff"

    # Draw weights; for FFF models re-draw until routing is non-trivial and no routing
    # logit is close to zero (float summation order differs between implementations).
    for seed in range(seed0, seed0 + 500):
        weights = make_weights(arch, np.random.default_rng(seed), with_decoder)
        res = forward(weights, arch, ids, mask)
        if not is_fff:
            break
        if res["route_margin"] >= ROUTE_MARGIN and routing_is_nontrivial(arch, res["routes"], mask):
            break
    else:
        raise RuntimeError(f"{name}: no seed in range gave a usable routing margin")

    # Self-check on the chosen weights (loops vs vectorised forms).
    res = forward(weights, arch, ids, mask, self_check=True)

    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config(arch), f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write(tok_json)
    model_path = os.path.join(folder, "model.safetensors")
    save_file({key_prefix + k: v for k, v in weights.items()}, model_path, metadata={"format": "pt"})

    # Round trip: the forward pass from the saved file must be identical.
    again = forward(load_checkpoint_like_a_loader(model_path), arch, ids, mask)
    for k in ("embedding", "layer0", "hidden", "mlm_logits" if mlm else "cls_logits"):
        assert np.array_equal(again[k], res[k]), f"{name}: round trip changed {k}"

    tensors = {k: res[k].astype(np.float32) for k in ("embedding", "layer0", "hidden")}
    if mlm:
        tensors["mlm_logits"] = res["mlm_logits"].astype(np.float32)
    else:
        tensors["cls_logits"] = res["cls_logits"].astype(np.float32)
        tensors["pooled"] = res["pooled"].astype(np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(folder, "expected.safetensors"))

    expected = {
        "description": (
            f"Expected outputs of the numpy reference (tools/ultrafastbert_reference.py) for the "
            f"'{name}' checkpoint in this folder, computed in float64 from the float32 weights and "
            f"stored as float32. Tensors are in expected.safetensors; padded positions are included "
            f"(compare logits only where attention_mask is 1)."
        ),
        "kind": "mlm" if mlm else "classification",
        "seed": seed,
        "max_seq_length": MAX_SEQ_LENGTH,
        "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
        "truncation_rule": TRUNCATION_RULE,
        "texts": texts,
        "tokens": [[tok.id_to_token(int(i)) for i in s] for s in seqs],
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "tolerance": 1e-4,
        "checkpoint_key_prefix": key_prefix,
        "checkpoint_has_decoder_weight": "decoder.weight" in weights,
    }
    if is_fff:
        expected["routes_layout"] = "routes[layer][sequence][position][tree] = visited node indices within the tree, root first"
        expected["routes"] = res["routes"]
        expected["route_min_abs_z"] = res["route_margin"]
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")

    summary = {"name": name, "seed": seed, "vocab": vocab, "shape": list(ids.shape)}
    if is_fff:
        summary["route_min_abs_z"] = res["route_margin"]
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="fixture root, e.g. crates/fff-bert/tests/fixtures")
    args = ap.parse_args(argv)

    tok = build_tokenizer()
    tok_json = tok.to_str(pretty=True) + "\n"
    vocab = tok.get_vocab_size()
    assert 150 <= vocab <= 250, vocab

    mlm_seqs = [encode_mlm(tok, t, MAX_SEQ_LENGTH) for t in MLM_TEXTS]
    assert any(len(content_ids(tok, t)) > MAX_SEQ_LENGTH - 1 for t in MLM_TEXTS), "no MLM text is truncated"
    assert any(MASK_ID in s for s in mlm_seqs) and any(UNK_ID in s for s in mlm_seqs)
    assert len({len(s) for s in mlm_seqs}) == len(mlm_seqs), "MLM lengths should all differ"

    common = dict(layers=2, hidden=64, heads=4, use_bias=False, num_labels=None, head_dim=32)
    summaries = [
        generate(args.out, "tiny-fff", tok, tok_json, seed0=1000, mlm=True, with_decoder=True, texts=MLM_TEXTS,
                 arch_kw=dict(common, intermed_type="fff", intermed_size=1, intermed_depth=3)),
        generate(args.out, "tiny-fff-forest", tok, tok_json, seed0=2000, mlm=True, with_decoder=False, texts=MLM_TEXTS,
                 key_prefix="_orig_mod.",
                 arch_kw=dict(common, intermed_type="fff", intermed_size=2, intermed_depth=2)),
        generate(args.out, "tiny-ff", tok, tok_json, seed0=3000, mlm=True, with_decoder=True, texts=MLM_TEXTS,
                 arch_kw=dict(common, intermed_type="ff", intermed_size=128, intermed_depth=None, use_bias=True)),
        generate(args.out, "tiny-fff-cls", tok, tok_json, seed0=4000, mlm=False, with_decoder=False, texts=CLS_TEXTS,
                 arch_kw=dict(common, intermed_type="fff", intermed_size=1, intermed_depth=3, num_labels=3)),
    ]
    for s in summaries:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
