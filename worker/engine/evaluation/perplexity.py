"""Token-weighted perplexity on held-out text, with a sliding window for long documents.

Documents: each is tokenized without special tokens and prefixed with one conditioning token (BOS, or
EOS when the tokenizer has no BOS, which is how `PackedTokens` separates documents); every document
token is scored once. A document longer than the context is read in windows of `context` tokens that
start every `stride` tokens (stride < context): window k starts at k * stride and scores the tokens
after the previous window's end, so each token is predicted from between context - stride and context
tokens of history (Hugging Face's "perplexity of fixed-length models" recipe).

PackedTokens: every block is scored on its own (its first token is only context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def model_context(model) -> int:
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    return 2048


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window over a sequence of n tokens; token 0 is never scored."""
    if not 1 <= stride < context:
        raise ValueError(f"stride must be between 1 and context - 1 = {context - 1}, got {stride}")
    spans = []
    prev_end = 1
    for begin in range(0, max(n - 1, 1), stride):
        end = min(begin + context, n)
        if end > prev_end:
            spans.append((begin, end, prev_end))
        prev_end = max(prev_end, end)
        if end >= n:
            break
    return spans


@torch.no_grad()
def _score(model, rows: list[tuple[list[int], int]], pad_id: int, device) -> tuple[float, int]:
    """Summed NLL and count of the scored tokens of right-padded rows (ids, first_scored)."""
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


def perplexity(
    model,
    data,
    tokenizer=None,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_documents: int | None = None,
    max_blocks: int | None = None,
) -> dict:
    """{"loss", "perplexity", "tokens", "documents"|"blocks", "context", "stride"} (natural-log NLL).

    `data` is a list of document strings (needs `tokenizer`) or a `PackedTokens`.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if hasattr(data, "sequential"):
            return _packed_perplexity(model, data, batch_size, max_blocks, device)
        return _document_perplexity(
            model, data, tokenizer, context, stride, batch_size, max_documents, device
        )
    finally:
        model.train(was_training)


def _result(nll: float, count: int, **extra) -> dict:
    if count == 0:
        raise ValueError("no tokens to score (empty documents?)")
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, **extra}


def _packed_perplexity(model, packed, batch_size, max_blocks, device) -> dict:
    nll, count, blocks = 0.0, 0, 0
    for block in packed.sequential(batch_size, limit=max_blocks):
        rows = [(row.tolist(), 1) for row in block]
        part, n = _score(model, rows, 0, device)
        nll, count, blocks = nll + part, count + n, blocks + len(rows)
    return _result(nll, count, blocks=blocks, context=packed.seq_len, stride=None)


def _document_perplexity(
    model, documents: Sequence[str], tokenizer, context, stride, batch_size, max_documents, device
) -> dict:
    if tokenizer is None:
        raise ValueError("perplexity on documents needs the tokenizer")
    if isinstance(documents, str):
        raise ValueError("documents must be a list of strings, not one string")
    documents = list(documents)[:max_documents] if max_documents else list(documents)
    if not documents:
        raise ValueError("no documents to evaluate")
    context = int(context or min(model_context(model), 1024))
    stride = int(stride or max(1, context // 2))
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (prefix or 0)
    encoded = tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]
    rows = []
    for ids in encoded:
        ids = ([prefix] if prefix is not None else []) + list(ids)
        for begin, end, first in windows(len(ids), context, stride):
            rows.append((ids[begin:end], first - begin))
    rows.sort(key=lambda r: len(r[0]))  # similar lengths together: less padding
    nll, count = 0.0, 0
    for first in range(0, len(rows), batch_size):
        part, n = _score(model, rows[first : first + batch_size], pad, device)
        nll, count = nll + part, count + n
    return _result(nll, count, documents=len(documents), context=context, stride=stride)
