"""`prunescope evaluate` and an evaluate job give one result dict (worker.engine.evaluation.evaluate_model):
the same keys, shapes and, on the same model, text and windows, the same numbers; the job adds only where
and on what it measured. (The CLI once wrote the lm-eval scores under `lm_eval`, the job under `tasks`.)"""

from __future__ import annotations

import json

import pytest

from backend.db import session_scope
from backend.models import Job, Teacher
from tests.conftest import settings_from
from worker.runtime import JobRuntime

WINDOWS = {"split": "test", "max_documents": 2, "seq_len": 32, "stride": 16}
JOB_ONLY = {"protocol", "seconds", "weights_stamp", "device"}  # where and on what the job measured


def shape(value):
    """Keys and element shapes, numbers as one kind (a count is an int, a loss a float)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return (
        "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cli_prints_the_result_an_evaluate_job_stores(api_env, tiny_teacher_dir, capsys):
    from worker.cli import main
    from worker.handlers.measure_jobs import run_evaluate

    argv = ["evaluate", str(tiny_teacher_dir), "--data", "demo", "--split", "test", "--max-documents", "2"]
    argv += ["--context", "32", "--stride", "16", "--tasks", "prunescope_cloze", "--limit", "3"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)

    settings = settings_from(api_env)
    with session_scope(settings.resolved_database_url) as s:
        teacher = Teacher(name="tiny", source=str(tiny_teacher_dir), status="ready")
        s.add(teacher)
        s.flush()
        params = {**WINDOWS, "tasks": ["prunescope_cloze"], "limit": 3}
        job = Job(kind="evaluate", params=params, queue="cpu", teacher_id=teacher.id)
        s.add(job)
        s.flush()
        job_id = job.id
    rt = JobRuntime(settings, job_id, attempt=1)
    stored = run_evaluate(rt, rt.claim())
    rt.finish("succeeded", result=stored)

    assert set(printed) == {"perplexity", "tasks", "dtype", "world_size"}
    assert set(stored) == set(printed) | JOB_ONLY
    assert shape({k: stored[k] for k in printed}) == shape(printed)
    assert [(t["task"], t["metric"]) for t in printed["tasks"]] == [
        (t["task"], t["metric"]) for t in stored["tasks"]
    ]
    assert printed["tasks"] and printed["world_size"] == stored["world_size"] == 1
    # The same model, text and windows: the same numbers.
    assert printed["perplexity"] == pytest.approx(stored["perplexity"])
    assert [t["value"] for t in printed["tasks"]] == pytest.approx([t["value"] for t in stored["tasks"]])
