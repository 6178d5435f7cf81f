"""backend.workflows without a worker: the ranking's flips, and advances that race (two workers finishing
children at the same moment) create each step once — on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from backend import lifecycle
from backend.db import session_factory
from backend.models import Job, Plan, WorkflowStep
from backend.workflows.advance import advance
from backend.workflows.ranking import quality, rank
from backend.workflows.runner import advance_now
from tests.conftest import settings_from
from tests.platform.helpers import student_rows


def row(name, before, after):
    return {
        "name": name,
        "student_id": 1,
        "distill_job_id": 2,
        "before": {"loss": before},
        "after": {"loss": after},
    }


def test_ranking_flags_exactly_the_pairs_whose_order_flipped():
    result = rank([row("a", 1.0, 3.0), row("b", 2.0, 1.0), row("c", 3.0, 2.0)])
    ranks = {r["name"]: (r["rank_before"], r["rank_after"]) for r in result["ranking"]}
    assert ranks == {"a": (1, 3), "b": (2, 1), "c": (3, 2)}
    assert [r["name"] for r in result["ranking"]] == ["b", "c", "a"]  # by rank after
    assert sorted(result["flips"]) == [["b", "a"], ["c", "a"]]
    assert result["winner"] == "b" and all(r["flipped"] for r in result["ranking"])
    steady = rank([row("a", 1.0, 1.0), row("b", 2.0, 2.0)])
    assert steady["flips"] == [] and not any(r["flipped"] for r in steady["ranking"])


def test_quality_reads_an_evaluate_result():
    assert quality({"perplexity": {"loss": 2.0, "perplexity": 7.389, "tokens": 10}}) == {
        "loss": 2.0,
        "perplexity": 7.389,
    }
    assert quality(None) == {"loss": None, "perplexity": None}
    with pytest.raises(ValueError, match="perplexity"):
        rank([], "accuracy")


def workflow(session, candidates: int) -> int:
    teacher, _ = student_rows(session, [])
    plans = []
    for i in range(candidates):
        plan = Plan(teacher_id=teacher.id, name=f"p{i}", plan={"drop_layers": [i]}, messages=[])
        session.add(plan)
        session.flush()
        plans.append({"name": f"c{i}", "plan_id": plan.id, "plan_version": 1})
    params = {
        "definition": "bakeoff",
        "teacher_id": teacher.id,
        "candidates": plans,
        "distill": {"steps": 1},
        "evaluate": {},
        "benchmark": None,
        "device": "cpu",
    }
    return lifecycle.open_workflow(session, params, teacher_id=teacher.id).id


def test_concurrent_advances_create_each_step_once(database_url, redis_url, api_env):
    settings = settings_from(api_env)
    factory = session_factory(database_url)
    with factory() as s, s.begin():
        workflow_id = workflow(s, candidates=3)
    sent: list[int] = []
    barrier = threading.Barrier(4)

    def racer():
        barrier.wait()
        advance_now(factory, settings, workflow_id, lambda job_id, attempt, queue: sent.append(job_id))

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with factory() as s:
        cuts = s.scalars(select(Job).where(Job.parent_id == workflow_id)).all()
        steps = s.scalar(
            select(func.count()).select_from(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id)
        )
    assert sorted(j.kind for j in cuts) == ["prune"] * 3  # one cut per candidate, not one per racer
    assert steps == 3 and sorted(sent) == sorted(j.id for j in cuts)
    # Another look changes nothing while the cuts are queued (idempotent).
    with factory() as s, s.begin():
        assert advance(s, settings, workflow_id) == []


def test_a_teacher_evaluation_is_taken_only_on_its_protocol_tasks_and_device_type(database_url):
    """backend.teacher_evaluations.on_protocol, which a study's teacher branch takes its number from."""
    from backend.teacher_evaluations import on_protocol

    windows = {"split": "test", "max_documents": 2, "seq_len": 32, "stride": 16, "tasks": [], "limit": 50}
    cloze = {**windows, "tasks": ["prunescope_cloze"], "limit": 3}
    with session_factory(database_url)() as s, s.begin():
        teacher, students = student_rows(s, [("s", "ready")])

        def job(params, status="succeeded", device="cpu", student_id=None) -> Job:
            row = Job(kind="evaluate", params=params, status=status, device=device, queue="cpu")
            row.teacher_id, row.student_id = teacher.id, student_id
            s.add(row)
            s.flush()
            return row

        on_cpu, on_gpu = job(windows), job(cloze, device="cuda:0")
        job(windows, status="failed")  # newer, but measured nothing
        job(windows, student_id=students["s"].id)  # a student's number, not the teacher's

        def taken(params, device="auto"):
            return on_protocol(s, teacher.id, params, ("succeeded",), with_tasks=True, device=device)

        assert taken(windows) == on_cpu and taken(windows, "cpu") == on_cpu
        assert taken(windows, "cuda") is None  # a study on cuda measures the teacher there
        assert taken({**windows, "max_documents": 3}) is None  # another protocol
        assert taken(cloze, "cuda") == on_gpu
        assert taken({**cloze, "limit": 4}) is None  # other lm-eval samples
        assert on_protocol(s, teacher.id, cloze, ("succeeded",)) == on_gpu  # perplexity only: newest
