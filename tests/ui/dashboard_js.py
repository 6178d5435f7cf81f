"""Run the dashboard's own ES modules (frontend/js) in node, so tests can hold pure JS functions (cost
model, formats, wizard choices) to their Python definitions without a browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

FRONTEND_JS = Path(__file__).resolve().parents[2] / "frontend" / "js"


def run_dashboard_js(tmp_path: Path, driver: str, stdin: str | None = None) -> Any:
    """Run `driver` (an ES module importing e.g. "./js/format.js") and parse the JSON it writes."""
    node = shutil.which("node")
    assert node, "node is needed to run the dashboard's JS modules (make test installs it)"
    shutil.copytree(FRONTEND_JS, tmp_path / "js")
    (tmp_path / "package.json").write_text('{"type": "module"}')  # the dashboard's .js files are ES modules
    (tmp_path / "driver.mjs").write_text(driver)
    proc = subprocess.run(
        [node, str(tmp_path / "driver.mjs")], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
