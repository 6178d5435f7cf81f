"""The bake-off's final step: rank candidates by quality before distillation (as cut) and after, and
name the pairs whose order flipped (Minitron: the ranking before distillation is not the one after)."""

from __future__ import annotations

import math
from typing import Any

METRICS = ("loss", "perplexity")  # lower is better for both


def quality(evaluate_result: dict[str, Any] | None) -> dict[str, float | None]:
    """{"loss", "perplexity"} of an evaluate job's result (None where it has no number)."""
    ppl = (evaluate_result or {}).get("perplexity") or {}
    if isinstance(ppl, (int, float)):  # a bare perplexity: its loss is the log
        ppl = {"perplexity": ppl, "loss": math.log(ppl) if ppl > 0 else None}
    return {k: ppl.get(k) if isinstance(ppl.get(k), (int, float)) else None for k in METRICS}


def _ranks(rows: list[dict[str, Any]], side: str, metric: str) -> list[int | None]:
    """1-based rank of each row by `side`'s metric (ties share the better rank; None: no number)."""
    values = [row[side].get(metric) for row in rows]
    known = sorted(v for v in values if v is not None)
    return [None if v is None else known.index(v) + 1 for v in values]


def rank(rows: list[dict[str, Any]], metric: str = "loss", final: bool = True) -> dict[str, Any]:
    """The ranking table: each row gains rank_before, rank_after and flipped; ordered by rank after
    (then by rank as cut, for rows not distilled yet).

    `flips` lists the pairs [a, b] where a ranked below b before distillation and above it after.
    A partial ranking (`final=False`, while candidates still run) ranks the numbers in so far and names
    no winner: `partial` is True.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown ranking metric {metric!r}: use {' or '.join(METRICS)}")
    before, after = _ranks(rows, "before", metric), _ranks(rows, "after", metric)
    flips = []
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            if None in (before[i], before[j], after[i], after[j]):
                continue
            if before[i] > before[j] and after[i] < after[j]:
                flips.append([a["name"], b["name"]])
    flipped = {name for pair in flips for name in pair}
    table = [
        {**row, "rank_before": rb, "rank_after": ra, "flipped": row["name"] in flipped}
        for row, rb, ra in zip(rows, before, after, strict=True)
    ]
    table.sort(
        key=lambda r: (
            r["rank_after"] is None,
            r["rank_after"] or 0,
            r["rank_before"] is None,
            r["rank_before"] or 0,
            r["name"],
        )
    )
    winner = table[0] if final and table and table[0]["rank_after"] is not None else None
    return {
        "metric": metric,
        "partial": not final,
        "ranking": table,
        "flips": flips,
        "winner": winner["name"] if winner else None,
        "winner_student_id": winner["student_id"] if winner else None,
        "winner_distill_job_id": winner["distill_job_id"] if winner else None,
    }
