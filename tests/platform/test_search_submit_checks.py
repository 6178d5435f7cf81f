"""POST /searches refuses at submit what the job would only find out after loading the teacher (audit
findings 9 and 10): lengths past the teacher's positions, and parameter / memory budgets no architecture
of the space meets (priced torch-free from the stored spec). Each a 422 at the field, nothing queued."""

from __future__ import annotations

import pytest

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Teacher
from tests.platform.test_api import counts
from tests.tiny_models import tiny_spec

URL = "/api/v1/searches"
POSITIONS = tiny_spec().max_positions  # 128
# The tiny teacher is 32 wide with an MLP of 48: the default steps of 64 leave no cut at all.
SPACE = {"mlp_step": 8, "hidden_step": 8, "max_width_cut": 0.5, "max_depth_cut": 0.5}


@pytest.fixture
def run_id(api_env) -> int:
    """An importance run with scores of a ready tiny teacher (its spec as an inspect job stores it)."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
        dataset = Dataset(name="d", source="demo")
        s.add_all([teacher, dataset])
        s.flush()
        run = ImportanceRun(teacher_id=teacher.id, dataset_id=dataset.id, params={}, artifact="importance/1")
        s.add(run)
        s.flush()
        return run.id


def refused(client, api_env, run_id, **settings) -> dict:
    """The one 422 entry of a search with these settings; nothing was created."""
    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    r = client.post(
        URL, json={"importance_run_id": run_id, "settings": {"budgets": ["params=60%"], **SPACE, **settings}}
    )
    assert r.status_code == 422, r.text
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before
    (entry,) = r.json()["detail"]
    return entry


def test_lengths_past_the_teachers_positions_are_refused_at_their_field(client, api_env, run_id):
    entry = refused(client, api_env, run_id, eval_seq_len=POSITIONS + 1)
    assert entry["loc"] == ["body", "settings", "eval_seq_len"]
    assert f"over the {POSITIONS} positions of teacher" in entry["msg"], entry
    # A timed budget's prompt + decoded tokens, and a memory budget's context (its KV cache).
    entry = refused(client, api_env, run_id, budgets=["params=60%", "latency=4ms@1,2048"])
    assert entry["loc"] == ["body", "settings", "budgets", 1], entry
    assert entry["msg"] == (
        f"budget 'latency=4ms@1,2048': context 2048 + 16 decoded tokens is over the {POSITIONS} positions "
        f"of teacher {entry['msg'].split('teacher ')[1].split(';')[0]}; at most {POSITIONS}"
    )
    entry = refused(client, api_env, run_id, budgets=["memory=1GB@1,100000"])
    assert entry["loc"] == ["body", "settings", "budgets", 0] and "context 100000 is over the" in entry["msg"]
    # A budget without @B,C takes latency_context: the field to change is that one.
    entry = refused(client, api_env, run_id, budgets=["latency=4ms"], latency_context=POSITIONS)
    assert entry["loc"] == ["body", "settings", "latency_context"], entry
    ok = {"budgets": ["params=60%", f"memory=90%@1,{POSITIONS}"], "eval_seq_len": POSITIONS, **SPACE}
    r = client.post(URL, json={"importance_run_id": run_id, "settings": ok})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("budgets", "index", "words"),
    [
        (["params=5%"], 0, "the fewest parameters any architecture of the space reaches is "),
        (["params=60%", "params_non_embedding=1%"], 1, "the fewest non-embedding parameters"),
        (["memory=1KB@1,64"], 0, "the least memory any architecture of the space reaches is "),
    ],
)
def test_a_computed_budget_no_architecture_meets_is_refused(client, api_env, run_id, budgets, index, words):
    """The job scored the teacher and "succeeded" with 0 candidates; the engine's note came too late."""
    entry = refused(client, api_env, run_id, budgets=budgets)
    assert entry["loc"] == ["body", "settings", "budgets", index], entry
    assert entry["msg"].startswith(f"no architecture of the space meets {budgets[index]}: {words}"), entry
    assert "% of the teacher's)" in entry["msg"] and "loosen the cut limits" in entry["msg"], entry


def test_a_budget_the_cut_limits_allow_is_queued(client, api_env, run_id):
    """The same budget with looser cut limits is within reach: the check follows the space's settings."""
    entry = refused(client, api_env, run_id, budgets=["params=45%"], max_width_cut=0.4, max_depth_cut=0.2)
    assert entry["loc"] == ["body", "settings", "budgets", 0]
    loose = {**SPACE, "budgets": ["params=45%"]}
    r = client.post(URL, json={"importance_run_id": run_id, "settings": loose})
    assert r.status_code == 201, r.text
