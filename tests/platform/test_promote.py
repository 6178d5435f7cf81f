"""Iterative compression: a student becomes the teacher of the next round (POST /students/{id}/promote).

In-process: which weights the new teacher loads (newest succeeded distillation, a named one, else the
pruned ones), 404/409/422 with nothing written, and the student / its distillation cannot be deleted
while the teacher uses them. Live (real worker): distill -> promote -> inspect -> importance -> plan ->
prune -> distill from the promoted teacher, for a uniform student and for one whose layers differ in
width (importance, plan fill, cut, distill and promote again).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import func, select

from backend.db import engine_for, session_scope
from backend.migrate import alembic_config, upgrade
from backend.models import Artifact, Job, Student, Teacher
from tests.platform.helpers import error_text, make_dataset, make_student, start_distill, student_rows


def _job(s, student: Student, status: str, *, weights: bool) -> int:
    job = Job(kind="distill", params={}, queue="cpu", status=status, student_id=student.id)
    s.add(job)
    s.flush()
    if weights:
        s.add(Artifact(job_id=job.id, kind="distilled", key=f"jobs/{job.id}/model"))
    return job.id


@pytest.fixture
def students(api_env):
    """Rows as the worker leaves them (with their weight directories): a ready student with an older and
    a newer succeeded distillation, a failed one, one without saved weights; a ready student never
    distilled; a pending student; and another student's distillation."""
    artifacts = Path(api_env["PRUNESCOPE_ARTIFACTS"])
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        _, rows = student_rows(
            s, (("main", "ready"), ("plain", "ready"), ("pending", "pending"), ("other", "ready"))
        )
        main = rows["main"]
        ids = {name: st.id for name, st in rows.items()}
        ids["older"] = _job(s, main, "succeeded", weights=True)
        ids["newer"] = _job(s, main, "succeeded", weights=True)
        ids["failed"] = _job(s, main, "failed", weights=False)
        ids["no_weights"] = _job(s, main, "succeeded", weights=False)
        ids["others"] = _job(s, rows["other"], "succeeded", weights=True)
        keys = [st.path for st in rows.values() if st.path] + [
            f"jobs/{ids[k]}/model" for k in ("older", "newer", "others")
        ]
    for key in keys:
        (artifacts / key).mkdir(parents=True)
        (artifacts / key / "config.json").write_text("{}")
    return ids


def counts(url: str) -> tuple[int, int]:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Teacher)), s.scalar(
            select(func.count()).select_from(Job)
        )


def promote(client, student_id, body=None):
    return client.post(f"/api/v1/students/{student_id}/promote", json=body)


def test_promote_registers_a_teacher_on_the_student_weights(client, api_env, students):
    artifacts = Path(api_env["PRUNESCOPE_ARTIFACTS"]).resolve()
    r = promote(client, students["main"])
    assert r.status_code == 201, r.text
    teacher = r.json()
    newer = students["newer"]  # the newest succeeded distillation that saved weights
    assert teacher["source"] == str(artifacts / f"jobs/{newer}/model")
    assert (teacher["parent_student_id"], teacher["parent_distill_job_id"]) == (students["main"], newer)
    assert teacher["status"] == "pending" and teacher["name"] == f"main (distill #{newer})"
    inspect = client.get(f"/api/v1/jobs/{teacher['job_id']}").json()
    assert inspect["kind"] == "inspect" and inspect["teacher_id"] == teacher["id"]
    assert client.get(f"/api/v1/teachers/{teacher['id']}").json()["parent_student_id"] == students["main"]

    named = promote(client, students["main"], {"name": "round 2", "distill_job_id": students["older"]})
    assert named.status_code == 201, named.text
    assert named.json()["name"] == "round 2"
    assert named.json()["source"] == str(artifacts / f"jobs/{students['older']}/model")

    pruned = promote(client, students["plain"]).json()  # never distilled: the pruned weights
    assert pruned["source"] == str(artifacts / f"students/{students['plain']}/model")
    assert pruned["parent_distill_job_id"] is None and pruned["name"] == "plain (pruned)"


