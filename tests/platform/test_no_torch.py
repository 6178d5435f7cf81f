"""The backend never imports torch: import the app and serve real requests in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def test_backend_serves_without_importing_torch(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from fastapi.testclient import TestClient
        from backend.app import create_app
        from backend.migrate import upgrade
        from backend.settings import Settings

        url = "sqlite:///{tmp_path}/db.sqlite"
        upgrade(url)
        settings = Settings(database_url=url, broker_url="redis://127.0.0.1:1/0", data_dir="{tmp_path}",
                            allowed_roots="{tmp_path}")
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
            codes = [c.get(p).status_code for p in ("/api/v1/health", "/api/v1/teachers", "/api/v1/jobs",
                                                   "/api/v1/openapi.json", "/static/vendor/plotly.min.js")]
            codes.append(c.post("/api/v1/datasets", json={{"name": "d", "source": "demo"}}).status_code)
            codes.append(c.post("/api/v1/plans/validate", json={{"teacher_id": 1, "plan": {{}}}}).status_code)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print(json.dumps({{"codes": codes, "heavy": heavy}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [200, 200, 200, 200, 200, 201, 404]
    assert result["heavy"] == []
