"""A bake-off's ranking fills in live (audit finding 19): GET /workflows/{id} (backend.workflows.view) ranks
each candidate as soon as its as-cut evaluation finished, and its final loss as soon as its last evaluation
did, long before every candidate is distilled; a partial ranking names no winner. Each row carries the
candidate's sizes (total and non-embedding parameters, FLOPs/token) once it is cut."""

from __future__ import annotations

from backend.db import session_factory
from backend.models import Job, Student, WorkflowStep
from backend.workflows import view
from backend.workflows.ranking import rank
from tests.platform.test_workflow_advance import row, workflow
from tests.tiny_models import tiny_spec


def test_a_partial_ranking_ranks_what_is_in_and_names_no_winner():
    partial = rank([row("a", 2.0, None), row("b", 1.0, None), {**row("c", None, None)}], final=False)
    assert partial["partial"] is True and partial["winner"] is None
    assert [(r["name"], r["rank_before"], r["rank_after"]) for r in partial["ranking"]] == [
        ("b", 1, None),
        ("a", 2, None),
        ("c", None, None),
    ]
    assert rank([row("a", 2.0, 1.0), row("b", 1.0, 2.0)])["winner"] == "a"  # the final one still does


def finished(s, workflow_id: int, branch: str, step: str, kind: str, **fields) -> Job:
    """A succeeded child job of one step (what a worker leaves behind)."""
    job = Job(kind=kind, params={}, status="succeeded", queue="cpu", parent_id=workflow_id, **fields)
    s.add(job)
    s.flush()
    s.add(WorkflowStep(workflow_id=workflow_id, branch=branch, step=step, try_number=1, job_id=job.id))
    return job


def test_the_workflow_view_ranks_candidates_as_their_evaluations_finish(database_url):
    spec = tiny_spec().summary()
    with session_factory(database_url)() as s, s.begin():
        wid = workflow(s, candidates=3)
        wf = s.get(Job, wid)
        wf.status = "running"
        plans = [c["plan_id"] for c in wf.params["candidates"]]
        for i, loss in ((0, 3.25), (1, 3.1)):  # c0 and c1 cut and evaluated as cut; c2 still cutting
            student = Student(
                name=f"c{i}", teacher_id=wf.teacher_id, plan_id=plans[i], status="ready", spec=spec
            )
            s.add(student)
            s.flush()
            finished(s, wid, f"c{i}", "cut", "prune", student_id=student.id)
            finished(s, wid, f"c{i}", "evaluate_pruned", "evaluate", result={"perplexity": {"loss": loss}})
        # c1 is distilled and evaluated already: its final loss is in.
        finished(s, wid, "c1", "distill", "distill", result={"final_validation": {"val_loss": 2.9}})
        finished(s, wid, "c1", "evaluate", "evaluate", result={"perplexity": {"loss": 2.95}})
        running = Job(kind="prune", params={}, status="running", queue="cpu", parent_id=wid)
        s.add(running)
        s.flush()
        s.add(WorkflowStep(workflow_id=wid, branch="c2", step="cut", try_number=1, job_id=running.id))
        s.flush()
        out = view.workflow(s, wf)
    assert out["result"] is None  # the final step has not run
    ranking = out["ranking"]
    assert ranking["partial"] is True and ranking["winner"] is None
    rows = {r["name"]: r for r in ranking["ranking"]}
    assert [r["name"] for r in ranking["ranking"]] == ["c1", "c0", "c2"]
    assert (rows["c1"]["rank_before"], rows["c1"]["rank_after"], rows["c1"]["after"]["loss"]) == (1, 1, 2.95)
    assert (rows["c0"]["rank_before"], rows["c0"]["rank_after"], rows["c0"]["after"]["loss"]) == (
        2,
        None,
        None,
    )
    assert rows["c2"]["before"]["loss"] is None and rows["c2"]["params_total"] is None
    assert rows["c0"]["params_non_embedding"] == spec["params_non_embedding"]
    assert rows["c0"]["flops_per_token"] == spec["flops_per_token"]
    assert rows["c0"]["params_total"] == spec["params_total"]
