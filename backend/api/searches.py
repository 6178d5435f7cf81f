"""Architecture searches (issue 12): queue one on an importance run (a job of kind "search"), list them,
read every candidate, and save a candidate as a plan (what the planner opens and a bake-off cuts)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle, search_results
from backend.api.errors import errors
from backend.api.importance import ready_teacher
from backend.api.plans import create_plan
from backend.deps import Page, PathId, QueryId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Conflict, fields_at
from backend.limits import check_positions
from backend.models import Dataset, ImportanceRun, Job, Plan
from backend.plan_names import PlanNameTaken
from backend.responses import JobOut, PlanOut
from backend.schemas import OnDevice, PlanCreate, RowId, source_text
from backend.settings import Settings
from worker.engine.memplan import dtype_bytes, spec_from_summary
from worker.engine.plan import PrunePlan
from worker.engine.search.feasible import nothing_fits_computed
from worker.engine.search.settings import SearchSettings, parse_budget  # parse_budget: the engine's own
from worker.engine.spec import spec_max_positions

router = APIRouter(tags=["search"])

CandidateId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._+-]+$")]


class SearchCreate(OnDevice):
    """An architecture search on an importance run; `settings` are the engine's (budgets, space, scoring)."""

    importance_run_id: RowId
    dataset_id: RowId | None = Field(
        None, description="held-out text the candidates are scored on (`settings.split`); default: the run's"
    )
    top_k: int = Field(
        5, ge=1, le=100, description="how many of the best the result names (the bake-off pick)"
    )
    settings: SearchSettings = Field(
        description="worker/engine/search/settings.py; `data` comes from dataset_id (a path is not accepted here)"
    )


class Candidate(BaseModel):
    id: str = Field(description="stable name of the architecture, e.g. L7-block.H6-whole.F512.D192")
    rank: int | None = Field(description="1 = lowest held-out loss")
    cut: str | None = Field(description="depth | width | mixed | none")
    axes: dict[str, Any] = Field(description="layers kept, heads per layer, KV groups, MLP and hidden size")
    costs: dict[str, float | None] = Field(
        description="params, memory (bytes, in the teacher's stored dtype), latency (decode s/token), "
        "prefill (s), throughput (tokens/s), flops (= flops_per_token), kv_cache (= kv_cache_bytes_per_token)"
    )
    params_fraction: float | None
    flops_per_token: float | None = Field(
        description="forward FLOPs per token at `basis.flops_context` tokens of context (2048, or the "
        "teacher's positions when fewer)"
    )
    kv_cache_bytes_per_token: float | None = Field(
        None, description="KV cache bytes per token of context, in the teacher's stored dtype"
    )
    params_non_embedding: float | None = Field(
        None, description="parameters outside the embeddings and LM head"
    )
    loss: float | None = Field(description="LM loss of the cut model on the held-out data")
    perplexity: float | None
    loss_diff_vs_best: float | None = Field(None, description="loss minus rank 1's (0 for rank 1)")
    loss_diff_se: float | None = Field(
        None,
        description="paired standard error of loss_diff_vs_best over the held-out windows (0 for rank 1; "
        "None from a single window)",
    )
    within_noise_of_best: bool | None = Field(
        None,
        description="|loss_diff_vs_best| < 2 loss_diff_se: the sample cannot order it and rank 1 (None for "
        "rank 1)",
    )
    budgets: dict[str, Any] = Field(
        description="per budget text: value, limit, fits (within the tolerance) and over_limit (the "
        "fraction past the bare limit the tolerance let in; 0 within it)"
    )
    within_budget: bool
    plan: dict[str, Any] | None = Field(
        None, description="the PrunePlan (explicit removals); single reads only"
    )


class SearchCandidates(BaseModel):
    job_id: int
    teacher_id: int | None
    importance_run_id: int | None
    top_k: int | None
    reference: dict[str, Any] = Field(
        description="the teacher's costs and loss, as measured by the search; `budgets`: its figure of "
        "each budget, by budget text"
    )
    protocol: dict[str, Any] | None = Field(
        None,
        description="what every loss of the search (the teacher's too) was measured on: its sample of the "
        "held-out data (worker/engine/eval_protocol.py sample_record)",
    )
    budgets: dict[str, dict[str, Any]] = Field(
        description="each budget by its text: kind (the cost axis), limit, batch and context, minimum"
    )
    tolerance: float | None = Field(
        None, description="fraction a cost may exceed its limit by (the search's settings.tolerance)"
    )
    budget_texts: list[str | None]
    basis: dict[str, Any] = Field(
        default_factory=dict,
        description="what the figures are in: memory_dtype and kv_cache_dtype (the teacher's stored dtype), "
        "loss_dtype and latency_dtype (the dtype scored and timed in, settings.dtype), flops_context",
    )
    space: dict[str, Any]
    stats: dict[str, Any] = Field(description="enumerated, within_budget, seconds, candidates_per_minute...")
    candidates: list[Candidate]


