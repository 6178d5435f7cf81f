"""The search job scores the teacher in the search's dtype (`settings.dtype`: float32 unless the job asks
for another), as `prunescope search` does, not in the checkpoint's own dtype (the demo teacher is stored in
bfloat16). Handler-level: the real `run_search_job` up to the engine's `run_search`, which is replaced by
a probe reading the loaded model's dtype (no database, broker or worker process). A dtype the engine
cannot load is a 422 naming the field."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

import worker.engine.search as search_engine
from worker.engine.importance.result import ImportanceResult
from worker.search_job import run_search_job


class Scored(Exception):
    """The probe stops the job once it saw what the engine would score."""


def scored_dtype(monkeypatch, settings: dict) -> torch.dtype:
    teacher = SimpleNamespace(source="demo", trust_remote_code=False)
    run = SimpleNamespace(artifact="importance/1")
    monkeypatch.setattr("worker.search_job.fetch_rows", lambda rt, *pairs: (run, teacher))
    monkeypatch.setattr(
        "worker.search_job.store", lambda rt: SimpleNamespace(local_dir=lambda key: f"/nowhere/{key}")
    )
    monkeypatch.setattr(ImportanceResult, "load", classmethod(lambda cls, path: None))
    seen = {}

    def probe(model, tokenizer, importance, settings, **kwargs):
        seen["dtype"] = next(model.parameters()).dtype
        seen["stored_dtype"] = kwargs.get("stored_dtype")
        raise Scored

    monkeypatch.setattr(search_engine, "run_search", probe)
    messages = []
    rt = SimpleNamespace(
        _clock=time.monotonic,
        device="cpu",
        settings=SimpleNamespace(trust_remote_code=False, cache=None),
        progress=lambda fraction, message, **k: messages.append(message),
        raise_if_cancelled=lambda: None,
    )
    job = SimpleNamespace(id=1, importance_run_id=1, teacher_id=1, params={"settings": settings})
    with pytest.raises(Scored):
        run_search_job(rt, job)
    assert any(m.startswith("loading weights: ") and m.endswith(" tensors") for m in messages), messages
    # Memory is priced in the checkpoint's own dtype whatever the scoring one (audit 3).
    assert seen["stored_dtype"] == "bfloat16"
    return seen["dtype"]


def test_the_demo_teacher_is_scored_in_float32_by_default(monkeypatch):
    assert scored_dtype(monkeypatch, {"budgets": ["params=80%"]}) == torch.float32


def test_the_jobs_dtype_is_used_when_given(monkeypatch):
    settings = {"budgets": ["params=80%"], "dtype": "bfloat16"}
    assert scored_dtype(monkeypatch, settings) == torch.bfloat16


def test_an_unknown_dtype_is_a_422_naming_it(client):
    body = {"importance_run_id": 1, "settings": {"budgets": ["params=80%"], "dtype": "fp8"}}
    r = client.post("/api/v1/searches", json=body)
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", "settings", "dtype"] in locs, locs
    assert client.get("/api/v1/jobs").json() == []
