"""Workflow definitions as data: which branches a workflow has, the steps each branch runs in order
(each step one child job), and what the final step computes from the finished branches.

A step's `build` says what job to create from what the branch already did (its earlier steps' jobs);
it writes nothing. The rows the job works on (the cut step's student) are written by the child's
`make`, called only once the job can be created (a worker serves it and it fits one's memory:
backend.workflows.advance.create_step), so a step that cannot be created leaves nothing behind.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from backend import teacher_evaluations
from backend.models import Job, Student
from backend.workflows import ranking


@dataclass(frozen=True)
class Branch:
    key: str  # stable id inside the workflow: "c0", "c1", ..., "teacher"
    name: str  # what the user sees: the candidate's name (its shape unless the request named it)
    role: str  # "candidate" | "teacher"
    spec: dict[str, Any] = field(default_factory=dict)  # the candidate's part of the params


@dataclass
class Context:
    """What a step's build sees: the session, the workflow row and params, its branch, the jobs of the
    branch's earlier steps (by step name, latest try) and this step's earlier tries (oldest first)."""

    session: Session
    workflow: Job
    branch: Branch
    done: dict[str, Job]
    tries: list[Job]

    @property
    def params(self) -> dict[str, Any]:
        return self.workflow.params

    def student_id(self) -> int | None:
        cut = self.done.get("cut")
        return cut.student_id if cut is not None else None


@dataclass(frozen=True)
class Child:
    kind: str
    params: dict[str, Any]
    links: dict[str, Any]  # teacher_id, student_id, plan_id of the job row
    then: Callable[[Job], None] | None = None  # called with the created job (e.g. link the student)
    # Writes the rows the job works on once it can be created; returns their links (the cut's student).
    make: Callable[[], dict[str, Any]] | None = None
    # A finished job that already measured what this one would: the step takes it, nothing is queued.
    reuse: Job | None = None


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    build: Callable[[Context], Child]


@dataclass(frozen=True)
class Definition:
    name: str
    branches: Callable[[dict[str, Any]], list[Branch]]
    steps: Callable[[dict[str, Any]], dict[str, tuple[Step, ...]]]  # params -> steps by branch role
    finish: Callable[[Session, Job, dict[str, dict[str, Job]]], dict[str, Any]]
    # What the final step would say from the steps done so far (a ranking filled in live), or None.
    standing: Callable[[Session, Job, dict[str, dict[str, Job]]], dict[str, Any]] | None = None

    def steps_of(self, branch: Branch, params: dict[str, Any]) -> tuple[Step, ...]:
        return self.steps(params)[branch.role]


# ---- the bake-off (and the depth-vs-width study: a bake-off of two candidates) ---------------------------


def _device(ctx: Context) -> dict[str, Any]:
    return {"device": ctx.params.get("device", "auto")}


def cut_params(workflow_params: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """The prune job of a candidate's cut (POST /workflows checks the same job up front)."""
    return {
        "plan_id": candidate["plan_id"],
        "plan_version": candidate["plan_version"],
        "out_of_core": "auto",
        "device": workflow_params.get("device", "auto"),
    }


def _cut(ctx: Context) -> Child:
    """A student from the candidate's saved plan; a retry cuts the same student row again."""
    teacher_id, plan_id = ctx.params["teacher_id"], ctx.branch.spec["plan_id"]
    earlier = next((j.student_id for j in reversed(ctx.tries) if j.student_id), None)

    def make() -> dict[str, Any]:
        student = ctx.session.get(Student, earlier) if earlier else None
        if student is None:
            student = Student(
                name=ctx.branch.name,
                plan_id=plan_id,
                teacher_id=teacher_id,
                status="pending",
                candidate_id=ctx.branch.spec.get("candidate_id"),  # the search candidate, when it was one
            )
            ctx.session.add(student)
            ctx.session.flush()
        else:
            student.status, student.error, student.spec, student.path = "pending", None, None, None
        return {"student_id": student.id}

    def link(job: Job) -> None:
        ctx.session.get(Student, job.student_id).job_id = job.id

    links = {"teacher_id": teacher_id, "plan_id": plan_id}
    return Child("prune", cut_params(ctx.params, ctx.branch.spec), links, then=link, make=make)


