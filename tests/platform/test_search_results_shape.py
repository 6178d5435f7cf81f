"""GET /searches/{id}/candidates' shape from a stored report (backend/search_results.py `summary`):
budgets keyed by their text, as each candidate's are (two memory budgets at other contexts were one
entry keyed "memory"), the teacher's figure of each budget as the reference, and `over_limit`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from backend.search_results import summary

MEMORY_A, MEMORY_B = "memory=40MB@1,128", "memory=60MB@16,512"


def report() -> dict:
    """A report as the engine writes it, before it gave `over_limit` (the API adds it)."""
    budgets = [
        {"kind": "memory", "text": MEMORY_A, "limit": 40e6, "batch": 1, "context": 128, "minimum": False},
        {"kind": "memory", "text": MEMORY_B, "limit": 60e6, "batch": 16, "context": 512, "minimum": False},
    ]
    candidate = {
        "id": "L3-drop.H4-none.F48.D32",
        "rank": 1,
        "cut": "depth",
        "axes": {"num_layers": 3},
        "params": 1000,
        "memory_bytes": 40.4e6,
        "latency": None,
        "loss": 4.0,
        "budgets": {
            MEMORY_A: {"value": 40.4e6, "limit": 40e6, "fits": True},  # 1% past the bare limit
            MEMORY_B: {"value": 50e6, "limit": 60e6, "fits": True},
        },
    }
    teacher = {"params": 2000, "loss": 3.5, "arch": {}, "budgets": {MEMORY_A: 70e6, MEMORY_B: 90e6}}
    return {
        "teacher": teacher,
        "budgets": budgets,
        "settings": {"tolerance": 0.02},
        "candidates": [candidate],
    }


def test_budgets_are_keyed_by_text_and_the_teacher_has_its_budget_figures():
    job = SimpleNamespace(id=7, teacher_id=1, importance_run_id=2, params={"top_k": 3})
    out = summary(job, report())
    assert set(out["budgets"]) == {MEMORY_A, MEMORY_B}
    assert out["budgets"][MEMORY_B] == {
        "kind": "memory",
        "limit": 60e6,
        "batch": 16,
        "context": 512,
        "minimum": False,
    }
    # The teacher's memory (null before) is its figure of the first memory budget, as a candidate's is.
    assert out["reference"]["memory"] == 70e6
    assert out["reference"]["budgets"] == {MEMORY_A: 70e6, MEMORY_B: 90e6}
    figures = out["candidates"][0]["budgets"]
    assert figures[MEMORY_A]["over_limit"] == pytest.approx(0.01) and figures[MEMORY_A]["fits"]
    assert figures[MEMORY_B]["over_limit"] == 0
