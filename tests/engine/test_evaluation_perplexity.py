"""Perplexity: token-weighted, sliding window checked against per-token naive computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.engine.distill_helpers import demo_tokenizer, packed, tiny_llama
from worker.engine.evaluation import perplexity, windows


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
