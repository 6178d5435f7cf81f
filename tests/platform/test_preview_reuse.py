"""A preview measures the teacher's perplexity once per weights and protocol (worker/teacher_perplexity.py):
the next preview of the same teacher, or one after an evaluation of it, reads the number instead of
measuring it again, and gets exactly the number it would have measured. Other protocols and changed
weights are measured again. Through the real API and a real worker."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.platform.helpers import make_dataset
from worker.teacher_perplexity import weights_stamp


@pytest.fixture(scope="module")
def teacher(live_app):
    """Its own copy of the tiny teacher (a test below touches its files), on a small protocol."""
    path = live_app.data_dir / "models" / "reuse-teacher"
    if not path.exists():
        shutil.copytree(live_app.teacher_dir, path)
    dataset = make_dataset(live_app)["id"]
    protocol = {"dataset_id": dataset, "max_documents": 1, "context": 32, "stride": 24}
    r = live_app.api.post("/teachers", json={"name": "reuse", "source": str(path), "eval_protocol": protocol})
    assert r.status_code == 201, r.text
    assert live_app.wait_job(r.json()["job_id"])["status"] == "succeeded"
    return {**r.json(), "path": path}


def _plan(app, teacher_id: int, plan: dict) -> int:
    r = app.api.post("/plans", json={"teacher_id": teacher_id, "name": str(plan), "plan": plan})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _preview(app, plan_id: int, **body) -> dict:
    r = app.api.post(f"/plans/{plan_id}/preview", json=body or None)
    assert r.status_code == 202, r.text
    job = app.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    return job


def _log(app, job_id: int) -> str:
    return "\n".join(line["msg"] for line in app.api.get(f"/jobs/{job_id}/logs").json())


def test_a_second_preview_reads_the_teachers_perplexity_of_the_first(live_app, teacher):
    drop_1 = _plan(live_app, teacher["id"], {"drop_layers": [1]})
    drop_2 = _plan(live_app, teacher["id"], {"drop_layers": [2]})
    blocks = {"samples": 4, "seq_len": 32}
    first = _preview(live_app, drop_1, **blocks)
    assert first["result"]["teacher_from_job"] is None  # nothing to reuse yet: measured
    second = _preview(live_app, drop_2, **blocks)
    r1, r2 = first["result"], second["result"]
    assert r2["teacher_from_job"] == first["id"]
    assert r2["ppl_teacher"] == r1["ppl_teacher"] and r2["tokens"] == r1["tokens"]
    assert r2["ppl_masked"] != r1["ppl_masked"]  # the plan's half is measured every time
    assert f"measured by job {first['id']} on the same weights and protocol" in _log(live_app, second["id"])
    # The number read is the number a measurement gives: measure it again by changing the weights' stamp
    # (same bytes, new modification time), then the plan of the first preview gives its own numbers again.
    weights = next(teacher["path"].glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = _preview(live_app, drop_1, **blocks)
    assert again["result"]["teacher_from_job"] is None
    assert again["result"]["ppl_teacher"] == r1["ppl_teacher"]
    assert again["result"]["ppl_masked"] == r1["ppl_masked"]
    # Another protocol (a different block count) is measured, not read.
    other = _preview(live_app, drop_2, samples=2, seq_len=32)
    assert other["result"]["teacher_from_job"] is None
    assert other["result"]["tokens"] < r1["tokens"]


def test_a_preview_on_the_teachers_protocol_reads_its_evaluation(live_app, teacher):
    r = live_app.api.post("/jobs", json={"kind": "evaluate", "teacher_id": teacher["id"], "params": {}})
    assert r.status_code == 201, r.text
    evaluation = live_app.wait_job(r.json()["id"])
    assert evaluation["status"] == "succeeded", evaluation.get("error")
    preview = _preview(live_app, _plan(live_app, teacher["id"], {"drop_layers": [3]}))
    result, measured = preview["result"], evaluation["result"]["perplexity"]
    assert result["protocol"] == evaluation["result"]["protocol"]  # the teacher's protocol, both
    assert result["teacher_from_job"] == evaluation["id"]
    assert result["ppl_teacher"] == measured["perplexity"] and result["tokens"] == measured["tokens"]


def test_the_stamp_names_the_files_the_device_and_the_dtype(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 8)
    stamp = weights_stamp(str(tmp_path), "cpu", "float32")
    assert stamp == weights_stamp(str(tmp_path), "cpu", "float32")
    assert stamp != weights_stamp(str(tmp_path), "cuda:0", "float32")
    assert stamp != weights_stamp(str(tmp_path), "cpu", "bfloat16")
    (tmp_path / "model.safetensors").write_bytes(b"y" * 9)
    assert stamp != weights_stamp(str(tmp_path), "cpu", "float32")
    assert weights_stamp(str(tmp_path / "missing"), "cpu", "float32") is None
