"""A finished search job's report (written by the worker as `searches/<job id>/search.json`, the engine's
`SearchReport.to_json()` verbatim) read back for the API: every candidate in one flat shape the dashboard
plots, one candidate with its plan, and the Plan row a candidate becomes (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.artifacts import ArtifactStore
from backend.errors import Conflict, NotFound
from backend.models import Artifact, Job, Plan
from backend.settings import Settings
from worker.engine import eval_protocol
from worker.engine.search.settings import parse_budget

REPORT_FILE = "search.json"
ARTIFACT_KIND = "search"


def report_key(job_id: int) -> str:
    return f"searches/{job_id}"


def load_report(db: Session, job: Job, settings: Settings) -> dict[str, Any]:
    """The job's report; 409 while the search has not finished, or when its report is gone or damaged."""
    if job.status != "succeeded":
        raise Conflict(f"Search {job.id} is {job.status}: its candidates exist once it has succeeded")
    key = db.scalar(
        select(Artifact.key)
        .where(Artifact.job_id == job.id, Artifact.kind == ARTIFACT_KIND)
        .order_by(Artifact.id.desc())
    )
    if key is None:
        raise Conflict(f"Search {job.id} saved no report")
    try:
        path = Path(ArtifactStore(settings.artifacts_url).local_dir(key)) / REPORT_FILE
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # removed or damaged behind the database's back
        raise Conflict(f"Search {job.id}: its report {key} cannot be read ({exc})") from exc


def _latency(figures: dict | None, name: str) -> float | None:
    return (figures or {}).get(name)


def costs(item: dict[str, Any]) -> dict[str, float | None]:
    """The cost figures of a candidate (or of the teacher) under the names the dashboard's x axes use."""
    latency = item.get("latency")
    return {
        "params": item.get("params"),
        "memory": item.get("memory_bytes"),
        "latency": _latency(latency, "decode_s_per_token"),
        "prefill": _latency(latency, "prefill_s"),
        "throughput": _latency(latency, "decode_tokens_per_s"),
        # Computed for every candidate, budget or not (FLOPs separate depth from width at equal params).
        "flops": item.get("flops_per_token"),
        "kv_cache": item.get("kv_cache_bytes_per_token"),
    }


def _with_over_limit(budgets: dict[str, Any]) -> dict[str, Any]:
    """Each budget's figures with `over_limit`, the fraction past the bare limit (0 within it): a report
    written before the engine gave it gets it here, by the engine's own rule (Budget.over_limit)."""
    out = {}
    for text, b in budgets.items():
        if "over_limit" not in b and b.get("value") is not None and b.get("limit") is not None:
            b = {**b, "over_limit": parse_budget(text).over_limit(b["value"], b["limit"])}
        out[text] = b
    return out


def candidate_out(c: dict[str, Any], *, with_plan: bool = False) -> dict[str, Any]:
    """One candidate, flat: its axes (heads as `num_heads`, as the teacher's spec names them), `costs`,
    loss and perplexity; the plan (explicit removals, large for big models) only when asked for."""
    axes = dict(c.get("axes") or {})
    if "heads_per_layer" in axes:
        axes["num_heads"] = axes["heads_per_layer"]
    out = {
        "id": str(c["id"]),
        "rank": c.get("rank"),
        "cut": c.get("cut"),
        "axes": axes,
        "costs": costs(c),
        "params_fraction": c.get("params_fraction"),
        "flops_per_token": c.get("flops_per_token"),
        "kv_cache_bytes_per_token": c.get("kv_cache_bytes_per_token"),
        "params_non_embedding": c.get("params_non_embedding"),
        "loss": c.get("loss"),
        "perplexity": c.get("perplexity"),
        "loss_diff_vs_best": c.get("loss_diff_vs_best"),
        "loss_diff_se": c.get("loss_diff_se"),
        "within_noise_of_best": c.get("within_noise_of_best"),
        "budgets": _with_over_limit(c.get("budgets") or {}),
        "within_budget": True,  # the engine lists only candidates within every budget
    }
    if with_plan:
        out["plan"] = c["plan"]
    return out


def summary(job: Job, report: dict[str, Any]) -> dict[str, Any]:
    """Everything the search view draws: the teacher as reference point (with its figure of each budget),
    each budget's limit by its text, the search space, the engine's statistics and every candidate
    (without plans)."""
    teacher = report.get("teacher") or {}
    budgets = report.get("budgets") or []
    reference = {**costs(teacher), "loss": teacher.get("loss"), "axes": teacher.get("arch")}
    # The teacher's figure of each budget (its memory at the budget's batch and context, its timing):
    # the axis of a kind the teacher's own report entry has no figure for takes its first budget's.
    figures = teacher.get("budgets") or {}
    for b in budgets:
        if reference.get(b["kind"]) is None and figures.get(b["text"]) is not None:
            reference[b["kind"]] = figures[b["text"]]
    return {
        "job_id": job.id,
        "teacher_id": job.teacher_id,
        "importance_run_id": job.importance_run_id,
        "top_k": (job.params or {}).get("top_k"),
        "reference": {**reference, "budgets": figures},
        # What every loss here (the teacher's too) was measured on: the search's own sample, not the
        # teacher's evaluation protocol, so the view says so beside each figure.
        "protocol": eval_protocol.of_job("search", job.params or {}),
        # By budget text, as each candidate's `budgets` are: two memory budgets at other batches or
        # contexts are two entries (keyed by kind, the second was lost).
        "budgets": {
            b["text"]: {k: b.get(k) for k in ("kind", "limit", "batch", "context", "minimum")}
            for b in budgets
        },
        # The margin the engine let costs exceed those limits by (SearchSettings.tolerance, as this search
        # ran): the chart draws it, so winners past the bare limit do not look over budget.
        "tolerance": (report.get("settings") or {}).get("tolerance"),
        "budget_texts": [b.get("text") for b in budgets],
        "basis": report.get("basis") or {},
        "space": report.get("space") or {},
        "stats": report.get("stats") or {},
        "candidates": [candidate_out(c) for c in report.get("candidates") or []],
    }


def find_candidate(report: dict[str, Any], candidate_id: str) -> dict[str, Any]:
    for c in report.get("candidates") or []:
        if str(c["id"]) == candidate_id:
            return c
    raise NotFound(f"Search has no candidate {candidate_id!r}")


def plan_name(job_id: int, candidate: dict[str, Any]) -> str:
    return f"search {job_id} #{candidate.get('rank')}: {candidate['id']}"[:200]


def existing_plan(db: Session, job: Job, candidate: dict[str, Any]) -> Plan | None:
    """The plan this candidate was saved as before (opening it twice makes one plan)."""
    return db.scalar(
        select(Plan)
        .where(Plan.teacher_id == job.teacher_id, Plan.name == plan_name(job.id, candidate))
        .order_by(Plan.id)
        .limit(1)
    )
