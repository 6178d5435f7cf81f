"""Token-weighted perplexity on held-out text, with a sliding window for long documents.

Documents: each is tokenized without special tokens and prefixed with one conditioning token (BOS, or
EOS when the tokenizer has no BOS, which is how `PackedTokens` separates documents); every document
token is scored once. A document longer than the context is read in windows of `context` tokens that
start every `stride` tokens (stride < context): window k starts at k * stride and scores the tokens
after the previous window's end, so each token is predicted from between context - stride and context
tokens of history (Hugging Face's "perplexity of fixed-length models" recipe).

PackedTokens: every block is scored on its own (its first token is only context), by `block_nll`, the
one packed-block scorer (also the demo teacher's curve and card, and the what-if preview).

Data-parallel (`ranks`, a `worker.engine.distributed.DistributedContext` under torchrun): the windows
are batched exactly as in one process and rank r scores batches r, r + N, ...; the NLL sums and token
counts are all-reduced in float64, so every rank returns the one-process result (to float rounding of
the sum's order).

Memory: the LM head is applied to the scored positions only, a chunk of tokens at a time
(`chunked_head.token_nll`), so full batch x sequence x vocabulary logits are never materialised.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from worker.engine.chunked_head import (
    IGNORE_INDEX,
    final_hidden_states,
    output_head,
    token_nll,
)
from worker.engine.memplan import EVAL_BATCH_SIZE

Progress = Callable[[int, int], None]  # (done, total) of the windows or blocks to score


def model_context(model) -> int:
    """The model's positions (worker.engine.spec.config_max_positions); 2048 when its config names none."""
    from worker.engine.spec import config_max_positions

    return config_max_positions(model.config) or 2048


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
def _score(
    model, head, rows: list[tuple[list[int], int]], pad_id: int, device, chunk_tokens
) -> tuple[float, int]:
    """Summed NLL and count of the scored tokens of right-padded rows (ids, first_scored).

    The model runs up to its final hidden states; only the positions that predict a scored token go
    through the LM head, in chunks (no [B, S, V] logits).
    """
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for r, (ids, first) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        labels[r, first : len(ids)] = input_ids[r, first : len(ids)]
    hidden = final_hidden_states(model, input_ids.to(device), attention.to(device))
    # Position (r, t) predicts labels[r, t + 1]; select the scored ones on the host (no device sync).
    rows_idx, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    positions = (rows_idx * width + cols).to(device)
    targets = labels[rows_idx, cols + 1].to(device)
    scored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    nll = token_nll(scored, head, targets, chunk_tokens)
    return float(nll.sum(dtype=torch.float64)), int(targets.numel())


def perplexity(
    model,
    data,
    tokenizer=None,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    max_documents: int | None = None,
    max_blocks: int | None = None,
    chunk_tokens: int | None = None,
    progress: Progress | None = None,
    ranks=None,
) -> dict:
    """{"loss", "perplexity", "tokens", "documents"|"blocks", "context", "stride"} (natural-log NLL).

    `data` is a list of document strings (needs `tokenizer`) or a `PackedTokens`. `chunk_tokens`:
    tokens per LM-head chunk (default `auto_chunk_tokens`, at most 2^24 logits per chunk).
    `progress(done, total)` after each batch: windows of documents scored, or packed blocks (with
    `ranks`, this rank's windows times the world size: an estimate of the whole pass).
    `ranks`: a distributed context; documents only (each rank scores its share of the batches).
    """
    device = next(model.parameters()).device
    score = functools.partial(_score, model, output_head(model), device=device, chunk_tokens=chunk_tokens)
    was_training = model.training
    model.eval()
    try:
        if hasattr(data, "sequential"):
            if ranks is not None and ranks.distributed:
                raise ValueError("data-parallel perplexity reads documents, not packed blocks")
            return _packed_perplexity(model, data, batch_size, max_blocks, chunk_tokens, progress)
        return _document_perplexity(
            score, model, data, tokenizer, context, stride, batch_size, max_documents, progress, ranks
        )
    finally:
        model.train(was_training)


def _result(nll: float, count: int, **extra) -> dict:
    if count == 0:
        raise ValueError("no tokens to score (empty documents?)")
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, **extra}


@torch.no_grad()
def block_nll(
    model,
    packed,
    *,
    limit: int | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    chunk_tokens: int | None = None,
    progress: Progress | None = None,
) -> tuple[float, int]:
    """(mean next-token NLL, predicted tokens) over the first `limit` blocks of `packed`, in order.

    The model runs in eval mode (restored after: the teacher's curve scores mid-training); the LM head
    runs on the predicting positions only, in token chunks (no full logits).
    """
    was_training = model.training
    model.eval()
    head = output_head(model)
    device = head.weight.device
    total, count, done = 0.0, 0, 0
    planned = min(limit, len(packed)) if limit is not None else len(packed)
    for blocks in packed.sequential(batch_size, limit):
        blocks = blocks.to(device)
        hidden = final_hidden_states(model, blocks)[:, :-1]  # the last position predicts nothing
        nll = token_nll(hidden, head, blocks[:, 1:], chunk_tokens)
        total += float(nll.sum(dtype=torch.float64))
        count += blocks[:, 1:].numel()
        done += blocks.shape[0]
        if progress is not None:
            progress(done, planned)
    model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to score (no blocks)")
    return total / count, count


def _packed_perplexity(model, packed, batch_size, max_blocks, chunk_tokens, progress=None) -> dict:
    loss, count = block_nll(
        model, packed, limit=max_blocks, batch_size=batch_size, chunk_tokens=chunk_tokens, progress=progress
    )
    blocks = count // (packed.seq_len - 1)  # every block predicts seq_len - 1 tokens
    return _result(loss * count, count, blocks=blocks, context=packed.seq_len, stride=None)


def _document_perplexity(
    score,
    model,
    documents: Sequence[str],
    tokenizer,
    context,
    stride,
    batch_size,
    max_documents,
    progress=None,
    ranks=None,
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
    rank, world = (ranks.rank, ranks.world_size) if ranks is not None and ranks.distributed else (0, 1)
    starts = range(0, len(rows), batch_size)
    nll, count, done = 0.0, 0, 0
    for first in starts[rank::world]:  # the one-process batches, every world-th to this rank
        part, n = score(rows[first : first + batch_size], pad)
        nll, count = nll + part, count + n
        done += min(batch_size, len(rows) - first)
        if progress is not None:
            progress(min(done * world, len(rows)), len(rows))
    if world > 1:
        import torch.distributed as dist

        sums = torch.tensor([nll, float(count)], dtype=torch.float64)
        dist.all_reduce(sums)
        nll, count = float(sums[0]), int(round(float(sums[1])))
    return _result(nll, count, documents=len(documents), context=context, stride=stride)
