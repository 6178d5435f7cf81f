"""Continuing a finished distillation (the bake-off's "promote winner"): a distill job with
`init_distill_job_id` starts from the weights that distillation saved, not from the pruned ones; it must
name a succeeded distillation of the same student (on N ranks too: tests/platform/test_multi_rank_jobs.py).
Real API server, Redis and worker."""

from __future__ import annotations

import pytest

from tests.platform.helpers import make_student, start_distill


def val_loss(app, job_id: int) -> float:
    """The validation loss at the end of a distill job (val_every 0: measured once, after the last step)."""
    series = app.api.get(f"/jobs/{job_id}/metrics?names=val_loss").json()["series"]["val_loss"]
    return series[-1]["value"]


@pytest.fixture(scope="module")
def student(live_app):
    return make_student(live_app)


def test_a_continued_distillation_starts_from_the_distilled_weights(live_app, student):
    first = start_distill(live_app, student["id"], steps=6, warmup=1, lr=5e-3, checkpoint_every=0)
    assert live_app.wait_job(first["id"])["status"] == "succeeded"
    # One step at a learning rate of 1e-12 leaves the weights as they start: its final validation loss is
    # that of its starting weights, on the same validation blocks.
    still = {"steps": 1, "warmup": 0, "lr": 1e-12, "min_lr": 0.0, "checkpoint_every": 0}
    cont = start_distill(live_app, student["id"], **still, init_distill_job_id=first["id"])
    pruned = start_distill(live_app, student["id"], **still)
    assert cont["params"]["init_distill_job_id"] == first["id"]
    assert live_app.wait_job(cont["id"])["status"] == "succeeded"
    assert live_app.wait_job(pruned["id"])["status"] == "succeeded"
    assert val_loss(live_app, cont["id"]) == pytest.approx(val_loss(live_app, first["id"]), rel=1e-5)
    assert val_loss(live_app, pruned["id"]) != pytest.approx(val_loss(live_app, first["id"]), rel=1e-3)


def test_only_a_succeeded_distillation_of_the_same_student(live_app, student):
    api = live_app.api
    other = make_student(live_app, {"drop_layers": [2]})
    running = start_distill(live_app, other["id"], steps=2000)
    before = len(api.get("/jobs").json())

    def refused(student_id: int, **params) -> list:
        r = api.post("/jobs", json={"kind": "distill", "student_id": student_id, "params": params})
        assert r.status_code == 422, r.text
        return [(e["loc"], e["msg"]) for e in r.json()["detail"]]

    (loc, msg), *_ = refused(student["id"], init_distill_job_id=running["id"])
    assert loc == ["body", "params", "init_distill_job_id"] and "not a distillation of student" in msg
    (loc, msg), *_ = refused(other["id"], init_distill_job_id=running["id"])
    assert loc == ["body", "params", "init_distill_job_id"] and "only a succeeded" in msg
    assert len(api.get("/jobs").json()) == before
    api.post(f"/jobs/{running['id']}/cancel")
    live_app.wait_job(running["id"])
