"""Which weights an evaluate / benchmark job of a student measures: resolved at submit (the newest
distillation that has not failed, else the pruned weights; or one named), and on a real worker the
job waits for that distillation and measures its weights, not the pruned ones."""

from __future__ import annotations

import pytest

from backend.db import session_scope
from backend.models import Job
from tests.platform.helpers import error_text, make_student, start_distill, student_rows


@pytest.fixture
def student_with_distillations(api_env):
    """A ready student with a succeeded, a failed and a running distillation (rows only)."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        _, made = student_rows(s, (("s", "ready"), ("other", "ready")))
        st, other = made["s"], made["other"]
        jobs = {}
        for name, status, student in (
            ("succeeded", "succeeded", st),
            ("failed", "failed", st),
            ("others", "succeeded", other),
        ):
            job = Job(kind="distill", params={}, queue="cpu", status=status, student_id=student.id)
            s.add(job)
            s.flush()
            jobs[name] = job.id
        return st.id, jobs


def evaluate(client, student_id: int, **params):
    return client.post("/api/v1/jobs", json={"kind": "evaluate", "student_id": student_id, "params": params})


def test_the_measured_distillation_is_resolved_at_submit(client, api_env, student_with_distillations):
    student_id, jobs = student_with_distillations
    # Newest distillation that did not fail: the succeeded one, not the newer failed one.
    r = evaluate(client, student_id)
    assert r.status_code == 201, r.text
    assert r.json()["params"]["distill_job_id"] == jobs["succeeded"]
    assert evaluate(client, student_id, weights="pruned").json()["params"]["distill_job_id"] is None
    named = evaluate(client, student_id, distill_job_id=jobs["succeeded"])
    assert named.json()["params"]["distill_job_id"] == jobs["succeeded"]

    for params, status, field in (
        ({"distill_job_id": jobs["others"]}, 422, "distill_job_id"),  # another student's
        ({"distill_job_id": 9999}, 422, "distill_job_id"),
        ({"weights": "best"}, 422, "weights"),
    ):
        r = evaluate(client, student_id, **params)
        assert r.status_code == status and r.json()["detail"][0]["loc"][-1] == field, r.text
    r = evaluate(client, student_id, distill_job_id=jobs["failed"])
    assert r.status_code == 409 and "has no weights" in error_text(r)

    teacher_id = client.get(f"/api/v1/students/{student_id}").json()["teacher_id"]
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "benchmark", "teacher_id": teacher_id, "params": {"distill_job_id": jobs["succeeded"]}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "distill_job_id"


def test_an_evaluation_queued_behind_a_distillation_measures_its_weights(live_app):
    import torch

    from worker.engine import evaluation
    from worker.engine.data import read_documents
    from worker.engine.loading import load_model

    api = live_app.api
    student = make_student(live_app)
    distill = start_distill(live_app, student["id"], steps=16, lr=5e-3)
    params = {"max_documents": 4, "seq_len": 64}
    latest = api.post(
        "/jobs", json={"kind": "evaluate", "student_id": student["id"], "params": params}
    ).json()
    pruned = api.post(
        "/jobs",
        json={"kind": "evaluate", "student_id": student["id"], "params": {**params, "weights": "pruned"}},
    ).json()
    assert latest["params"]["distill_job_id"] == distill["id"]  # queued or running: waited for

    waited = live_app.wait_job(latest["id"], timeout=300)
    assert waited["status"] == "succeeded", waited
    finished = api.get(f"/jobs/{distill['id']}").json()
    assert finished["status"] == "succeeded" and finished["finished_at"] <= waited["started_at"]
    assert live_app.wait_job(pruned["id"])["status"] == "succeeded"

    # Each result equals the perplexity of the weights it names, computed here from the saved files.
    docs = read_documents("demo", "test")[:4]
    results = {
        r["job_id"]: r
        for r in api.get(f"/compare?students={student['id']}").json()["models"][0]["evaluations"]
    }
    artifacts = live_app.data_dir / "artifacts"
    for job, weights, path in (
        (latest, "distilled", artifacts / "jobs" / str(distill["id"]) / "model"),
        (pruned, "pruned", artifacts / student["path"]),
    ):
        result = results[job["id"]]
        assert result["weights"] == weights
        model, tokenizer = load_model(str(path), dtype=torch.float32)
        expected = evaluation.perplexity(model, docs, tokenizer, context=64)["perplexity"]
        assert result["perplexity"]["perplexity"] == pytest.approx(expected, rel=1e-5), weights
    assert (
        results[latest["id"]]["perplexity"]["perplexity"] != results[pruned["id"]]["perplexity"]["perplexity"]
    )