def _measure(kind: str, settings_key: str, *, pruned: bool = False) -> Callable[[Context], Child]:
    """An evaluate / benchmark job of the branch's student (its pruned weights, or the weights of the
    branch's distillation), or of the teacher on the teacher branch. The teacher's evaluation is not
    measured again when an earlier one of the same teacher on the same protocol and lm-eval tasks
    succeeded (a second study of the teacher): the step takes that job."""

    def build(ctx: Context) -> Child:
        params = {**(ctx.params.get(settings_key) or {}), **_device(ctx)}
        links: dict[str, Any] = {"teacher_id": ctx.params["teacher_id"]}
        if ctx.branch.role == "candidate":
            links["student_id"] = ctx.student_id()
            distill = ctx.done.get("distill")
            params["weights"] = "pruned" if pruned else "latest"
            params["distill_job_id"] = None if pruned or distill is None else distill.id
        else:
            params["weights"], params["distill_job_id"] = "latest", None
            if kind == "evaluate":  # the teacher's number on this protocol, when one was measured
                measured = teacher_evaluations.on_protocol(
                    ctx.session,
                    links["teacher_id"],
                    params,
                    ("succeeded",),
                    with_tasks=True,
                    device=params["device"],  # a study on cuda takes no CPU measurement
                )
                return Child(kind, params, links, reuse=measured)
        return Child(kind, params, links)

    return build


def _distill(ctx: Context) -> Child:
    params = {**ctx.params["distill"], **_device(ctx)}
    return Child("distill", params, {"teacher_id": ctx.params["teacher_id"], "student_id": ctx.student_id()})


def _bakeoff_branches(params: dict[str, Any]) -> list[Branch]:
    branches = [
        Branch(f"c{i}", c["name"], "candidate", c) for i, c in enumerate(params.get("candidates", []))
    ]
    if params.get("measure_teacher"):
        branches.append(Branch("teacher", "teacher", "teacher"))
    return branches


def _bakeoff_steps(params: dict[str, Any]) -> dict[str, tuple[Step, ...]]:
    """Cut, evaluate as cut, distill, evaluate, benchmark (unless the params ask for no benchmark);
    the teacher branch measures the teacher alike."""
    candidate = [
        Step("cut", "prune", _cut),
        Step("evaluate_pruned", "evaluate", _measure("evaluate", "evaluate", pruned=True)),
        Step("distill", "distill", _distill),
        Step("evaluate", "evaluate", _measure("evaluate", "evaluate")),
        Step("benchmark", "benchmark", _measure("benchmark", "benchmark")),
    ]
    if params.get("benchmark") is None:
        candidate.pop()
    return {"candidate": tuple(candidate), "teacher": tuple(candidate[3:])}


def _bakeoff_rows(session: Session, workflow: Job, done: dict[str, dict[str, Job]]) -> list[dict[str, Any]]:
    """One ranking row per candidate from its steps done so far (a number not measured yet is None)."""
    rows = []
    for branch in _bakeoff_branches(workflow.params):
        if branch.role != "candidate":
            continue
        jobs = done.get(branch.key, {})
        cut, distill = jobs.get("cut"), jobs.get("distill")
        student = session.get(Student, cut.student_id) if cut is not None and cut.student_id else None
        spec = (student.spec or {}) if student else {}
        final = ((distill.result or {}).get("final_validation") or {}) if distill is not None else {}
        evaluated = {
            step: jobs[step].result if step in jobs else None for step in ("evaluate_pruned", "evaluate")
        }
        rows.append(
            {
                "name": branch.name,
                "candidate_id": branch.spec.get("candidate_id"),
                "student_id": student.id if student else None,
                "plan_id": branch.spec["plan_id"],
                "distill_job_id": distill.id if distill is not None else None,
                # Sizes beside the losses: candidates of different sizes compare sizes as much as shapes.
                "params_total": spec.get("params_total"),
                "params_non_embedding": spec.get("params_non_embedding"),
                "flops_per_token": spec.get("flops_per_token"),
                "before": ranking.quality(evaluated["evaluate_pruned"]),
                "after": ranking.quality(evaluated["evaluate"]),
                "distill_val_loss": final.get("val_loss"),
            }
        )
    return rows


def _bakeoff_finish(session: Session, workflow: Job, done: dict[str, dict[str, Job]]) -> dict[str, Any]:
    """The final step: rank the candidates before and after distillation and flag the flips."""
    return ranking.rank(_bakeoff_rows(session, workflow, done), workflow.params.get("metric", "loss"))


def _bakeoff_standing(session: Session, workflow: Job, done: dict[str, dict[str, Job]]) -> dict[str, Any]:
    """The ranking so far, while candidates are still running: each as-cut and final number as soon as its
    evaluation finished (hours before the last distillation ends), no winner yet."""
    return ranking.rank(
        _bakeoff_rows(session, workflow, done), workflow.params.get("metric", "loss"), final=False
    )


BAKEOFF = Definition("bakeoff", _bakeoff_branches, _bakeoff_steps, _bakeoff_finish, _bakeoff_standing)
DEFINITIONS: dict[str, Definition] = {BAKEOFF.name: BAKEOFF}
