"""Prune plans: validate / fill (no write), create, update with optimistic versioning, preview."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend import heatmaps, lifecycle, removal
from backend.api.errors import errors
from backend.api.importance import artifact_path, ready_teacher
from backend.deps import Page, PathId, QueryId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Conflict, InvalidInput, Problem, fields_at
from backend.limits import check_job_size, check_positions
from backend.models import Dataset, ImportanceRun, Plan, Teacher, utcnow
from backend.plan_names import refuse_taken, unless_taken_meanwhile
from backend.responses import JobOut, PlanCheck, PlanOut
from backend.schemas import PlanCreate, PlanFill, PlanUpdate, PlanValidate, PreviewCreate
from backend.settings import Settings
from worker.engine import eval_protocol
from worker.engine.plan import (
    PlanError,
    PlanMessage,
    PrunePlan,
    fill_plan,
    fill_warnings,
    plan_stats,
    validate_plan,
)
from worker.engine.spec import ArchSpec

router = APIRouter(tags=["plans"])
TEACHER_FIELD = ("body", "teacher_id")
NAME_FIELD = ("body", "name")


def teacher_spec(db: Session, teacher_id: int, field: tuple | None = None) -> ArchSpec:
    """The ready teacher's architecture, from the summary its inspect job stored; `field`: the request
    field that named the teacher."""
    summary = ready_teacher(db, teacher_id, field).spec
    return ArchSpec.model_validate(
        {**summary, "layers": None if summary.get("uniform", True) else summary["layers"]}
    )


def evaluate(plan: PrunePlan, spec: ArchSpec) -> PlanCheck:
    messages = validate_plan(plan, spec)
    has_error = any(m.level == "error" for m in messages)
    stats = None
    if not has_error:
        stats = plan_stats(plan, spec)
    return PlanCheck(plan=plan.model_dump(mode="json"), stats=stats, messages=messages)


def plan_problems(messages: list[PlanMessage], within: tuple[str, ...]) -> InvalidInput:
    """The plan's errors as one 422: each names its field (`within` + the message's dotted path) and
    carries the valid values near the one given."""
    return InvalidInput(
        problems=[
            Problem(m.text, (*within, *m.field.split(".")), tuple(m.nearby) or None)
            for m in messages
            if m.level == "error"
        ]
    )


def reject_errors(result: PlanCheck) -> None:
    if any(m.level == "error" for m in result.messages):
        raise plan_problems(result.messages, ("body", "plan"))


@router.post("/plans/validate", responses=errors(404, 409))
def validate(body: PlanValidate, db: Session = Depends(get_db)) -> PlanCheck:
    return evaluate(body.plan, teacher_spec(db, body.teacher_id, TEACHER_FIELD))


@router.post("/plans/fill", responses=errors(404, 409))
def fill(
    body: PlanFill, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> PlanCheck:
    spec = teacher_spec(db, body.teacher_id, TEACHER_FIELD)
    run, path = artifact_path(db, body.importance_run_id, settings, ("body", "importance_run_id"))
    if run.teacher_id != body.teacher_id:
        raise InvalidInput(
            f"run {run.id} belongs to teacher {run.teacher_id}", field=("body", "importance_run_id")
        )
    try:
        plan = fill_plan(
            PrunePlan(targets=body.targets),
            spec,
            heatmaps.scores(path, body.batch, body.seq, body.expert_metric),
        )
    except PlanError as exc:
        raise plan_problems(exc.messages, ("body",)) from exc
    except ValueError as exc:
        raise InvalidInput(str(exc), field=("body", "targets")) from exc
    check = evaluate(plan, spec)
    if check.stats is not None:  # no errors: say the degenerate or slow widths the targets gave
        check.messages.extend(fill_warnings(plan, spec, body.targets))
    return check


@router.post("/plans", status_code=201, responses=errors(404, 409))
def create_plan(body: PlanCreate, db: Session = Depends(get_db)) -> PlanOut:
    spec = teacher_spec(db, body.teacher_id, TEACHER_FIELD)
    if body.importance_run_id is not None:
        field = ("body", "importance_run_id")
        run = get_or_404(db, ImportanceRun, body.importance_run_id, "Importance run", field)
        if run.teacher_id != body.teacher_id:  # as /plans/fill refuses it
            raise InvalidInput(f"run {run.id} belongs to teacher {run.teacher_id}", field=field)
    result = evaluate(body.plan, spec)
    reject_errors(result)
    refuse_taken(db, body.teacher_id, body.name, NAME_FIELD)
    plan = Plan(
        teacher_id=body.teacher_id,
        importance_run_id=body.importance_run_id,
        name=body.name,
        version=1,
        plan=result.plan,
        stats=result.stats,
        messages=[m.model_dump() for m in result.messages],
    )
    db.add(plan)
    with unless_taken_meanwhile(db, body.teacher_id, body.name, NAME_FIELD):
        db.flush()
    db.commit()  # before the response: the client may use the id at once
    return PlanOut.model_validate(plan)


@router.put("/plans/{plan_id}", responses=errors(404, 409))
def update_plan(plan_id: PathId, body: PlanUpdate, db: Session = Depends(get_db)) -> PlanOut:
    plan = get_or_404(db, Plan, plan_id)
    values: dict = {"version": body.version + 1, "updated_at": utcnow()}
    if body.name is not None:
        refuse_taken(db, plan.teacher_id, body.name, NAME_FIELD, other_than=plan_id)
        values["name"] = body.name
    if body.plan is not None:
        result = evaluate(body.plan, teacher_spec(db, plan.teacher_id))
        reject_errors(result)
        values.update(
            plan=result.plan, stats=result.stats, messages=[m.model_dump() for m in result.messages]
        )
    # Compare-and-set in one statement: of two tabs sending the same version, exactly one wins.
    with unless_taken_meanwhile(
        db, plan.teacher_id, values.get("name", plan.name), NAME_FIELD, other_than=plan_id
    ):
        changed = db.execute(
            update(Plan).where(Plan.id == plan_id, Plan.version == body.version).values(**values)
        ).rowcount
    if not changed:
        db.rollback()
        current = db.get(Plan, plan_id)
        raise Conflict(
            f"Plan {plan_id} was changed elsewhere (version {current.version}, you sent {body.version})",
            field=("body", "version"),
            nearby=[current.version],
        )
    db.commit()
    db.refresh(plan)
    return PlanOut.model_validate(plan)


@router.get("/plans")
def list_plans(
    teacher_id: QueryId = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[PlanOut]:
    q = select(Plan).order_by(Plan.id.desc())
    if teacher_id is not None:
        q = q.where(Plan.teacher_id == teacher_id)
    return [PlanOut.model_validate(p) for p in db.scalars(page.of(q))]


@router.get("/plans/{plan_id}", responses=errors(404))
def get_plan(plan_id: PathId, db: Session = Depends(get_db)) -> PlanOut:
    return PlanOut.model_validate(get_or_404(db, Plan, plan_id))


@router.delete("/plans/{plan_id}", status_code=204, responses=errors(404, 409))
def delete_plan(
    plan_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> None:
    """The plan and its preview jobs; refused while a student is built from it."""
    leftovers = removal.delete_plan(db, get_or_404(db, Plan, plan_id), settings)
    db.commit()
    leftovers.remove(settings)


@router.post("/plans/{plan_id}/preview", status_code=202, responses=errors(404, 409, 503))
def preview(
    plan_id: PathId, request: Request, body: PreviewCreate | None = Body(None), db: Session = Depends(get_db)
) -> JobOut:
    body = body or PreviewCreate()
    check_job_size(body, request.app.state.settings, ["body"])
    plan = get_or_404(db, Plan, plan_id)
    if PrunePlan.model_validate(plan.plan).needs_filling():  # masking, as surgery, cuts explicit units only
        raise field_error(
            ["path", "plan_id"],
            f"plan {plan.id} has targets: fill them from an importance run (POST /plans/fill) "
            "and save the explicit plan first",
        )
    if body.dataset_id is not None:
        get_or_404(db, Dataset, body.dataset_id, field=("body", "dataset_id"))
    params = body.model_dump()
    teacher = db.get(Teacher, plan.teacher_id)
    if "seq_len" in body.model_fields_set:  # the masked teacher scores sequences of seq_len
        check_positions(teacher.spec or {}, body.seq_len, ["body", "seq_len"], f"teacher {teacher.id}")
    if not {"samples", "seq_len"} & body.model_fields_set:
        # The teacher's evaluation protocol: the preview's teacher perplexity is its evaluation's.
        params["protocol"] = eval_protocol.of_teacher(teacher.eval_protocol).model_dump()
    with fields_at(("body",)):
        queue = choose_queue(request.app.state.settings, "preview", params)
    job = lifecycle.create(
        db, "preview", params, queue=queue, params_at=("body",), teacher_id=plan.teacher_id, plan_id=plan.id
    )
    lifecycle.send(request.app, db, job)
    return JobOut.of(job)