@router.post("/searches", status_code=201, responses=errors(404, 409, 503))
def create_search(body: SearchCreate, request: Request, db: Session = Depends(get_db)) -> JobOut:
    run = get_or_404(
        db, ImportanceRun, body.importance_run_id, "Importance run", ("body", "importance_run_id")
    )
    if not run.artifact:
        raise Conflict(
            f"Importance run {run.id} has no scores yet: a search ranks by them",
            field=("body", "importance_run_id"),
        )
    teacher = ready_teacher(db, run.teacher_id)
    limits = request.app.state.settings
    for name, value, limit in (
        ("eval_seq_len", body.settings.eval_seq_len, limits.max_seq_len),
        ("eval_batch_size", body.settings.eval_batch_size, limits.max_batch_size),
    ):
        if value > limit:
            raise field_error(["body", "settings", name], f"{value} is over this server's limit of {limit}")
    _check_timed_shapes(body.settings, limits)
    if body.settings.lm_eval_task is not None:  # the engine's field is any string: it is stored as text
        try:
            source_text(body.settings.lm_eval_task)
        except ValueError as exc:
            raise field_error(["body", "settings", "lm_eval_task"], str(exc)) from None
    if "data" in body.settings.model_fields_set:
        raise field_error(["body", "settings", "data"], "the held-out data is chosen by dataset_id")
    dataset = get_or_404(
        db,
        Dataset,
        body.dataset_id or run.dataset_id,
        field=("body", "dataset_id") if body.dataset_id else None,
    )
    _check_positions(body.settings, teacher)
    _check_feasible(body.settings, teacher)  # the costliest check last: it prices the whole space
    settings = body.settings.model_copy(update={"data": dataset.source})
    params = {
        "settings": settings.model_dump(mode="json"),
        "top_k": body.top_k,
        "dataset_id": dataset.id,
        "device": body.device,
    }
    with fields_at(("body",)):
        queue = choose_queue(request.app.state.settings, "search", params)
    job = lifecycle.create(
        db,
        "search",
        params,
        queue=queue,
        params_at=("body",),
        teacher_id=teacher.id,
        importance_run_id=run.id,
    )
    lifecycle.send(request.app, db, job)
    return JobOut.of(job)


def _check_timed_shapes(settings: SearchSettings, limits: Settings) -> None:
    """A measured budget (latency, prefill, throughput) runs the model at its batch and context (+ the
    decoded tokens) on the worker: within the server's PRUNESCOPE_MAX_BATCH_SIZE / MAX_SEQ_LEN like
    every job's shapes, else a 422 at the budget (or at latency_batch / latency_context, its defaults)."""
    for i, text in enumerate(settings.budgets):
        budget = parse_budget(text, settings.latency_batch, settings.latency_context)
        if not budget.measured:
            continue  # params and memory are computed: nothing runs at their shape
        own = "@" in text
        tokens = budget.context + settings.latency_new_tokens
        for value, limit, default, what, variable in (
            (budget.batch, limits.max_batch_size, "latency_batch", f"batch {budget.batch}", "MAX_BATCH_SIZE"),
            (
                tokens,
                limits.max_seq_len,
                "latency_context",
                f"context {budget.context} + {settings.latency_new_tokens} decoded tokens",
                "MAX_SEQ_LEN",
            ),
        ):
            if value > limit:
                raise field_error(
                    ["body", "settings", *(("budgets", i) if own else (default,))],
                    f"budget {text!r}: {what} is over this server's limit of {limit} (PRUNESCOPE_{variable})",
                )


