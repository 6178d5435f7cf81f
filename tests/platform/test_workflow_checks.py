"""POST /workflows checks what POST /jobs and the search's report would: every sequence within the
teacher's positions (each candidate keeps them), a candidate's `candidate_id` naming the search candidate
whose plan it is, a bad target named once under its candidate; and a search a workflow cites cannot be
deleted (409 naming the workflow). Each refusal writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend import search_results
from backend.db import session_scope
from backend.models import Artifact, Dataset, ImportanceRun, Job, Plan, Teacher
from tests.platform.test_api_angular import save_scored_artifact
from tests.platform.test_memory_check import GiB, with_memory
from tests.platform.test_routing import fake_worker, forget_worker
from tests.tiny_models import tiny_spec

API = "/api/v1"
POSITIONS = 128  # the tiny teacher's (tiny_spec's max_positions)
DEPTH = {"drop_layers": [3]}
WIDER = {"drop_layers": [2]}
FIRST, SECOND = "L3-block.H4-none.F64.D32", "L3-angular.H4-none.F64.D32"


@pytest.fixture
def teacher_id(api_env) -> int:
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
        s.add(teacher)
        s.flush()
        assert teacher.spec["max_positions"] == POSITIONS
        return teacher.id


@pytest.fixture
def worker(api_env):
    record = with_memory(fake_worker(api_env, "cpu", ["cpu", "default"]), api_env, "cpu", 64 * GiB, 20 * GiB)
    yield record
    forget_worker(api_env, record)


@pytest.fixture
def search_id(api_env, teacher_id) -> int:
    """A succeeded search whose report has two candidates, FIRST (drops layer 3) and SECOND (layer 2)."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        job = Job(kind="search", status="succeeded", params={"top_k": 2}, queue="cpu", teacher_id=teacher_id)
        s.add(job)
        s.flush()
        key = search_results.report_key(job.id)
        s.add(Artifact(job_id=job.id, kind=search_results.ARTIFACT_KIND, key=key))
        job_id = job.id
    folder = Path(api_env["PRUNESCOPE_ARTIFACTS"]) / key
    folder.mkdir(parents=True)
    report = {
        "candidates": [
            {"id": FIRST, "rank": 1, "loss": 4.8, "plan": DEPTH},
            {"id": SECOND, "rank": 2, "loss": 5.1, "plan": WIDER},
        ]
    }
    (folder / search_results.REPORT_FILE).write_text(json.dumps(report))
    return job_id


def counts(url: str) -> tuple[int, int]:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Plan)), s.scalar(
            select(func.count()).select_from(Job)
        )


def body(teacher_id: int, **change) -> dict:
    return {
        "teacher_id": teacher_id,
        "candidates": [{"plan": DEPTH}],
        "benchmark": None,
        "device": "cpu",
        **change,
    }


def refused(client, api_env, payload: dict, status: int = 422) -> dict:
    """The one problem of a refused create, checked to have written nothing (nor validate_only to pass)."""
    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    for query in ("?validate_only=true", ""):
        r = client.post(f"{API}/workflows{query}", json=payload)
        assert r.status_code == status, (query, r.text)
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before
    [problem] = r.json()["detail"]
    return problem


@pytest.mark.parametrize(
    "key, params",
    [
        ("distill", {"seq_len": POSITIONS + 1}),
        ("distill", {"tokens": 16_000, "seq_len": 1000}),
        ("evaluate", {"seq_len": POSITIONS * 2}),
        ("benchmark", {"seq_len": POSITIONS + 1}),
    ],
)
def test_a_sequence_over_the_teacher_s_positions_is_refused_at_its_field(
    client, api_env, teacher_id, worker, key, params
):
    problem = refused(client, api_env, body(teacher_id, **{key: params}))
    assert problem["loc"] == ["body", key, "seq_len"], problem
    assert problem["msg"] == (
        f"{params['seq_len']} is over the {POSITIONS} positions of teacher {teacher_id}, "
        f"whose positions every candidate keeps; at most {POSITIONS}"
    )


def test_a_sequence_of_exactly_the_teacher_s_positions_is_accepted(client, teacher_id, worker):
    within = body(teacher_id, distill={"seq_len": POSITIONS}, evaluate={"seq_len": POSITIONS})
    r = client.post(f"{API}/workflows?validate_only=true", json=within)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text


def test_a_candidate_id_must_name_the_search_candidate_whose_plan_it_is(
    client, api_env, teacher_id, worker, search_id
):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        saved = Plan(teacher_id=teacher_id, name="second", plan=WIDER, messages=[])
        s.add(saved)
        s.flush()
        saved_id = saved.id
    # The saved plan of SECOND, labelled FIRST: it would show rank 1 and FIRST's loss beside its shape.
    swapped = [{"plan": DEPTH, "candidate_id": FIRST}, {"plan_id": saved_id, "candidate_id": FIRST}]
    problem = refused(client, api_env, body(teacher_id, search_job_id=search_id, candidates=swapped))
    assert problem["loc"] == ["body", "candidates", 1, "candidate_id"], problem
    assert problem["msg"].startswith(f"plan {saved_id} is not the plan of search {search_id}'s candidate")
    # An explicit plan alike.
    explicit = [{"plan": WIDER, "candidate_id": FIRST}]
    problem = refused(client, api_env, body(teacher_id, search_job_id=search_id, candidates=explicit))
    assert problem["loc"] == ["body", "candidates", 0, "candidate_id"], problem
    # Matching pairs are kept with their search rank and loss.
    right = [{"plan": DEPTH, "candidate_id": FIRST}, {"plan_id": saved_id, "candidate_id": SECOND}]
    r = client.post(
        f"{API}/workflows?validate_only=true",
        json=body(teacher_id, search_job_id=search_id, candidates=right),
    )
    assert r.status_code == 200, r.text
    ranks = [(c["search_rank"], c["search_loss"]) for c in r.json()["params"]["candidates"]]
    assert ranks == [(1, 4.8), (2, 5.1)]


