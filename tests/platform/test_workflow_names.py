"""A bake-off's candidates are named by their shape on the server (backend.workflows.naming with
worker.engine.spec.shape_label), not by a search's opaque id: the branches, the students their cuts
make, GET /students and the workflow's progress message read "31 layers · h 4096 · ...". The search
candidate's id stays beside the name (`candidate_id`); names stay unique within the bake-off (two of one
shape are told apart by the layers they drop, then by their id); a name the request gives is kept."""

from __future__ import annotations

import pytest

from backend.db import session_scope
from backend.errors import InvalidInput
from backend.models import Teacher
from backend.workflows.naming import Named, candidate_names
from tests.platform.test_memory_check import GiB, with_memory
from tests.platform.test_routing import fake_worker, forget_worker
from tests.real_shapes import llama_3_1_8b

TEACHER = llama_3_1_8b()
SHAPE = "31 layers · h 4096 · ffn 14336 · 32 heads"  # the teacher less one layer


@pytest.fixture
def teacher_id(api_env) -> int:
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=TEACHER.summary())
        s.add(teacher)
        s.flush()
        return teacher.id


@pytest.fixture
def worker(api_env):
    """A CPU worker with room for an 8B cut (the cuts are created with the workflow)."""
    record = with_memory(fake_worker(api_env, "cpu", ["cpu", "default"]), api_env, "cpu", 64 * GiB, 20 * GiB)
    yield record
    forget_worker(api_env, record)


def create(client, teacher_id: int, candidates: list[dict]) -> dict:
    body = {"teacher_id": teacher_id, "candidates": candidates, "benchmark": None, "device": "cpu"}
    r = client.post("/api/v1/workflows", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_candidates_are_named_by_their_shape_with_the_search_id_kept(client, teacher_id, worker):
    wf = create(
        client,
        teacher_id,
        [
            {"candidate_id": "L31-block.H32-none.F14336.D4096", "plan": {"drop_layers": [30]}},
            {"candidate_id": "L31-angular.H32-none.F14336.D4096", "plan": {"drop_layers": [5]}},
            {"candidate_id": "L24-block.H32-none.F14336.D4096", "plan": {"drop_layers": list(range(24, 32))}},
        ],
    )
    names = [f"{SHAPE} · drops 30", f"{SHAPE} · drops 5", "24 layers · h 4096 · ffn 14336 · 32 heads"]
    assert [b["name"] for b in wf["branches"]] == names
    assert [b["candidate_id"] for b in wf["branches"]] == [
        "L31-block.H32-none.F14336.D4096",
        "L31-angular.H32-none.F14336.D4096",
        "L24-block.H32-none.F14336.D4096",
    ]
    # The students the cuts make carry the same names (the job page's header, GET /students).
    students = {s["id"]: s["name"] for s in client.get("/api/v1/students").json()}
    assert [students[b["student_id"]] for b in wf["branches"]] == names
    # The progress message names each branch by its shape, branches apart by " | ".
    message = client.get(f"/api/v1/jobs/{wf['id']}").json()["message"]
    assert message == " | ".join(f"{n}: cut" for n in names), message
    # The plans made from explicit plans are named alike (no name was given).
    plans = {p["id"]: p["name"] for p in client.get("/api/v1/plans").json()}
    assert plans[wf["branches"][2]["plan_id"]] == names[2]
    # Each student keeps the search candidate it was cut from (the list and the single read).
    listed = {s["id"]: s["candidate_id"] for s in client.get("/api/v1/students").json()}
    for branch in wf["branches"]:
        assert listed[branch["student_id"]] == branch["candidate_id"]
        one = client.get(f"/api/v1/students/{branch['student_id']}").json()
        assert one["candidate_id"] == branch["candidate_id"]


def test_a_shape_saved_before_gets_a_numbered_plan_name(client, teacher_id, worker):
    """Plan names are unique per teacher: a second bake-off of a shape saves "<shape> (2)"."""
    candidate = {"candidate_id": "L31-block.H32-none.F14336.D4096", "plan": {"drop_layers": [30]}}
    plan_ids = [create(client, teacher_id, [candidate])["branches"][0]["plan_id"] for _ in range(2)]
    plans = {p["id"]: p["name"] for p in client.get("/api/v1/plans").json()}
    assert [plans[i] for i in plan_ids] == [SHAPE, f"{SHAPE} (2)"]


def test_a_given_name_is_kept_and_a_shape_twice_is_told_apart(client, teacher_id, worker):
    same = {"drop_layers": [30]}
    wf = create(
        client,
        teacher_id,
        [
            {"name": "depth", "plan": same},
            {"plan": same},
            {"plan": same, "candidate_id": "L31-drop.H32-none.F14336.D4096"},
            {"plan": same},
        ],
    )
    assert [b["name"] for b in wf["branches"]] == [
        "depth",
        f"{SHAPE} (candidate 2)",
        f"{SHAPE} (L31-drop.H32-none.F14336.D4096)",
        f"{SHAPE} (candidate 4)",
    ]
    assert [b["candidate_id"] for b in wf["branches"]][:3] == [None, None, "L31-drop.H32-none.F14336.D4096"]
    # A student a candidate without a search id cut has none.
    students = {s["id"]: s["candidate_id"] for s in client.get("/api/v1/students").json()}
    assert [students[b["student_id"]] for b in wf["branches"]] == [
        None,
        None,
        "L31-drop.H32-none.F14336.D4096",
        None,
    ]
    # Four plans of one shape for one teacher: each its own name.
    plans = {p["id"]: p["name"] for p in client.get("/api/v1/plans").json()}
    assert [plans[b["plan_id"]] for b in wf["branches"]] == ["depth", SHAPE, f"{SHAPE} (2)", f"{SHAPE} (3)"]


def test_names_are_unique_or_the_request_is_refused_naming_the_candidate():
    teacher = TEACHER.model_dump()
    shape = llama_3_1_8b(num_layers=31).summary()
    one = Named(None, shape, (3,), None)
    assert candidate_names([one], teacher) == [SHAPE]
    # A given name equal to another candidate's shape: the shaped one gives way.
    assert candidate_names([Named(SHAPE, shape, (3,), None), one], teacher) == [
        SHAPE,
        f"{SHAPE} (candidate 2)",
    ]
    # No spec (a plan without stats): the search id, else the place.
    assert candidate_names([Named(None, None, (), "L3-x"), Named(None, None, (), None)], teacher) == [
        "L3-x",
        "candidate 2",
    ]
    # Told apart, a name may still meet a given one: the request must name them.
    alike = [Named("a", None, (), None), Named(None, None, (), "a"), Named("a (a)", None, (), None)]
    with pytest.raises(InvalidInput, match="'a \\(a\\)' names two candidates") as err:
        candidate_names(alike, teacher)
    assert err.value.problems[0].field == ("body", "candidates", 1, "name")
