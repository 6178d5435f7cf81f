"""The request body of POST /workflows (pydantic): a bad field is a 422 naming it, nothing written."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from backend.routing import Requirement
from backend.schemas import BenchmarkParams, DistillParams, EvaluateParams, Name, RowId, Strict, Text
from worker.engine.plan import PlanTargets, PrunePlan

MAX_CANDIDATES = 16


class Candidate(Strict):
    """One architecture of the bake-off: a saved plan, an explicit plan, targets filled from the
    workflow's importance run, or (none of them) the plan of the search candidate `candidate_id` names."""

    name: Name | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the branch's and its student's name; default: the candidate's shape "
        '("4 layers · h 24 · ffn 48 · 6 heads"), told apart from another of the same shape',
    )
    candidate_id: Text | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the search candidate this is (its id in the search report), kept beside the name; "
        "alone (no plan_id, plan or targets): that candidate's plan, saved as "
        "POST /searches/{id}/candidates/{cid}/plan saves it, in the workflow's transaction",
    )
    plan_id: RowId | None = None
    plan: PrunePlan | None = None
    targets: PlanTargets | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Candidate:
        given = [k for k in ("plan_id", "plan", "targets") if getattr(self, k) is not None]
        if len(given) > 1 or not (given or self.candidate_id):
            raise ValueError(
                "give exactly one of plan_id, plan or targets, or a search's candidate_id alone "
                f"(got {', '.join(given) or 'none'})"
            )
        return self

    def from_search(self) -> bool:
        """Given by its candidate_id alone: the plan is the search candidate's."""
        return self.plan_id is None and self.plan is None and self.targets is None


class WorkflowCreate(Strict):
    definition: Literal["bakeoff"] = Field(
        "bakeoff", description="the workflow to run; the depth-vs-width study is a bake-off of two"
    )
    name: Name | None = Field(None, min_length=1, max_length=200)
    teacher_id: RowId
    importance_run_id: RowId | None = Field(None, description="required when a candidate gives targets")
    search_job_id: RowId | None = Field(
        None,
        description="the search the candidates' candidate_id come from: each one's rank and loss there are "
        "kept (params.candidates[].search_rank, search_loss) beside the bake-off's own as-cut ranking",
    )
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    distill: DistillParams = Field(default_factory=DistillParams, description="the same for every candidate")
    evaluate: EvaluateParams = Field(
        default_factory=EvaluateParams,
        description="before and after distillation; weights and distill_job_id are set per step",
    )
    benchmark: BenchmarkParams | None = Field(
        default_factory=BenchmarkParams, description="null: no benchmark step"
    )
    measure_teacher: bool = Field(
        False, description="evaluate and benchmark the teacher too (a teacher branch)"
    )
    metric: Literal["loss", "perplexity"] = Field("loss", description="the ranking metric (lower is better)")
    device: Requirement = Field("auto", description="every child job's device requirement")

    @model_validator(mode="after")
    def _distinct_names(self) -> WorkflowCreate:
        names = [c.name for c in self.candidates if c.name is not None]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"candidate names must differ: {dup!r} is given twice")
        return self


# ---- answers (GET /workflows/{id}; backend.workflows.view builds them) --------------------------------


class StepOut(Strict):
    name: str
    kind: str
    status: str = Field(
        description="pending (no job yet) | queued | running | succeeded | failed | cancelled"
    )
    job_id: int | None
    tries: int = Field(description="jobs created for this step (a retry after a failure is a new try)")
    attempts: int = Field(description="the current job's attempts (a resume is the next attempt)")
    progress: float
    message: str | None
    error: str | None


class BranchOut(Strict):
    key: str
    name: str
    candidate_id: str | None = Field(description="the search candidate it came from, when given")
    role: Literal["candidate", "teacher"]
    index: int
    plan_id: int | None
    student_id: int | None
    status: str = Field(description="pending | running | succeeded | failed | cancelled")
    step: str | None = Field(description="the current (or failed) step; null once the branch is done")
    error: str | None
    steps: list[StepOut]


class WorkflowOut(Strict):
    id: int
    definition: str
    name: str | None
    status: str
    progress: float
    message: str | None
    error: str | None = Field(description="one line per failed branch: name, step, job and reason")
    teacher_id: int | None
    importance_run_id: int | None
    params: dict
    result: dict | None = Field(
        description="the final step's: ranking before/after distillation, flips, winner"
    )
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    warnings: list[str] = Field(
        description="accepted settings that weaken the result: a distillation all within its LR warm-up"
    )
    branches: list[BranchOut]
    ranking: dict | None = Field(
        default=None,
        description="the ranking as it stands: the final result once finished, else the one the steps "
        "done so far give (partial: true, no winner), filled in as each evaluation ends",
    )


class WorkflowCheck(Strict):
    ok: bool
    params: dict
    warnings: list[str] = Field(description="as Workflow's: accepted, but said before it starts")
