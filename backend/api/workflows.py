"""Workflows (backend.workflows): create a bake-off (the depth-vs-width study is one of two candidates),
read its branches and steps, cancel it with its children, retry its failed steps. The workers and the
API's sweep advance it; these routes never wait for a step."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import heatmaps, lifecycle, memcheck, search_results
from backend.api.errors import errors
from backend.api.importance import artifact_path
from backend.api.jobs import on_protocol
from backend.api.plans import plan_problems, teacher_spec
from backend.deps import Page, PathId, QueryId, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Conflict, InvalidInput
from backend.limits import check_job_size, check_positions
from backend.models import Dataset, ImportanceRun, Job, JobStatus, Plan, Teacher
from backend.plan_names import free_name, unless_taken_meanwhile
from backend.settings import Settings
from backend.workflows import control, runner, view
from backend.workflows.advance import advance
from backend.workflows.definitions import cut_params
from backend.workflows.naming import Named, candidate_names
from backend.workflows.schemas import Candidate, WorkflowCheck, WorkflowCreate, WorkflowOut
from worker.engine.plan import (
    PlanError,
    PrunePlan,
    fill_plan,
    fill_warnings,
    plan_stats,
    validate_plan,
)
from worker.engine.spec import shape_label

router = APIRouter(tags=["workflows"], responses=errors(422))
TEACHER_FIELD = ("body", "teacher_id")


def sender(request: Request) -> runner.Send:
    return lambda job_id, attempt, queue: lifecycle.publish(request.app, job_id, attempt, queue)


def _searched_plan(
    db: Session, body: WorkflowCreate, index: int, candidate: Candidate, found: dict | None
) -> tuple[Plan | None, PrunePlan, str]:
    """A candidate given by its `candidate_id` alone: the plan that search candidate was saved as before
    (POST /searches/{id}/candidates/{cid}/plan's, unchanged), else its plan and that route's name, to save
    in this request's transaction: a refused bake-off leaves no plan behind."""
    if body.search_job_id is None:
        raise InvalidInput(
            "a candidate given by its candidate_id alone needs the workflow's search_job_id",
            field=("body", "search_job_id"),
        )
    if found is None:
        raise InvalidInput(
            f"search {body.search_job_id} has no candidate {candidate.candidate_id!r}",
            field=("body", "candidates", index, "candidate_id"),
        )
    plan = PrunePlan.model_validate(found["plan"])
    existing = search_results.existing_plan(db, db.get(Job, body.search_job_id), found)
    if existing is not None and _same_plan(existing.plan, found["plan"]):
        return existing, plan, existing.name
    return None, plan, search_results.plan_name(body.search_job_id, found)


def _same_plan(a: dict, b: dict) -> bool:
    return PrunePlan.model_validate(a).model_dump(mode="json") == PrunePlan.model_validate(b).model_dump(
        mode="json"
    )


def _saved_plan(
    db: Session,
    body: WorkflowCreate,
    index: int,
    candidate: Candidate,
    settings: Settings,
    found: dict | None,
) -> Plan:
    """The candidate's explicit plan as a row: its saved plan, or a new one (filled from the run, or the
    search candidate's that `found` is)."""
    at = ("body", "candidates", index)
    searched_name = None
    if candidate.from_search():
        existing, searched, searched_name = _searched_plan(db, body, index, candidate, found)
        if existing is not None:
            return existing
    if candidate.plan_id is not None:
        plan = get_or_404(db, Plan, candidate.plan_id, field=(*at, "plan_id"))
        if plan.teacher_id != body.teacher_id:
            raise InvalidInput(f"plan {plan.id} belongs to teacher {plan.teacher_id}", field=(*at, "plan_id"))
        if PrunePlan.model_validate(plan.plan).needs_filling():
            raise InvalidInput(
                f"plan {plan.id} has targets: fill and save it first, or give them as targets",
                field=(*at, "plan_id"),
            )
        return plan
    spec = teacher_spec(db, body.teacher_id, TEACHER_FIELD)
    plan = searched if searched_name else candidate.plan or PrunePlan(targets=candidate.targets)
    targets = plan.targets if plan.needs_filling() else None
    if targets is not None:
        if body.importance_run_id is None:
            raise InvalidInput(
                "a candidate with targets needs the workflow's importance_run_id",
                field=("body", "importance_run_id"),
            )
        run, path = artifact_path(db, body.importance_run_id, settings, ("body", "importance_run_id"))
        if run.teacher_id != body.teacher_id:
            raise InvalidInput(
                f"run {run.id} belongs to teacher {run.teacher_id}", field=("body", "importance_run_id")
            )
        try:
            plan = fill_plan(plan, spec, heatmaps.scores(path, "l2", "mean", "contribution"))
        except PlanError as exc:
            # The messages name their field from the plan ("targets.num_layers"): under `plan` when the
            # candidate gave one, else straight under the candidate, whose `targets` they are.
            raise plan_problems(exc.messages, (*at, "plan") if candidate.plan else at) from exc
        except ValueError as exc:
            raise InvalidInput(str(exc), field=(*at, "targets")) from exc
    messages = validate_plan(plan, spec)
    if any(m.level == "error" for m in messages):
        raise plan_problems(messages, (*at, "plan"))
    if targets is not None:  # as POST /plans/fill: the degenerate or slow widths the targets gave
        messages += fill_warnings(plan, spec, targets)
    stats = plan_stats(plan, spec)
    # Plan names are unique per teacher: a shape saved before (an earlier bake-off's) gets "(2)"...
    name = (
        searched_name
        or candidate.name
        or shape_label(stats["spec"], spec)
        or f"bake-off candidate {index + 1}"
    )
    name = free_name(db, body.teacher_id, name)
    row = Plan(
        teacher_id=body.teacher_id,
        importance_run_id=body.importance_run_id,
        name=name,
        version=1,
        plan=plan.model_dump(mode="json"),
        stats=stats,
        messages=[m.model_dump() for m in messages],
    )
    db.add(row)
    with unless_taken_meanwhile(db, body.teacher_id, name, (*at, "name")):
        db.flush()
    return row


def _check_cut_fits(
    db: Session, body: WorkflowCreate, index: int, plan: Plan, candidate: dict, settings: Settings
) -> None:
    """A candidate whose cut fits no live worker's memory is refused now (409 at the candidate), not
    when its cut step comes (which checks again: workers come and go meanwhile)."""
    params = cut_params({"device": body.device}, candidate)
    teacher = db.get(Teacher, body.teacher_id)
    try:
        memcheck.check_prune(
            settings, teacher.spec, plan.stats, params, choose_queue(settings, "prune", params)
        )
    except Conflict as exc:
        raise Conflict(
            f"candidate {candidate['name']!r}: {exc.message}", field=("body", "candidates", index)
        ) from exc


def _search_candidates(db: Session, body: WorkflowCreate, settings: Settings) -> dict[str, dict]:
    """{candidate id: candidate} of `search_job_id`'s report, to check each candidate_id (and its plan)
    against and keep its rank and loss beside the bake-off's: its page compares the as-cut order with
    the search's."""
    if body.search_job_id is None:
        return {}
    at = ("body", "search_job_id")
    job = get_or_404(db, Job, body.search_job_id, "Search", at)
    if job.kind != "search":
        raise InvalidInput(f"job {job.id} is a {job.kind} job, not a search", field=at)
    if job.teacher_id != body.teacher_id:
        raise InvalidInput(f"search {job.id} is of teacher {job.teacher_id}", field=at)
    try:
        report = search_results.load_report(db, job, settings)
    except Conflict as exc:
        raise Conflict(exc.message, field=at) from exc
    return {str(c["id"]): c for c in report.get("candidates") or []}


def _check_search_candidate(
    body: WorkflowCreate, index: int, candidate: Candidate, plan: Plan, found: dict | None
) -> dict:
    """{search_rank, search_loss} of the search candidate `candidate_id` names, which must be this
    candidate's plan: another's would show its rank and loss beside this shape (422 at candidate_id)."""
    at = ("body", "candidates", index, "candidate_id")
    if found is None:
        raise InvalidInput(
            f"search {body.search_job_id} has no candidate {candidate.candidate_id!r}", field=at
        )
    if not _same_plan(plan.plan, found["plan"]):
        source = f"plan {plan.id}" if candidate.plan_id is not None else "this candidate's plan"
        raise InvalidInput(
            f"{source} is not the plan of search {body.search_job_id}'s candidate "
            f"{candidate.candidate_id!r} (rank {found.get('rank')}): give that candidate's plan, or its own id",
            field=at,
        )
    return {"search_rank": found.get("rank"), "search_loss": found.get("loss")}


def _params(db: Session, body: WorkflowCreate, settings: Settings) -> dict:
    """Every check of a create (plans saved in the session, not committed): the workflow's params."""
    teacher_spec(db, body.teacher_id, TEACHER_FIELD)  # 404 / 409 for a missing or unready teacher
    if body.importance_run_id is not None:  # named even when no candidate fills targets from it
        run_field = ("body", "importance_run_id")
        run = get_or_404(db, ImportanceRun, body.importance_run_id, "Importance run", run_field)
        if run.teacher_id != body.teacher_id:
            raise InvalidInput(f"run {run.id} belongs to teacher {run.teacher_id}", field=run_field)
    # Evaluations on the teacher's protocol (what the request leaves out), like POST /jobs's.
    teacher = db.get(Teacher, body.teacher_id)
    body.evaluate = on_protocol(body.evaluate, teacher)
    positions_of = f"teacher {teacher.id}, whose positions every candidate keeps"
    if body.distill.init_distill_job_id is not None:  # each child would load that job's weights
        raise InvalidInput(
            "a bake-off distils the students it cuts: none has an earlier distillation to continue",
            field=("body", "distill", "init_distill_job_id"),
            nearby=[None],
        )
    for key, params in (
        ("distill", body.distill),
        ("evaluate", body.evaluate),
        ("benchmark", body.benchmark),
    ):
        if params is None:
            continue
        check_job_size(params, settings, ["body", key])
        # Every candidate keeps the teacher's positions (a cut removes layers and widths, never
        # positions), so the teacher's bound every sequence the children read, as POST /jobs does.
        check_positions(teacher.spec or {}, params.seq_len, ["body", key, "seq_len"], positions_of)
        if getattr(params, "dataset_id", None) is not None:
            get_or_404(db, Dataset, params.dataset_id, field=("body", key, "dataset_id"))
    try:  # every child goes to a worker of this device: refuse now, not at its first step
        choose_queue(settings, "distill", {"device": body.device})
    except Conflict as exc:
        raise Conflict(exc.message, field=("body", "device"), nearby=("auto", "cpu")) from exc
    found = _search_candidates(db, body, settings)
    plans = [
        _saved_plan(db, body, i, c, settings, found.get(c.candidate_id or ""))
        for i, c in enumerate(body.candidates)
    ]
    names = candidate_names(
        [
            Named(c.name, (p.stats or {}).get("spec"), tuple(p.plan.get("drop_layers") or ()), c.candidate_id)
            for c, p in zip(body.candidates, plans)
        ],
        db.get(Teacher, body.teacher_id).spec,
    )
    candidates = []
    for i, (candidate, plan, name) in enumerate(zip(body.candidates, plans, names)):
        row = {"name": name, "plan_id": plan.id, "plan_version": plan.version}
        if candidate.candidate_id:
            row["candidate_id"] = candidate.candidate_id
            if body.search_job_id is not None:
                row.update(
                    _check_search_candidate(body, i, candidate, plan, found.get(candidate.candidate_id))
                )
        candidates.append(row)
        _check_cut_fits(db, body, i, plan, candidates[-1], settings)
    values = body.model_dump(mode="json", exclude={"candidates"})
    values["name"] = body.name or f"bake-off of {len(candidates)} candidate{'s' * (len(candidates) != 1)}"
    return {**values, "candidates": candidates}


@router.post("/workflows", status_code=201, responses=errors(404, 409, 503))
def create_workflow(
    body: WorkflowCreate,
    request: Request,
    response: Response,
    validate_only: bool = False,
    db: Session = Depends(get_db),
) -> WorkflowOut | WorkflowCheck:
    settings = request.app.state.settings
    params = _params(db, body, settings)
    if validate_only:  # nothing written: the plans made for the check go with the rollback
        db.rollback()
        response.status_code = 200
        return WorkflowCheck(ok=True, params=params, warnings=view.warnings(params))
    workflow = lifecycle.open_workflow(
        db, params, teacher_id=body.teacher_id, importance_run_id=body.importance_run_id
    )
    jobs = advance(db, settings, workflow.id)  # its first children, in the same transaction
    db.commit()
    runner.publish(settings, sender(request), jobs)
    return WorkflowOut.model_validate(view.workflow(db, workflow))


@router.get("/workflows")
def list_workflows(
    teacher_id: QueryId = None,
    status: JobStatus | None = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[WorkflowOut]:
    q = select(Job).where(Job.kind == "workflow").order_by(Job.id.desc())
    if teacher_id is not None:
        q = q.where(Job.teacher_id == teacher_id)
    if status is not None:
        q = q.where(Job.status == status)
    return [WorkflowOut.model_validate(view.workflow(db, j)) for j in db.scalars(page.of(q))]


@router.get("/workflows/{workflow_id}", responses=errors(404))
def get_workflow(workflow_id: PathId, db: Session = Depends(get_db)) -> WorkflowOut:
    return WorkflowOut.model_validate(view.workflow(db, control.get(db, workflow_id)))


@router.post("/workflows/{workflow_id}/cancel", status_code=202, responses=errors(404, 409))
def cancel_workflow(workflow_id: PathId, request: Request, db: Session = Depends(get_db)) -> WorkflowOut:
    children = control.cancel(db, workflow_id)
    db.commit()
    settings = request.app.state.settings
    runner.publish(settings, lambda *_: None, children)  # wakes their streams; nothing to send
    workflow = control.get(db, workflow_id)
    runner.publish_wakeup(settings, workflow.id, workflow.teacher_id)
    return WorkflowOut.model_validate(view.workflow(db, workflow))


@router.post("/workflows/{workflow_id}/retry", status_code=202, responses=errors(404, 409, 503))
def retry_workflow(
    workflow_id: PathId,
    request: Request,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> WorkflowOut:
    jobs = control.retry(db, settings, workflow_id)
    db.commit()
    runner.publish(settings, sender(request), jobs)
    workflow = control.get(db, workflow_id)
    runner.publish_wakeup(settings, workflow.id, workflow.teacher_id)
    return WorkflowOut.model_validate(view.workflow(db, workflow))
