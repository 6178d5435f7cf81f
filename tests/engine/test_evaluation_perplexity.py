"""Perplexity: token-weighted, sliding window checked against per-token naive computations."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from tests.engine.distill_helpers import demo_tokenizer, packed, tiny_llama
from tests.engine.test_surgery import COMBINED, HIDDEN
from tests.tiny_models import FAMILIES, VOCAB, tiny_model
from worker.engine import chunked_head
from worker.engine.evaluation import perplexity, windows
from worker.engine.evaluation.perplexity import block_nll
from worker.engine.masking import masked

perplexity_module = importlib.import_module("worker.engine.evaluation.perplexity")  # the name is shadowed


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=4, layers=2)


def _ids(text):
    tok = demo_tokenizer()
    return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _naive_full(model, ids):
    logits = model(torch.tensor([ids])).logits[0, :-1]
    return float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")), len(ids) - 1


@torch.no_grad()
def _naive_windowed(model, ids, context, stride):
    """Token t is predicted from ids[b:t], b = k * stride for the first window k that ends after t."""
    total = 0.0
    for t in range(1, len(ids)):
        k = max(0, math.floor((t - context) / stride) + 1)
        begin = k * stride
        logits = model(torch.tensor([ids[begin : t + 1]])).logits[0, -2]
        total += float(F.cross_entropy(logits[None], torch.tensor([ids[t]])))
    return total, len(ids) - 1


DOCS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nprint(os.getcwd())",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "x = 1",
]


def test_short_documents_equal_the_naive_token_weighted_loss(model):
    result = perplexity(model, DOCS, demo_tokenizer(), batch_size=3)
    nll = count = 0
    for doc in DOCS:
        a, b = _naive_full(model, _ids(doc))
        nll, count = nll + a, count + b
    assert result["tokens"] == count and result["documents"] == len(DOCS)
    assert result["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_sliding_window_on_long_documents(model):
    long_docs = [DOCS[2] * 2, DOCS[0] * 3]
    context, stride = 12, 5
    result = perplexity(model, long_docs, demo_tokenizer(), context=context, stride=stride, batch_size=4)
    nll = count = 0
    for doc in long_docs:
        ids = _ids(doc)
        assert len(ids) > 2 * context  # really longer than the window
        a, b = _naive_windowed(model, ids, context, stride)
        nll, count = nll + a, count + b
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(nll / count, rel=1e-5)
    full = perplexity(model, long_docs, demo_tokenizer(), context=512)
    assert full["tokens"] == count and full["loss"] != pytest.approx(result["loss"], rel=1e-6)


def test_windows_score_every_token_once():
    for n in (1, 2, 3, 10, 33, 100):
        for context in (2, 5, 16):
            for stride in range(1, context):
                scored = [t for _, end, first in windows(n, context, stride) for t in range(first, end)]
                assert scored == list(range(1, n)), (n, context, stride)
                assert all(end - begin <= context for begin, end, _ in windows(n, context, stride))
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 4)


def test_packed_blocks_and_bad_input(model):
    blocks = packed("test", seq_len=16, docs=2)
    result = perplexity(model, blocks, max_blocks=5, batch_size=2)
    nll = count = 0
    for block in blocks.sequential(5, limit=5):
        for row in block:
            a, b = _naive_full(model, row.tolist())
            nll, count = nll + a, count + b
    assert result["blocks"] == 5 and result["tokens"] == 5 * 15
    assert result["loss"] == pytest.approx(nll / count, rel=1e-5)
    with pytest.raises(ValueError, match="tokenizer"):
        perplexity(model, DOCS)
    with pytest.raises(ValueError, match="no documents"):
        perplexity(model, [], demo_tokenizer())


# ---- chunked LM head: equals the former full-logits computation, for every family --------------------


class ByteTokenizer:
    """Bytes -> ids 3..95, enough to feed the tiny models (vocabulary 96) real multi-window documents."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, None

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[3 + b % (VOCAB - 3) for b in t.encode()] for t in texts]}


