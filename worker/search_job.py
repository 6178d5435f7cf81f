"""The `search` job (issue 12): every architecture of the teacher within the job's budgets, scored on
held-out data by the engine (worker/engine/search), its report stored whole as `searches/<job>/search.json`
(read back by backend/search_results.py). Progress: candidates scored / total and candidates per minute."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.search_results import ARTIFACT_KIND, REPORT_FILE, report_key
from worker.engine.search.rate import candidates_per_minute
from worker.job_io import (
    LoadCount,
    check_remote_code,
    fetch_rows,
    model_source,
    publish,
    record_artifact,
    store,
)
from worker.runtime import JobRuntime


def load_teacher(rt: JobRuntime, teacher, dtype: str):
    """(model, tokenizer) of the teacher in the search's dtype (`settings.dtype`, float32 unless the job
    asks otherwise), as `prunescope search` loads it: not the checkpoint's own dtype (the demo teacher is
    stored in bfloat16, and its losses would then be scored in bfloat16). Its progress counts the tensors
    read, as every job's load does (worker.job_io.load)."""
    from worker.engine.loading import load_model

    check_remote_code(rt, teacher.trust_remote_code)
    return load_model(
        model_source(teacher.source),
        dtype=dtype,
        device=rt.device,
        trust_remote_code=teacher.trust_remote_code,
        progress=LoadCount(rt, "weights", (0.0, 0.02)),  # k/N tensors: the first 2% of the bar
    )


def run_search_job(rt: JobRuntime, job) -> dict[str, Any]:
    from backend.models import ImportanceRun, Teacher
    from worker.engine.importance.result import ImportanceResult
    from worker.engine.loading import stored_dtype
    from worker.engine.search import SearchSettings, run_search

    run, teacher = fetch_rows(rt, (ImportanceRun, job.importance_run_id), (Teacher, job.teacher_id))
    settings = SearchSettings.model_validate(job.params["settings"])
    rt.progress(0.0, "loading model", force=True)
    model, tokenizer = load_teacher(rt, teacher, settings.dtype)
    model.eval()
    importance = ImportanceResult.load(store(rt).local_dir(run.artifact))
    started = time.monotonic()
    phase = {"name": None}

    def progress(done: int, total: int, message: str) -> None:
        name = "timing" if message.startswith("timing") else "scoring"
        first = phase["name"] != name
        if first:
            phase.update(name=name, t0=time.monotonic(), done0=done)
        if name == "timing":  # shapes timed once each before scoring: the first 10% of the bar
            fraction = 0.02 + 0.08 * done / max(total, 1)
            text = message
        else:
            rate = candidates_per_minute(done - phase["done0"], time.monotonic() - phase["t0"])
            fraction = 0.1 + 0.89 * done / max(total, 1)
            text = f"{done}/{total} candidates scored" + (f" · {rate:.0f} per minute" if rate else "")
        # A phase's first and last counts are never throttled away: a fast search would otherwise show
        # only the load's message before its report.
        rt.progress(fraction, text, force=first or done >= total, phase=name)
        rt.raise_if_cancelled()

    cache = Path(rt.settings.cache).expanduser() / "latency.json" if rt.settings.cache else None
    report = run_search(
        model,
        tokenizer,
        importance,
        settings,
        progress=progress,
        latency_cache=str(cache) if cache else None,
        # Memory is priced in the checkpoint's dtype (its students are saved in it), not the scoring one.
        stored_dtype=stored_dtype(model_source(teacher.source), teacher.trust_remote_code),
    ).to_json()
    candidates = report.get("candidates") or []
    rt.progress(0.995, f"{len(candidates)} candidates listed; saving the report", force=True)

    def write(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(report))

    key = publish(rt, report_key(job.id), write)
    with session_scope(rt.url) as s:
        record_artifact(rt, s, job.id, ARTIFACT_KIND, key)
    stats = report.get("stats") or {}
    top_k = int(job.params.get("top_k", 5))
    best = candidates[0] if candidates else None
    return {
        "artifact": key,
        "candidates": len(candidates),
        "enumerated": stats.get("enumerated"),
        "within_budget": stats.get("within_budget"),
        "candidates_per_minute": stats.get("candidates_per_minute"),
        "rate_note": stats.get("rate_note"),  # why there is no rate (rate.py), for the dashboard's "—"
        "note": stats.get("note"),  # why nothing was listed, when nothing was
        "seconds": stats.get("seconds", time.monotonic() - started),
        "teacher_loss": (report.get("teacher") or {}).get("loss"),
        "best": {k: best.get(k) for k in ("id", "cut", "loss", "params")} if best else None,
        "top": [c["id"] for c in candidates[:top_k]],
        "budgets": [b.get("text") for b in report.get("budgets") or []],
    }
