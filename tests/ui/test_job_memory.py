"""The live memory line of every job form (frontend/js/jobmemory.js) says what the API's 409 check
(backend/memcheck.py) will say: for evaluate, benchmark and importance (every offload layout, scans,
samples) the JS need equals the smallest capacity the real check accepts, found by bisection."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from backend import memcheck
from backend.errors import Conflict
from tests.tiny_models import tiny_model
from tests.ui.dashboard_js import run_dashboard_js
from tests.ui.test_costmodel import llama8b
from worker.engine.adapters import arch_spec

DRIVER = """
import * as jm from "./js/jobmemory.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(({ fn, t, s, p, device }) => {
  if (fn === "evaluate") return jm.evaluateNeed(s || t, { ...p, device });
  if (fn === "benchmark") return jm.benchmarkNeed(t, s, { ...p, device });
  if (fn === "importance") return jm.importanceNeed(t, p, device);
  throw new Error(fn);
})));
"""


def accepted_need(monkeypatch, check) -> int:
    """The smallest single-worker capacity `check()` accepts: what the API thinks the job needs."""
    box = {}
    monkeypatch.setattr(memcheck, "capacities", lambda *a, **k: [(box["cap"], "w cpu")])
    monkeypatch.setattr(memcheck, "check_devices", lambda *a, **k: None)

    def fits(cap: int) -> bool:
        box["cap"] = cap
        try:
            check()
        except (HTTPException, Conflict):  # the 409 (a domain error once memcheck raises those)
            return False
        return True

    lo, hi = 0, 1 << 50
    assert fits(hi) and not fits(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_forms_estimate_equals_the_api_check(tmp_path: Path, monkeypatch, device):
    teacher = arch_spec(tiny_model("llama")).summary()
    big = llama8b().summary()
    student = arch_spec(tiny_model("qwen3")).summary()
    queue = "gpu" if device == "cuda" else "cpu"
    settings = SimpleNamespace()
    rows = {1: SimpleNamespace(spec=teacher), 2: SimpleNamespace(spec=student), 3: SimpleNamespace(spec=big)}
    db = SimpleNamespace(get=lambda model, pk: rows.get(pk))
    cases, expected = [], []

    def job(kind, params, student_id, teacher_id):
        cases.append(
            {
                "fn": kind,
                "t": rows[teacher_id].spec,
                "s": rows[student_id].spec if student_id else None,
                "p": params,
                "device": device,
            }
        )
        expected.append(
            accepted_need(
                monkeypatch,
                lambda: memcheck.check_job(settings, db, kind, params, queue, student_id, teacher_id),
            )
        )

    job("evaluate", {"seq_len": 128}, 2, 1)
    job("evaluate", {"seq_len": 512}, None, 3)
    job("benchmark", {"batch_size": 1, "seq_len": 128, "new_tokens": 32}, 2, 1)
    job("benchmark", {"batch_size": 4, "seq_len": 256, "new_tokens": 64}, None, 3)
    for params in [
        {"batch_size": 8, "seq_len": 128, "samples": 64, "scans": ["bi", "drop", "block"], "block_size": 2},
        {"batch_size": 4, "seq_len": 64, "samples": 16, "scans": [], "block_size": 2, "offload": "never"},
        {
            "batch_size": 2,
            "seq_len": 4096,
            "samples": 1024,
            "scans": ["bi", "angular"],
            "block_size": 4,
            "offload": "always",
        },
        {"batch_size": 2, "seq_len": 4096, "samples": 1024, "scans": ["drop", "block"], "block_size": 8},
    ]:
        for tid in (1, 3):
            cases.append({"fn": "importance", "t": rows[tid].spec, "p": params, "device": device})
            expected.append(
                accepted_need(
                    monkeypatch,
                    lambda t=tid, p=params: memcheck.check_importance(settings, rows[t].spec, p, queue),
                )
            )
    got = run_dashboard_js(tmp_path, DRIVER % json.dumps(cases))
    assert got == expected