@torch.no_grad()
def _full_logits_score(model, _head, rows, pad_id, device, chunk_tokens):
    """The former `_score`, kept as the reference: full [B, S, V] logits and one cross-entropy."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for r, (ids, first) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        labels[r, first : len(ids)] = input_ids[r, first : len(ids)]
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False
    ).logits
    shift_labels = labels[:, 1:].to(device)
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return float(nll), int((shift_labels != -100).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_head_equals_full_logits_for_every_family(family, monkeypatch):
    model = tiny_model(family)
    docs = [DOCS[2] * 3, DOCS[0], DOCS[1] * 4, DOCS[3]]  # two longer than the context: several windows
    kwargs = dict(context=40, stride=15, batch_size=3)
    rows_seen = []
    real_chunk_logits = chunked_head.chunk_logits

    def recording_chunk_logits(hidden, weight, bias):
        rows_seen.append(hidden.shape[0])
        return real_chunk_logits(hidden, weight, bias)

    head_calls = []
    handle = model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    monkeypatch.setattr(chunked_head, "chunk_logits", recording_chunk_logits)
    chunked = perplexity(model, docs, ByteTokenizer(), chunk_tokens=7, **kwargs)
    # Only the scored positions go through the head, at most 7 at a time.
    assert max(rows_seen) == 7 and sum(rows_seen) == chunked["tokens"]
    rows_seen.clear()
    blocks = [torch.randint(3, VOCAB, (4, 24), generator=torch.Generator().manual_seed(1))]
    packed_chunked = perplexity(model, _Packed(blocks), chunk_tokens=5, batch_size=4)
    assert max(rows_seen) == 5 and sum(rows_seen) == packed_chunked["tokens"] == 4 * 23
    default_chunk = perplexity(model, docs, ByteTokenizer(), **kwargs)
    handle.remove()
    assert head_calls == []  # the head module never ran on full hidden states

    monkeypatch.setattr(perplexity_module, "_score", _full_logits_score)
    reference = perplexity(model, docs, ByteTokenizer(), **kwargs)
    packed_reference = _full_logits_block_nll(model, blocks[0])  # packed blocks go through block_nll
    assert reference["tokens"] == chunked["tokens"] == default_chunk["tokens"]
    assert reference["tokens"] == sum(len(d.encode()) for d in docs)
    assert chunked["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert default_chunk["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert packed_chunked["blocks"] == 4
    assert packed_chunked["loss"] == pytest.approx(packed_reference, rel=1e-6)


class _Packed:
    """The `PackedTokens` interface perplexity reads: fixed blocks in order, and their count (progress)."""

    def __init__(self, blocks):
        self.blocks, self.seq_len = blocks, blocks[0].shape[1]

    def __len__(self) -> int:
        return sum(b.shape[0] for b in self.blocks)

    def sequential(self, batch_size, limit=None):
        return iter(self.blocks)


def test_logit_post_processing_is_the_family_forwards(model):
    # Gemma's soft-cap and Granite's scaling are checked against the model's own logits above; a field
    # that the family's forward ignores (a soft-cap on a Llama config) must be ignored here too.
    before = perplexity(model, DOCS, demo_tokenizer())
    model.config.final_logit_softcapping = 0.05
    try:
        assert perplexity(model, DOCS, demo_tokenizer())["loss"] == before["loss"]
    finally:
        del model.config.final_logit_softcapping


@torch.no_grad()
def _full_logits_block_nll(model, blocks):
    """The former `teacher.block_nll` body: full logits of every block."""
    logits = model(input_ids=blocks).logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1), reduction="sum")
    return float(loss) / blocks[:, 1:].numel()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_block_nll_and_what_if_preview_equal_full_logits(family):
    """`block_nll` (the teacher curve, the what-if preview, packed perplexity) through the chunked head."""
    model = tiny_model(family)
    blocks = torch.randint(3, VOCAB, (6, 20), generator=torch.Generator().manual_seed(2))
    data = _Packed([blocks])
    nll, tokens = block_nll(model, data)
    assert tokens == 6 * 19
    assert nll == pytest.approx(_full_logits_block_nll(model, blocks), rel=1e-6)
    for plan in (COMBINED, HIDDEN):  # HIDDEN also zeroes the final norm's output channels
        with masked(model, plan):
            masked_nll, _ = block_nll(model, data)
            expected = _full_logits_block_nll(model, blocks)
        assert masked_nll == pytest.approx(expected, rel=1e-6)
        assert masked_nll != pytest.approx(nll, rel=1e-5)  # the mask really acted


def test_progress_counts_every_window_and_block_once(model):
    """An evaluation reports how far it is (issue 13: one sat at "5% · loading model" for minutes)."""
    seen = []
    long_docs = [DOCS[2] * 2, DOCS[0] * 3, DOCS[3]]
    result = perplexity(
        model,
        long_docs,
        demo_tokenizer(),
        context=12,
        stride=5,
        batch_size=4,
        progress=lambda d, t: seen.append((d, t)),
    )
    total = sum(len(windows(len(_ids(doc)), 12, 5)) for doc in long_docs)
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted({d for d, _ in seen})
    assert len(seen) == math.ceil(total / 4) and result["tokens"] > 0
    blocks = []
    block_nll(
        model,
        packed("validation", seq_len=16, docs=20),
        limit=10,
        batch_size=4,
        progress=lambda d, t: blocks.append((d, t)),
    )
    assert blocks == [(4, 10), (8, 10), (10, 10)]
