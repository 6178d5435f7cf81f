"""The importance job's `offload` parameter on a real worker: streamed and in-memory runs give the same
scores, and the job result and manifest say which mode ran and why; a bad value is a 422."""

from __future__ import annotations

import json

import numpy as np

from worker.engine.importance import ImportanceResult


def test_offload_always_streams_and_scores_like_never(live_app):
    r = live_app.api.post("/teachers", json={"name": "tiny", "source": str(live_app.teacher_dir)})
    assert r.status_code == 201, r.text
    teacher = r.json()
    assert live_app.wait_job(teacher["job_id"])["status"] == "succeeded"
    dataset = live_app.api.post("/datasets", json={"name": "demo", "source": "demo"}).json()
    body = {"teacher_id": teacher["id"], "dataset_id": dataset["id"], "samples": 4, "seq_len": 24}
    body.update(batch_size=2, scans=["bi", "drop", "block", "angular"])

    bad = live_app.api.post("/importance-runs", json={**body, "offload": "sometimes"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "offload"], bad.text

    runs = {}
    limit = 0.5  # GB: the worker hands the job's spill limit to the streamed pass's disk tier
    for offload in ("always", "never"):
        extra = {"spill_limit_gb": limit} if offload == "always" else {}
        r = live_app.api.post("/importance-runs", json={**body, "offload": offload, **extra})
        assert r.status_code == 201, r.text
        job = live_app.wait_job(r.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert (job["result"]["mode"], job["result"]["mode_reason"]) == (
            {"always": "streamed", "never": "in_memory"}[offload],
            f"offload={offload}",
        )
        folder = live_app.data_dir / "artifacts" / "importance" / str(r.json()["id"])
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["execution"]["mode"] == job["result"]["mode"]
        if offload == "always":  # the stores fit the worker's RAM: one pass, the disk tier capped
            assert job["result"]["passes"] == manifest["execution"]["passes"] == 1
            assert manifest["execution"]["activations"]["budget_bytes"]["disk"] == int(limit * 1e9)
        runs[offload] = ImportanceResult.load(folder)
    for name, expected in runs["never"].arrays.items():
        np.testing.assert_allclose(runs["always"].arrays[name], expected, rtol=1e-6, atol=0, err_msg=name)
    assert runs["always"].manifest["weights_sha256"] == runs["never"].manifest["weights_sha256"]