def test_a_bad_target_is_named_once_under_its_candidate(client, api_env, teacher_id, worker):
    key = save_scored_artifact(Path(api_env["PRUNESCOPE_ARTIFACTS"]), "importance/scored")
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        scored = ImportanceRun(teacher_id=teacher_id, dataset_id=dataset.id, params={}, artifact=key)
        s.add(scored)
        s.flush()
        run = scored.id
    payload = body(teacher_id, importance_run_id=run, candidates=[{"targets": {"num_layers": 99}}])
    problem = refused(client, api_env, payload)
    assert problem["loc"] == ["body", "candidates", 0, "targets", "num_layers"], problem


def test_a_search_a_workflow_cites_cannot_be_deleted(client, api_env, teacher_id, worker, search_id):
    wf = client.post(
        f"{API}/workflows",
        json=body(teacher_id, search_job_id=search_id, candidates=[{"plan": DEPTH, "candidate_id": FIRST}]),
    )
    assert wf.status_code == 201, wf.text
    r = client.delete(f"{API}/jobs/{search_id}")
    assert r.status_code == 409, r.text
    assert r.json()["detail"][0]["msg"] == (
        f"Search {search_id} is cited by workflow {wf.json()['id']} ({wf.json()['name']}); "
        "delete the workflow first"
    )
    assert client.get(f"{API}/jobs/{search_id}").status_code == 200


def test_candidates_given_by_id_alone_save_their_plans_in_the_workflow_s_transaction(
    client, api_env, teacher_id, worker, search_id
):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    # Refused at the second candidate, after the first one's plan was made: that plan is not left behind.
    for change, loc in [
        (
            {"candidates": [{"candidate_id": FIRST}, {"candidate_id": "L1-nope"}]},
            ["body", "candidates", 1, "candidate_id"],
        ),
    ]:
        before = counts(url)
        r = client.post(f"{API}/workflows", json=body(teacher_id, search_job_id=search_id, **change))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
        assert counts(url) == before
    # Without the search they name, they are a 422 at search_job_id.
    r = client.post(f"{API}/workflows", json=body(teacher_id, candidates=[{"candidate_id": FIRST}]))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "search_job_id"], r.text
    # Accepted: each becomes the plan POST /searches/{id}/candidates/{cid}/plan saves (its name, its plan).
    chosen = [{"candidate_id": FIRST}, {"candidate_id": SECOND}]
    wf = client.post(f"{API}/workflows", json=body(teacher_id, search_job_id=search_id, candidates=chosen))
    assert wf.status_code == 201, wf.text
    plans = [client.get(f"{API}/plans/{b['plan_id']}").json() for b in wf.json()["branches"]]
    assert [p["name"] for p in plans] == [
        f"search {search_id} #1: {FIRST}",
        f"search {search_id} #2: {SECOND}",
    ]
    assert [p["plan"]["drop_layers"] for p in plans] == [[3], [2]]
    assert [(c["search_rank"], c["search_loss"]) for c in wf.json()["params"]["candidates"]] == [
        (1, 4.8),
        (2, 5.1),
    ]
    # Saved once: opening the candidate in the planner, or a second bake-off, takes the same plan.
    opened = client.post(f"{API}/searches/{search_id}/candidates/{FIRST}/plan")
    assert opened.status_code == 200 and opened.json()["id"] == plans[0]["id"], opened.text
    again = client.post(
        f"{API}/workflows?validate_only=true",
        json=body(teacher_id, search_job_id=search_id, candidates=chosen),
    )
    assert [c["plan_id"] for c in again.json()["params"]["candidates"]] == [p["id"] for p in plans]


def test_a_run_all_within_its_warm_up_is_accepted_with_a_warning(client, teacher_id, worker):
    short = body(teacher_id, distill={"tokens": 1000, "batch_size": 2, "seq_len": 32, "warmup": 20})
    check = client.post(f"{API}/workflows?validate_only=true", json=short)
    assert check.status_code == 200, check.text
    warning = "The run's 16 steps are all LR warm-up (20 steps)"  # ceil(1000 / (2 x 32)) = 16, as the worker
    assert [w[: len(warning)] for w in check.json()["warnings"]] == [warning]
    created = client.post(f"{API}/workflows", json=short)
    assert created.status_code == 201, created.text
    assert created.json()["warnings"] == check.json()["warnings"]
    assert (
        client.get(f"{API}/workflows/{created.json()['id']}").json()["warnings"] == check.json()["warnings"]
    )
    # One step past its warm-up: no warning.
    longer = body(teacher_id, distill={"steps": 21, "warmup": 20})
    assert client.post(f"{API}/workflows?validate_only=true", json=longer).json()["warnings"] == []
