"""The dashboard's number formats (frontend/js/format.js), run in node: FLOPs use SI prefixes (a Llama-8B
token is 16 GFLOP, not the "B" of parameter counts)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

FORMAT_JS = Path(__file__).resolve().parents[2] / "frontend" / "js" / "format.js"


def js_format(tmp_path: Path, calls: list[tuple[str, float]]) -> list[str]:
    node = shutil.which("node")
    assert node, "node is needed for the format test"
    shutil.copy(FORMAT_JS, tmp_path / "format.mjs")
    driver = tmp_path / "driver.mjs"
    driver.write_text(
        'import * as f from "./format.mjs";\n'
        f"const calls = {json.dumps(calls)};\n"
        "process.stdout.write(JSON.stringify(calls.map(([fn, x]) => f[fn](x))));\n"
    )
    proc = subprocess.run([node, str(driver)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_flops_use_si_prefixes(tmp_path):
    calls = [("flops", 3.15e7), ("flops", 1.606e10), ("flops", 2e12), ("flops", 512), ("compact", 8.03e9)]
    assert js_format(tmp_path, calls) == ["31.5 MFLOP", "16.1 GFLOP", "2.00 TFLOP", "512 FLOP", "8.03B"]
