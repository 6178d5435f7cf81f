"""Plan names are unique per teacher (the index of migration 0006): a taken name is a 409 at
["body", "name"], also when a concurrent request took it between the check and the insert (never a 500);
two saves of one search candidate at once make one plan (the later answers 200 with it); upgrading a
database whose plans share names renames the later ones "name (2)", "name (3)"..."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import func, select

from backend import search_results
from backend.db import engine_for, session_scope
from backend.migrate import alembic_config, upgrade
from backend.models import Artifact, Job, Plan
from tests.platform.helpers import student_rows

API = "/api/v1"
CANDIDATE = "L3-block.H4-none.F64.D32"


@pytest.fixture
def teacher_id(api_env) -> int:
    """A ready tiny teacher with one plan, named "p"."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher, _ = student_rows(s, [])
        return teacher.id


def plan_count(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Plan))


def only_entry(response, status: int) -> dict:
    assert response.status_code == status, response.text
    [entry] = response.json()["detail"]
    return entry


def test_a_taken_plan_name_is_a_409_naming_the_field(client, api_env, teacher_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    body = {"teacher_id": teacher_id, "name": "a", "plan": {"drop_layers": [2]}}
    first = client.post(f"{API}/plans", json=body)
    assert first.status_code == 201, first.text
    before = plan_count(url)
    entry = only_entry(client.post(f"{API}/plans", json=body), 409)
    assert entry["loc"] == ["body", "name"], entry
    assert entry["msg"] == (
        f"teacher {teacher_id} already has a plan named 'a' (plan {first.json()['id']}): choose another name"
    )
    assert plan_count(url) == before
    # Renaming another plan to it is refused alike; keeping one's own name is no conflict.
    other = client.post(f"{API}/plans", json={**body, "name": "b"}).json()
    entry = only_entry(client.put(f"{API}/plans/{other['id']}", json={"version": 1, "name": "a"}), 409)
    assert entry["loc"] == ["body", "name"], entry
    kept = client.put(f"{API}/plans/{other['id']}", json={"version": 1, "name": "b"})
    assert kept.status_code == 200 and kept.json()["version"] == 2, kept.text


def test_the_same_name_for_another_teacher_is_free(client, api_env, teacher_id):
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        other, _ = student_rows(s, [])
    for tid in (teacher_id, other.id):
        r = client.post(f"{API}/plans", json={"teacher_id": tid, "name": "same", "plan": {}})
        assert r.status_code == 201, r.text


def test_a_name_taken_between_check_and_insert_is_a_409_not_a_500(client, api_env, teacher_id, monkeypatch):
    """The interleaving of two requests: both checked before either inserted. The index refuses the
    second insert; the answer is the same 409 and nothing of the request is written."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    monkeypatch.setattr("backend.api.plans.refuse_taken", lambda *a, **k: None)  # both passed the check
    with session_scope(url) as s:
        s.add(Plan(teacher_id=teacher_id, name="raced", plan={}, messages=[]))  # the other one inserted
    before = plan_count(url)
    r = client.post(f"{API}/plans", json={"teacher_id": teacher_id, "name": "raced", "plan": {}})
    assert only_entry(r, 409)["loc"] == ["body", "name"]
    assert plan_count(url) == before


def _succeeded_search(url: str, artifacts: Path, teacher_id: int) -> int:
    """A finished search job whose report has one candidate (as the worker writes it)."""
    with session_scope(url) as s:
        job = Job(kind="search", status="succeeded", params={"top_k": 1}, queue="cpu", teacher_id=teacher_id)
        s.add(job)
        s.flush()
        key = search_results.report_key(job.id)
        s.add(Artifact(job_id=job.id, kind=search_results.ARTIFACT_KIND, key=key))
        job_id = job.id
    folder = artifacts / key
    folder.mkdir(parents=True)
    report = {"candidates": [{"id": CANDIDATE, "rank": 1, "plan": {"drop_layers": [3]}}]}
    (folder / search_results.REPORT_FILE).write_text(json.dumps(report))
    return job_id


def test_two_saves_of_a_candidate_at_once_make_one_plan(client, api_env, teacher_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    job_id = _succeeded_search(url, Path(api_env["PRUNESCOPE_ARTIFACTS"]), teacher_id)
    barrier, answers = threading.Barrier(4), []

    def save():
        barrier.wait()
        answers.append(client.post(f"{API}/searches/{job_id}/candidates/{CANDIDATE}/plan"))

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with session_scope(url) as s:
        named = s.scalars(select(Plan.id).where(Plan.name == f"search {job_id} #1: {CANDIDATE}")).all()
    assert named == [answers[0].json()["id"]]


def test_a_candidate_saved_meanwhile_answers_200_with_that_plan(client, api_env, teacher_id, monkeypatch):
    """The later of two saves looked for the earlier's plan before it was committed, then met the index:
    it answers with the earlier's plan (200), as a save after it does."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    job_id = _succeeded_search(url, Path(api_env["PRUNESCOPE_ARTIFACTS"]), teacher_id)
    first = client.post(f"{API}/searches/{job_id}/candidates/{CANDIDATE}/plan")
    assert first.status_code == 201, first.text
    monkeypatch.setattr(search_results, "existing_plan", lambda *a: None)  # not committed when it looked
    monkeypatch.setattr("backend.api.plans.refuse_taken", lambda *a, **k: None)
    again = client.post(f"{API}/searches/{job_id}/candidates/{CANDIDATE}/plan")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert plan_count(url) == 2  # the fixture's and the candidate's


def _add_plan(conn, plan_id: int, teacher_id: int, name: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO plans (id, teacher_id, name, version, plan, messages, created_at, updated_at) "
            "VALUES (:id, :teacher, :name, 1, '{}', '[]', '2026-01-01', '2026-01-01')"
        ),
        {"id": plan_id, "teacher": teacher_id, "name": name},
    )


def test_upgrade_renames_plans_that_share_a_name(database_url):
    command.downgrade(alembic_config(database_url), "0005")
    long = "x" * 200
    with engine_for(database_url).begin() as conn:
        for tid in (1, 2):
            conn.execute(
                sa.text(
                    "INSERT INTO teachers (id, name, source, trust_remote_code, status, created_at) "
                    "VALUES (:id, 't', '/m', false, 'ready', '2026-01-01')"
                ),
                {"id": tid},
            )
        for plan_id, tid, name in [
            (1, 1, "a"),
            (2, 1, "a"),
            (3, 1, "a (2)"),  # a name the renaming must skip
            (4, 1, "a"),
            (5, 1, "b"),
            (6, 2, "a"),  # another teacher's: no clash
            (7, 1, long),
            (8, 1, long),
        ]:
            _add_plan(conn, plan_id, tid, name)
    engine_for(database_url).dispose()

    upgrade(database_url)
    with session_scope(database_url) as s:
        names = dict(s.execute(select(Plan.id, Plan.name)).all())
    assert names == {
        1: "a",
        2: "a (3)",
        3: "a (2)",
        4: "a (4)",
        5: "b",
        6: "a",
        7: long,
        8: "x" * 196 + " (2)",
    }
    with pytest.raises(sa.exc.IntegrityError), engine_for(database_url).begin() as conn:
        _add_plan(conn, 9, 1, "b")
