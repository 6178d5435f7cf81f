"""A search candidate's one-line architecture (frontend/js/searchmath.js `archLine`, run in node): two
candidates of one size that drop different layers read apart, with the layers worded as the bake-off
names them (backend/workflows/naming.py `_drops`); a width-only cut and the teacher say nothing of drops."""

from __future__ import annotations

import json
from pathlib import Path

from backend.workflows.naming import _drops
from tests.ui.dashboard_js import run_dashboard_js

TEACHER = {"num_layers": 8, "num_heads": 8, "num_kv_heads": 4, "intermediate_size": 768, "hidden_size": 256}


def js_lines(tmp_path: Path, cases: list[dict]) -> list[str]:
    driver = (
        'import { archLine } from "./js/searchmath.js";\n'
        f"const teacher = {json.dumps(TEACHER)};\n"
        f"const cases = {json.dumps(cases)};\n"
        "process.stdout.write(JSON.stringify(cases.map((axes) => archLine(axes, teacher))));\n"
    )
    return run_dashboard_js(tmp_path, driver)


def test_candidates_that_drop_different_layers_read_apart(tmp_path):
    same = {"num_layers": 6, "num_heads": 8, "num_kv_heads": 4, "intermediate_size": 768, "hidden_size": 256}
    width = {**TEACHER, "hidden_size": 192, "drop_layers": []}
    a, b, w, t = js_lines(
        tmp_path, [{**same, "drop_layers": [3, 4]}, {**same, "drop_layers": [5, 4]}, width, TEACHER]
    )
    assert a != b
    assert a == f"6/8 layers · 8 heads · MLP 768 · hidden 256 · {_drops((3, 4))}"
    assert b.endswith(f" · {_drops((4, 5))}")  # in layer order, as the bake-off's plans list them
    assert w == "8 layers · 8 heads · MLP 768 · hidden 192/256" and "drops" not in t
