"""Jobs: create (or only validate) distill / evaluate / benchmark, list, cancel, resume, re-send, delete,
metrics, logs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle, memcheck, removal, serialize
from backend.data_reading import DataReading, check_data_reading
from backend.deps import Page, PathId, QueryId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.events import publish_wakeup
from backend.limits import check_job_size
from backend.models import Dataset, Event, Job, JobKind, JobStatus, MetricPoint, Student, Teacher
from backend.schemas import MAX_ID, NO_CONTROL_CHARS, PARAMS, JobCreate
from backend.settings import Settings
from backend.workflows import control as workflow_control

router = APIRouter(tags=["jobs"])


def _checked(body: JobCreate, request: Request, db: Session, validate_only: bool) -> tuple[dict, int, str]:
    """Every check of a submit, writing nothing: (normalised params, teacher id, queue).

    With `validate_only`, a distill job may name the `teacher_id` of a student not cut yet instead of a
    `student_id` (the study wizard checks its settings before it builds anything).
    """
    try:
        params = PARAMS[body.kind].model_validate(body.params)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", "params", *e["loc"])}
                for e in exc.errors(include_url=False, include_context=False)
            ]
        ) from exc
    check_job_size(params, request.app.state.settings, ["body", "params"])
    teacher_alone_ok = body.kind != "distill" or validate_only
    if body.student_id is None and (not teacher_alone_ok or body.teacher_id is None):
        raise field_error(
            ["body", "student_id"],
            "student_id is required" + (" (or teacher_id)" if teacher_alone_ok else ""),
        )
    teacher_id = body.teacher_id
    if body.student_id is not None:
        student = get_or_404(db, Student, body.student_id)
        if student.status != "ready":
            raise HTTPException(409, f"Student {student.id} is {student.status}, not ready")
        teacher_id = student.teacher_id
    else:
        get_or_404(db, Teacher, teacher_id)
    dataset = None
    if getattr(params, "dataset_id", None) is not None:
        dataset = get_or_404(db, Dataset, params.dataset_id)
    if isinstance(params, DataReading):
        check_data_reading(params, dataset.source if dataset else None, ["body", "params"])
    values = params.model_dump()
    if "weights" in values:
        values["distill_job_id"] = _measured_distillation(db, body.student_id, params)
    settings = request.app.state.settings
    queue = choose_queue(settings, body.kind, values)
    memcheck.check_job(settings, db, body.kind, values, queue, body.student_id, teacher_id)
    return values, teacher_id, queue


MEASURABLE = ("queued", "running", "succeeded")  # a distillation whose weights exist or will exist


def _measured_distillation(db: Session, student_id: int | None, params) -> int | None:
    """The distill job whose weights an evaluate / benchmark job measures (None: the pruned weights),
    resolved at submit time so the job row says what it measures."""
    if student_id is None:
        if params.distill_job_id is not None:
            raise field_error(
                ["body", "params", "distill_job_id"], "only a student's job can name a distillation"
            )
        return None
    if params.distill_job_id is not None:
        job = db.get(Job, params.distill_job_id)
        if job is None or job.kind != "distill" or job.student_id != student_id:
            raise field_error(
                ["body", "params", "distill_job_id"],
                f"job {params.distill_job_id} is not a distillation of student {student_id}",
            )
        if job.status not in MEASURABLE:
            raise HTTPException(409, f"Distill job {job.id} is {job.status}: it has no weights to measure")
        return job.id
    if params.weights == "pruned":
        return None
    return db.scalar(
        select(Job.id)
        .where(Job.student_id == student_id, Job.kind == "distill", Job.status.in_(MEASURABLE))
        .order_by(Job.id.desc())
        .limit(1)
    )


@router.post("/jobs", status_code=201)
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    validate_only: bool = False,
    db: Session = Depends(get_db),
) -> dict:
    values, teacher_id, queue = _checked(body, request, db, validate_only)
    if validate_only:  # nothing written, nothing sent: what a real submit would store and route
        response.status_code = 200
        return {
            "kind": body.kind,
            "student_id": body.student_id,
            "teacher_id": teacher_id,
            "params": values,
            "queue": queue,
        }
    job = lifecycle.create(
        db, body.kind, values, queue=queue, teacher_id=teacher_id, student_id=body.student_id
    )
    lifecycle.send(request.app, db, job)
    return serialize.job(job)


@router.get("/jobs")
def list_jobs(
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    teacher_id: QueryId = None,
    student_id: QueryId = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[dict]:
    q = select(Job).order_by(Job.id.desc())
    for column, value in (
        (Job.kind, kind),
        (Job.status, status),
        (Job.teacher_id, teacher_id),
        (Job.student_id, student_id),
    ):
        if value is not None:
            q = q.where(column == value)
    return [serialize.job(j) for j in db.scalars(page.of(q))]


@router.get("/jobs/{job_id}")
def get_job(job_id: PathId, db: Session = Depends(get_db)) -> dict:
    return serialize.job(get_or_404(db, Job, job_id))


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(
    job_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> None:
    """A finished job with its events, metrics, results and files (409 while unfinished or still used)."""
    leftovers = removal.delete_job(db, get_or_404(db, Job, job_id), settings)
    db.commit()
    leftovers.remove(settings)


@router.post("/jobs/{job_id}/cancel", status_code=202)
def cancel(job_id: PathId, request: Request, db: Session = Depends(get_db)) -> dict:
    """A queued job is cancelled at once; a running one stops at its next step (backend.lifecycle.cancel).
    A workflow is stopped with its unfinished children (backend.workflows.control.cancel)."""
    children = []
    if lifecycle.get(db, job_id).kind == "workflow":
        children = workflow_control.cancel(db, job_id)
        job = lifecycle.get(db, job_id)
    else:
        job = lifecycle.cancel(db, job_id)
    db.commit()
    for child in children:
        publish_wakeup(request.app.state.settings, child.id, child.teacher_id)
    publish_wakeup(request.app.state.settings, job.id, job.teacher_id)
    return serialize.job(job)


@router.post("/jobs/{job_id}/resume", status_code=202)
def resume(job_id: PathId, request: Request, db: Session = Depends(get_db)) -> dict:
    """The next attempt of a failed or cancelled job (from its checkpoint), routed anew."""
    settings = request.app.state.settings
    job = lifecycle.resume(request.app, db, job_id, lambda j: choose_queue(settings, j.kind, j.params))
    return serialize.job(job)


@router.post("/jobs/{job_id}/resend", status_code=202)
def resend(job_id: PathId, request: Request, db: Session = Depends(get_db)) -> dict:
    """Publish a queued job's message again, for the attempt it is queued for: a job stuck in `queued`
    (its message lost with the broker's data) runs. A duplicate message is harmless: the worker's claim
    is conditional on that attempt (backend.lifecycle.claim), so the job runs once. The API's re-sender does the
    same on its own for jobs missing from the broker (backend.resender)."""
    return serialize.job(lifecycle.resend(request.app, db, job_id))


@router.get("/jobs/{job_id}/metrics")
def metrics(
    job_id: PathId,
    names: str | None = Query(None, max_length=2000, pattern=NO_CONTROL_CHARS, description="comma-separated"),
    since_step: int | None = Query(None, ge=-1, le=MAX_ID),
    db: Session = Depends(get_db),
) -> dict:
    get_or_404(db, Job, job_id)
    q = select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.name, MetricPoint.step)
    if names:
        q = q.where(MetricPoint.name.in_([n.strip() for n in names.split(",") if n.strip()]))
    if since_step is not None:
        q = q.where(MetricPoint.step > since_step)
    series: dict[str, list] = {}
    for p in db.scalars(q):
        series.setdefault(p.name, []).append({"step": p.step, "value": p.value, "tokens": p.tokens, "t": p.t})
    return {"job_id": job_id, "series": series}


@router.get("/jobs/{job_id}/logs")
def logs(job_id: PathId, db: Session = Depends(get_db)) -> list[dict]:
    get_or_404(db, Job, job_id)
    rows = db.scalars(select(Event).where(Event.job_id == job_id, Event.type == "log").order_by(Event.id))
    return [
        {"id": e.id, "t": serialize.ts(e.created_at), "level": e.data.get("level"), "msg": e.data.get("msg")}
        for e in rows
    ]
