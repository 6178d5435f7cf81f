"""Rounding a planner target to a hardware-friendly multiple (frontend/js/components/planner.js
roundWidth), run in node: nearest for a width the user typed, down for one a budget chose, never above
the teacher's width, never below one multiple."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ui.dashboard_js import run_dashboard_js

DRIVER = """
import { roundWidth } from "./js/components/planner.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(([n, m, max, down]) => roundWidth(n, m, max, down))));
"""


def test_round_width(tmp_path: Path):
    cases = [
        [30, 8, 48, False],  # nearest: 32
        [30, 8, 48, True],  # a budget's width: down to 24
        [1437, 64, 14336, False],  # 22.45 multiples -> 1408
        [1470, 64, 14336, False],  # 22.97 -> 1472
        [4095, 128, 4095, False],  # 4096 would exceed the teacher: 3968
        [100, 128, 4096, True],  # less than one multiple: kept as asked
        [2048, 128, 4096, False],  # already a multiple
        [77, 0, 4096, False],  # no rounding asked
    ]
    assert run_dashboard_js(tmp_path, DRIVER % json.dumps(cases)) == [32, 24, 1408, 1472, 3968, 100, 2048, 77]