def test_bad_promotions_are_refused_and_write_nothing(client, api_env, students):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    main = students["main"]
    for body, why in (
        ({"distill_job_id": students["others"]}, "not a distillation of student"),
        ({"distill_job_id": 9999}, "not a distillation of student"),
        ({"distill_job_id": students["failed"]}, "is failed, not succeeded"),
        ({"distill_job_id": students["no_weights"]}, "saved no weights"),
        ({"distill_job_id": 0}, ""),
    ):
        r = promote(client, main, body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "distill_job_id", r.text
        assert why in r.json()["detail"][0]["msg"]
    for body, field in (({"name": ""}, "name"), ({"parent": 1}, "parent")):
        r = promote(client, main, body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
    r = promote(client, students["pending"])
    assert r.status_code == 409 and "not ready" in error_text(r)
    r = promote(client, 9999)
    assert r.status_code == 404 and "Student 9999" in error_text(r)
    # The parent's protocol names a dataset that is gone (its PATCH and a delete met this promote): a
    # 409 on the parent's protocol, not a 404 at a field the request does not have.
    with session_scope(url) as s:
        parent = s.get(Teacher, s.get(Student, main).teacher_id)
        protocol, parent.eval_protocol = parent.eval_protocol, {"dataset_id": 9999, "max_documents": 4}
    r = promote(client, main)
    assert r.status_code == 409 and "evaluation protocol names a dataset deleted meanwhile" in error_text(
        r
    ), r.text
    with session_scope(url) as s:
        s.get(Teacher, s.get(Student, main).teacher_id).eval_protocol = protocol
    assert counts(url) == before


def test_weights_in_use_by_a_promoted_teacher_cannot_be_deleted(client, api_env, students):
    artifacts = Path(api_env["PRUNESCOPE_ARTIFACTS"])
    teacher = promote(client, students["main"], {"name": "next"}).json()
    r = client.delete(f"/api/v1/students/{students['main']}")
    assert r.status_code == 409, r.text
    assert f"teacher {teacher['id']} (next)" in error_text(r)
    r = client.delete(f"/api/v1/jobs/{students['newer']}")  # the distillation whose weights it loads
    assert r.status_code == 409 and f"teacher {teacher['id']}" in error_text(r), r.text
    assert Path(teacher["source"]).is_dir() and (artifacts / f"students/{students['main']}/model").is_dir()
    assert client.get(f"/api/v1/jobs/{students['newer']}").status_code == 200
    # Its other distillation and a student nobody promoted still go.
    assert client.delete(f"/api/v1/jobs/{students['older']}").status_code == 204
    assert client.delete(f"/api/v1/students/{students['plain']}").status_code == 204


# ---- live: a real worker runs the chain ------------------------------------------------------------------


def wait_teacher(app, teacher: dict) -> dict:
    job = app.wait_job(teacher["job_id"])
    assert job["status"] == "succeeded", job
    return app.api.get(f"/teachers/{teacher['id']}").json()


def importance(app, teacher_id: int, dataset_id: int) -> dict:
    body = {"teacher_id": teacher_id, "dataset_id": dataset_id, "samples": 4, "seq_len": 32, "batch_size": 2}
    r = app.api.post("/importance-runs", json={**body, "scans": ["bi"]})
    assert r.status_code == 201, r.text
    return app.wait_job(r.json()["job_id"], timeout=300)


def test_a_distilled_student_teaches_the_next_round(live_app):
    api = live_app.api
    student = make_student(live_app)  # uniform: layer 3 dropped, 8 neurons off every layer
    assert student["spec"]["uniform"]
    distill = start_distill(live_app, student["id"], steps=4, checkpoint_every=0)
    assert live_app.wait_job(distill["id"], timeout=300)["status"] == "succeeded"

    r = api.post(f"/students/{student['id']}/promote", json={"name": "round 2"})
    assert r.status_code == 201, r.text
    teacher = wait_teacher(live_app, r.json())
    assert teacher["status"] == "ready" and teacher["parent_distill_job_id"] == distill["id"]
    assert teacher["spec"] == student["spec"]

    dataset = make_dataset(live_app, documents=20)
    job = importance(live_app, teacher["id"], dataset["id"])
    assert job["status"] == "succeeded", job

    # The next round: plan -> prune -> distill from the promoted teacher.
    plan = {"remove_neurons": {str(i): list(range(8)) for i in range(3)}}
    created = api.post("/plans", json={"teacher_id": teacher["id"], "name": "round 2", "plan": plan})
    assert created.status_code == 201, created.text
    second = api.post("/students", json={"plan_id": created.json()["id"], "name": "s2"}).json()
    assert live_app.wait_job(second["job_id"])["status"] == "succeeded"
    second = api.get(f"/students/{second['id']}").json()
    assert second["teacher_id"] == teacher["id"]
    assert second["spec"]["intermediate_size"] == student["spec"]["intermediate_size"] - 8
    again = start_distill(live_app, second["id"], steps=2, checkpoint_every=0)
    assert live_app.wait_job(again["id"], timeout=300)["status"] == "succeeded"


def test_a_non_uniform_student_runs_the_whole_chain_again(live_app):
    """A student whose layers differ in heads and MLP width is promoted (it loads from our layers file),
    then importance -> plan (filled from its scores) -> prune -> distill -> promote runs on it."""
    api = live_app.api
    student = make_student(
        live_app, plan={"remove_heads": {"0": [1, 3, 5, 7]}, "remove_neurons": {"1": [0, 5, 9]}}
    )
    assert not student["spec"]["uniform"]
    widths = [(s["num_heads"], s["intermediate_size"]) for s in student["spec"]["layers"]]
    r = api.post(f"/students/{student['id']}/promote", json={"name": "ragged"})  # its pruned weights
    assert r.status_code == 201, r.text
    teacher = wait_teacher(live_app, r.json())  # the widths of its layers file, not config.json's
    assert teacher["spec"] == student["spec"] and teacher["parent_distill_job_id"] is None

    job = importance(live_app, teacher["id"], make_dataset(live_app, documents=20)["id"])
    assert job["status"] == "succeeded", job
    run = job["importance_run_id"]
    heads = api.get(f"/importance-runs/{run}/heads").json()
    assert heads["widths"] == [h for h, _ in widths]
    for row, (h, _) in zip(heads["z"], widths, strict=True):  # padding of narrower layers is null
        assert None not in row[:h] and row[h:] == [None] * (heads["heads"] - h)
    order = api.get(f"/importance-runs/{run}/neuron-order").json()
    assert order["widths"] == [f for _, f in widths]
    stability = api.get(f"/importance-runs/{run}/stability").json()
    assert stability["heads"] is not None and stability["neurons"] is not None

    # Targets beyond the narrowest layer are refused naming it; within it they fill per layer.
    smallest = min(f for _, f in widths)
    bad = api.post(
        "/plans/fill",
        json={
            "teacher_id": teacher["id"],
            "importance_run_id": run,
            "targets": {"intermediate_size": smallest + 1},
        },
    )
    assert bad.status_code == 422 and "layer 1" in bad.text, bad.text
    target = smallest - 4
    filled = api.post(
        "/plans/fill",
        json={
            "teacher_id": teacher["id"],
            "importance_run_id": run,
            "targets": {"intermediate_size": target},
        },
    )
    assert filled.status_code == 200, filled.text
    plan = filled.json()["plan"]
    for layer, (_, f) in enumerate(widths):
        removed = plan["remove_neurons"][str(layer)]
        assert len(removed) == f - target and max(removed) < f
    created = api.post(
        "/plans", json={"teacher_id": teacher["id"], "importance_run_id": run, "name": "r2", "plan": plan}
    )
    assert created.status_code == 201, created.text
    second = api.post("/students", json={"plan_id": created.json()["id"], "name": "s2"}).json()
    assert live_app.wait_job(second["job_id"])["status"] == "succeeded"
    second = api.get(f"/students/{second['id']}").json()
    assert [s["intermediate_size"] for s in second["spec"]["layers"]] == [target] * len(widths)
    assert [s["num_heads"] for s in second["spec"]["layers"]] == [h for h, _ in widths]
    again = start_distill(live_app, second["id"], steps=2, checkpoint_every=0)
    assert live_app.wait_job(again["id"], timeout=300)["status"] == "succeeded"
    r = api.post(f"/students/{second['id']}/promote", json={"name": "round 3"})
    assert r.status_code == 201, r.text
    third = wait_teacher(live_app, r.json())
    assert third["spec"] == second["spec"] and third["status"] == "ready"


def test_migration_0003_adds_the_lineage_columns_and_reverts(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0002")
    with engine_for(url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO teachers (id, name, source, trust_remote_code, status, created_at) "
                "VALUES (1, 't', '/m', 0, 'ready', '2026-01-01')"
            )
        )
    engine_for(url).dispose()
    upgrade(url)
    with session_scope(url) as s:
        old = s.get(Teacher, 1)
        assert old.name == "t" and old.parent_student_id is None and old.parent_distill_job_id is None
    engine_for(url).dispose()
    command.downgrade(alembic_config(url), "0002")
    with engine_for(url).connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("teachers")}
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'teachers'").scalar()
        assert conn.execute(sa.text("SELECT name FROM teachers")).scalar() == "t"
    assert "parent_student_id" not in columns and "AUTOINCREMENT" in sql
