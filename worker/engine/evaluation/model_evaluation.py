"""One model's evaluation: its perplexity on held-out documents and its lm-eval task scores, as one dict.

`prunescope evaluate`, an evaluate job and each rank of a data-parallel one all call `evaluate_model`,
so the three give the same dict (`evaluation_result`): {"perplexity", "tasks" (the lm-eval scores,
[{"task", "metric", "value", "stderr"}]), "dtype", "world_size"}. A job adds where and on what it ran
(protocol, device, seconds...) beside these keys."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from worker.engine.dtypes import model_dtype_name
from worker.engine.evaluation.lm_eval_runner import RequestProgress, run_lm_eval
from worker.engine.evaluation.perplexity import perplexity
from worker.engine.memplan import EVAL_BATCH_SIZE


def evaluation_result(ppl: dict, tasks: list[dict], *, dtype: str | None, world_size: int = 1) -> dict:
    """The evaluation dict (module doc) of a perplexity and lm-eval scores measured on `world_size`
    ranks; the world size is also kept in the perplexity, which data-parallel ranks reduced."""
    return {
        "perplexity": {**ppl, "world_size": world_size},
        "tasks": tasks,
        "dtype": dtype,
        "world_size": world_size,
    }


def evaluate_model(
    model,
    tokenizer,
    documents: Sequence[str],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    max_documents: int | None = None,
    tasks: Sequence[str] = (),
    limit: int | float | None = None,
    seed: int = 0,
    cache_root: str | Path | None = None,
    task_documents: Sequence[str] | None = None,
    ranks=None,
    scored: Callable[[int, int], None] | None = None,
    before_tasks: Callable[[], None] | None = None,
    answered: Callable[[RequestProgress], None] | None = None,
) -> dict:
    """Perplexity of `model` on `documents`, then the lm-eval `tasks` (none: no lm-eval), as
    `evaluation_result`. `task_documents`: what the local tasks are built from (default: the demo
    corpus's test split). `ranks`: a distributed context (call it on every rank: each scores its share,
    every rank returns the whole numbers). `scored(done, total)` follows the perplexity windows,
    `before_tasks()` is called between the two, `answered` follows the lm-eval requests; what they raise
    (a cancelled job) ends the evaluation."""
    ppl = perplexity(
        model,
        documents,
        tokenizer,
        context=context,
        stride=stride,
        batch_size=batch_size,
        max_documents=max_documents,
        progress=scored,
        ranks=ranks,
    )
    scores: list[dict] = []
    if tasks:
        if before_tasks is not None:
            before_tasks()
        scores = run_lm_eval(
            model,
            tokenizer,
            list(tasks),
            documents=task_documents,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            cache_root=cache_root,
            progress=answered,
            ranks=ranks,
        )
    world_size = ranks.world_size if ranks is not None else 1
    return evaluation_result(ppl, scores, dtype=model_dtype_name(model), world_size=world_size)
