"""Planner ergonomics, run in node on the dashboard's own modules: a parameter budget written as a share
of the teacher ("70%") or as a count ("5.87M"), and readable study names ("depth-75%-1")."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ui.dashboard_js import run_dashboard_js

DRIVER = """
import { parseCount } from "./js/format.js";
import { studentName } from "./js/views/compare.js";
const counts = %s, names = %s;
process.stdout.write(JSON.stringify({
  counts: counts.map(([text, total]) => parseCount(text, total)),
  names: names.map(([kind, pct, existing]) => studentName(kind, pct, existing)),
}));
"""


def run(tmp_path: Path, counts: list, names: list) -> dict:
    return run_dashboard_js(tmp_path, DRIVER % (json.dumps(counts), json.dumps(names)))


def test_budgets_as_share_or_count_and_readable_study_names(tmp_path):
    total = 8_030_261_248  # a Llama-3.1-8B teacher
    out = run(
        tmp_path,
        counts=[["70%", total], ["62.5 %", 1000], ["5.87M", total], ["3500000", None], ["70 percent", total]],
        names=[
            ["depth", 75, []],
            ["depth", 75, ["depth-75%-1", "width-75%-4", "depth-75%-2"]],
            ["width", "62.5", ["depth-62.5%-1"]],
            ["depth", 75, ["demo teacher-depth-75pct-7xij"]],
        ],
    )
    assert out["counts"][:4] == [round(0.7 * total), 625, 5_870_000, 3_500_000]
    assert out["counts"][4] is None  # NaN: the planner then names the field and the accepted forms
    assert out["names"] == ["depth-75%-1", "depth-75%-3", "width-62.5%-1", "depth-75%-1"]