def _check_positions(settings: SearchSettings, teacher) -> None:
    """The held-out windows, a memory budget's context (its KV cache) and a timed budget's prompt + decoded
    tokens within the teacher's positions (its stored spec's; unknown: nothing to check), as importance
    and distillation jobs are: past them a RoPE model is scored on positions it never saw, and a latency
    search at 2048 on a 512-position teacher was estimated at 98 minutes. 422 at the field."""
    model = f"teacher {teacher.id}"
    check_positions(teacher.spec or {}, settings.eval_seq_len, ["body", "settings", "eval_seq_len"], model)
    limit = spec_max_positions(teacher.spec or {})
    if not limit:
        return
    for i, text in enumerate(settings.budgets):
        budget = parse_budget(text, settings.latency_batch, settings.latency_context)
        if budget.context is None:
            continue  # a parameter budget has no context
        tokens = budget.context + (settings.latency_new_tokens if budget.measured else 0)
        if tokens > limit:
            what = f"context {budget.context}" + (
                f" + {settings.latency_new_tokens} decoded tokens" if budget.measured else ""
            )
            raise field_error(
                ["body", "settings", *(("budgets", i) if "@" in text else ("latency_context",))],
                f"budget {text!r}: {what} is over the {limit} positions of {model}; at most {limit}",
                nearby=[limit - (tokens - budget.context)],
            )


def _check_feasible(settings: SearchSettings, teacher) -> None:
    """Parameter and memory budgets no architecture of the space meets, refused before a job loads the
    teacher to find nothing (worker/engine/search/feasible.py, torch-free on the stored spec): 422 at
    the budget, in the words the engine's empty report would use. Priced in the smaller of the search's
    and the checkpoint's dtypes, so that a budget in bytes is never refused that the search could meet."""
    try:
        spec = spec_from_summary(teacher.spec or {})
    except ValueError:
        return  # a spec stored before its fields existed: the job checks
    cheaper = min((settings.dtype, spec.dtype), key=lambda d: dtype_bytes(d) if d else 99)
    try:
        refused = nothing_fits_computed(spec.model_copy(update={"dtype": cheaper}), settings)
    except ValueError:
        return  # a teacher the search does not cover (mixture of experts, uneven layers): the job says so
    if refused is not None:
        index, message = refused
        raise field_error(["body", "settings", "budgets", index], message)


@router.get("/searches")
def list_searches(
    teacher_id: QueryId = None,
    importance_run_id: QueryId = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[JobOut]:
    q = select(Job).where(Job.kind == "search").order_by(Job.id.desc())
    if teacher_id is not None:
        q = q.where(Job.teacher_id == teacher_id)
    if importance_run_id is not None:
        q = q.where(Job.importance_run_id == importance_run_id)
    return [JobOut.of(j) for j in db.scalars(page.of(q))]


def search_job(db: Session, job_id: int) -> Job:
    job = get_or_404(db, Job, job_id, "Search")
    if job.kind != "search":
        raise field_error(["path", "job_id"], f"job {job_id} is a {job.kind} job, not a search")
    return job


@router.get("/searches/{job_id}/candidates", responses=errors(404, 409))
def candidates(
    job_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> SearchCandidates:
    job = search_job(db, job_id)
    return SearchCandidates(**search_results.summary(job, search_results.load_report(db, job, settings)))


@router.get("/searches/{job_id}/candidates/{candidate_id}", responses=errors(404, 409))
def candidate(
    job_id: PathId,
    candidate_id: CandidateId,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> Candidate:
    job = search_job(db, job_id)
    found = search_results.find_candidate(search_results.load_report(db, job, settings), candidate_id)
    return Candidate(**search_results.candidate_out(found, with_plan=True))


@router.post("/searches/{job_id}/candidates/{candidate_id}/plan", status_code=201, responses=errors(404, 409))
def save_candidate_plan(
    job_id: PathId,
    candidate_id: CandidateId,
    response: Response,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> PlanOut:
    """The candidate as a saved plan of the teacher (201), or the plan it was saved as before (200): two
    saves at once make one plan (the plan names are unique per teacher), the later answers 200 with it."""
    job = search_job(db, job_id)
    found = search_results.find_candidate(search_results.load_report(db, job, settings), candidate_id)
    existing = search_results.existing_plan(db, job, found)
    if existing is not None:
        response.status_code = 200
        return PlanOut.model_validate(existing)
    body = PlanCreate(
        teacher_id=job.teacher_id,
        importance_run_id=job.importance_run_id,
        name=search_results.plan_name(job.id, found),
        plan=PrunePlan.model_validate(found["plan"]),
    )
    try:
        return create_plan(body, db)  # the one way a plan is checked and saved
    except PlanNameTaken as exc:  # saved meanwhile by a concurrent request (or named so by hand)
        response.status_code = 200
        return PlanOut.model_validate(db.get(Plan, exc.plan_id))
