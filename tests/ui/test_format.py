"""The dashboard's number formats (frontend/js/format.js), run in node: FLOPs use SI prefixes (a Llama-8B
token is 16 GFLOP, not the "B" of parameter counts)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ui.dashboard_js import run_dashboard_js


def js_format(tmp_path: Path, calls: list[tuple[str, float]]) -> list[str]:
    driver = (
        'import * as f from "./js/format.js";\n'
        f"const calls = {json.dumps(calls)};\n"
        "process.stdout.write(JSON.stringify(calls.map(([fn, x]) => f[fn](x))));\n"
    )
    return run_dashboard_js(tmp_path, driver)


def test_flops_use_si_prefixes(tmp_path):
    calls = [("flops", 3.15e7), ("flops", 1.606e10), ("flops", 2e12), ("flops", 512), ("compact", 8.03e9)]
    assert js_format(tmp_path, calls) == ["31.5 MFLOP", "16.1 GFLOP", "2.00 TFLOP", "512 FLOP", "8.03B"]
