"""Jobs: create (or only validate) distill / evaluate / benchmark, list, cancel, resume, re-send, delete,
metrics, logs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle, memcheck, removal, serialize, teacher_evaluations
from backend.api.errors import errors
from backend.api.importance import ready_teacher
from backend.data_reading import DataReading, check_data_reading
from backend.deps import Page, PathId, QueryId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Conflict, DomainError, Unavailable, fields_at, stored_fields
from backend.events import add_event, publish_wakeup
from backend.limits import check_job_size, check_positions
from backend.models import Dataset, Event, Job, JobKind, JobStatus, MetricPoint, Student, Teacher
from backend.responses import JobCheck, JobOut, LogLine, MetricPointOut, MetricsOut
from backend.schemas import MAX_ID, NO_CONTROL_CHARS, PARAMS, PROTOCOL_PARAMS, EvaluateParams, JobCreate
from backend.settings import Settings
from backend.workflows import control as workflow_control
from worker.engine import eval_protocol

router = APIRouter(tags=["jobs"])
JOB_ERRORS = errors(404, 409)


def _checked(
    body: JobCreate, request: Request, db: Session, planned_student: bool = False
) -> tuple[dict, int, str]:
    """Every check of a submit, writing nothing: (normalised params, teacher id, queue).

    With `planned_student` (asked for by name, validate_only only: `_check_planned_student`), a distill
    job names the `teacher_id` of a student not cut yet instead of a `student_id`: its settings are
    checked against the teacher the student will be cut from.
    """
    try:
        params = PARAMS[body.kind].model_validate(body.params)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "params", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc
    check_job_size(params, request.app.state.settings, ["body", "params"])
    teacher_alone_ok = body.kind != "distill" or planned_student
    if body.student_id is None and (not teacher_alone_ok or body.teacher_id is None):
        raise field_error(
            ["body", "student_id"],
            "student_id is required" + (" (or teacher_id)" if teacher_alone_ok else ""),
        )
    teacher_id = body.teacher_id
    if body.student_id is not None:
        student = get_or_404(db, Student, body.student_id, field=("body", "student_id"))
        if student.status != "ready":
            raise Conflict(
                f"Student {student.id} is {student.status}, not ready", field=("body", "student_id")
            )
        if teacher_id is not None and teacher_id != student.teacher_id:
            raise field_error(
                ["body", "teacher_id"],
                f"student {student.id} is a student of teacher {student.teacher_id}: leave teacher_id out",
                nearby=[student.teacher_id],
            )
        teacher_id = student.teacher_id
    else:  # the teacher itself is measured (or a planned student's teacher): it must be inspected
        ready_teacher(db, teacher_id, ("body", "teacher_id"))
    window_given = "seq_len" in params.model_fields_set
    if body.kind == "evaluate":
        params = on_protocol(params, db.get(Teacher, teacher_id))
        check_job_size(params, request.app.state.settings, ["body", "params"])
    if body.kind in ("distill", "evaluate"):
        try:
            _check_seq_len(db, params.seq_len, body.student_id, teacher_id)
        except RequestValidationError as exc:
            if window_given or body.kind != "evaluate":
                raise
            # The window is the teacher's protocol's: say so, and how to change it, at the field to give.
            (error,) = exc.errors()
            raise field_error(
                ["body", "params", "seq_len"],
                f"not given, so teacher {teacher_id}'s evaluation protocol sets it: {error['msg']}; "
                f"give seq_len, or change the protocol (PATCH /teachers/{teacher_id})",
                nearby=error.get("nearby"),
            ) from exc
    dataset = None
    if getattr(params, "dataset_id", None) is not None:
        dataset = get_or_404(db, Dataset, params.dataset_id, field=("body", "params", "dataset_id"))
    if isinstance(params, DataReading):
        check_data_reading(
            params, dataset.source if dataset else None, ["body", "params"], request.app.state.settings.roots
        )
    values = params.model_dump()
    if "weights" in values:
        values["distill_job_id"] = _measured_distillation(db, body.student_id, params)
    if values.get("init_distill_job_id") is not None:
        _check_continued(db, body.student_id, values["init_distill_job_id"])
    settings = request.app.state.settings
    with fields_at(("body", "params")):
        queue = choose_queue(settings, body.kind, values)
        memcheck.check_job(settings, db, body.kind, values, queue, body.student_id, teacher_id)
    return values, teacher_id, queue


def _check_seq_len(db: Session, seq_len: int, student_id: int | None, teacher_id: int) -> None:
    """A distillation's sequences or an evaluation's windows within the positions of the model they feed
    (the student's stored spec; the teacher's when it is measured itself)."""
    if student_id is not None:
        spec, model = db.get(Student, student_id).spec, f"student {student_id}"
    else:
        spec, model = db.get(Teacher, teacher_id).spec, f"teacher {teacher_id}"
    check_positions(spec or {}, seq_len, ["body", "params", "seq_len"], model)


def _check_continued(db: Session, student_id: int | None, job_id: int) -> None:
    """A distillation a new one continues from: a succeeded distillation of the same student (its saved
    weights are where the new one starts)."""
    job = db.get(Job, job_id)
    if job is None or job.kind != "distill" or job.student_id != student_id:
        raise field_error(
            ["body", "params", "init_distill_job_id"],
            f"job {job_id} is not a distillation of student {student_id}",
        )
    if job.status != "succeeded":
        raise field_error(
            ["body", "params", "init_distill_job_id"],
            f"distill job {job_id} is {job.status}: only a succeeded distillation's weights can be continued",
        )


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
            raise Conflict(
                f"Distill job {job.id} is {job.status}: it has no weights to measure",
                field=("body", "params", "distill_job_id"),
            )
        return job.id
    if params.weights == "pruned":
        return None
    return db.scalar(
        select(Job.id)
        .where(Job.student_id == student_id, Job.kind == "distill", Job.status.in_(MEASURABLE))
        .order_by(Job.id.desc())
        .limit(1)
    )


@router.post(
    "/jobs",
    status_code=201,
    responses={
        200: {"model": JobCheck, "description": "validate_only: nothing written"},
        **errors(403, 404, 409, 503),
    },
)
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    validate_only: bool = False,
    planned_student: bool = Query(
        False,
        description="with validate_only, for a distill job: check its settings for a student not cut yet, "
        "against the teacher (teacher_id) it will be cut from",
    ),
    db: Session = Depends(get_db),
) -> JobOut | JobCheck:
    _check_planned_student(body, validate_only, planned_student)
    values, teacher_id, queue = _checked(body, request, db, planned_student)
    if validate_only:  # nothing written, nothing sent: what a real submit would store and route
        response.status_code = 200
        return JobCheck(
            kind=body.kind, student_id=body.student_id, teacher_id=teacher_id, params=values, queue=queue
        )
    job = lifecycle.create(
        db, body.kind, values, queue=queue, teacher_id=teacher_id, student_id=body.student_id
    )
    lifecycle.send(request.app, db, job)
    if body.kind == "evaluate" and body.student_id is not None:
        evaluate_teacher_on_first_need(request, db, teacher_id, values)
    return JobOut.of(job)


def _check_planned_student(body: JobCreate, validate_only: bool, planned_student: bool) -> None:
    """`planned_student` only where it means something: a distill job, only checked (a job that runs
    needs its student), named by its teacher (a student that exists is named by student_id)."""
    if not planned_student:
        return
    if not validate_only:
        why = "only with validate_only=true: a distill job that runs needs its student_id"
    elif body.kind != "distill":
        why = f"only for a distill job ({body.kind} measures a teacher by teacher_id alone)"
    elif body.student_id is not None:
        why = "a planned student has no student_id yet: name its teacher (teacher_id) instead"
    else:
        return
    raise field_error(["query", "planned_student"], why)


def on_protocol(params: EvaluateParams, teacher: Teacher) -> EvaluateParams:
    """The evaluate params with every perplexity field the request left out taken from the teacher's
    evaluation protocol, so a default evaluation is comparable with every other default number."""
    protocol = eval_protocol.of_teacher(teacher.eval_protocol)
    given = params.model_fields_set
    missing = {k: getattr(protocol, f) for k, f in PROTOCOL_PARAMS.items() if k not in given}
    if "seq_len" in given and "stride" not in given:  # another window: half of it, not the protocol's
        missing["stride"] = max(1, params.seq_len // 2)
    try:  # re-validated: the filled-in values pass the same checks as typed ones
        return EvaluateParams.model_validate({**params.model_dump(exclude_unset=True), **missing})
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "params", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


def evaluate_teacher_on_first_need(request: Request, db: Session, teacher_id: int, values: dict) -> None:
    """Queue the teacher's evaluation on the protocol a student's evaluation uses, unless one exists
    (queued, running or succeeded): the student's number then always has its teacher's beside it."""
    if teacher_evaluations.on_protocol(db, teacher_id, values, MEASURABLE) is not None:
        return
    wanted = teacher_evaluations.protocol_id(values)
    params = {k: values[k] for k in (*PROTOCOL_PARAMS, "device")}
    try:
        teacher_values, _, queue = _checked(
            JobCreate(kind="evaluate", teacher_id=teacher_id, params=params), request, db
        )
    except (HTTPException, DomainError, RequestValidationError):
        # the teacher fits no live worker, or its positions are fewer than the protocol's windows: its
        # number stays missing, and the student's job (sent already) still stands
        return
    job = lifecycle.create(db, "evaluate", teacher_values, queue=queue, teacher_id=teacher_id)
    add_event(
        db, job, "log", {"job_id": job.id, "level": "info", "msg": f"the teacher's evaluation on {wanted}"}
    )
    try:
        lifecycle.send(request.app, db, job)
    except Unavailable:  # withdrawn; the student's job is queued already, so its submit still succeeded
        return


@router.get("/jobs")
def list_jobs(
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    teacher_id: QueryId = None,
    student_id: QueryId = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[JobOut]:
    q = select(Job).order_by(Job.id.desc())
    for column, value in (
        (Job.kind, kind),
        (Job.status, status),
        (Job.teacher_id, teacher_id),
        (Job.student_id, student_id),
    ):
        if value is not None:
            q = q.where(column == value)
    return [JobOut.of(j) for j in db.scalars(page.of(q))]


@router.get("/jobs/{job_id}", responses=errors(404))
def get_job(job_id: PathId, db: Session = Depends(get_db)) -> JobOut:
    return JobOut.of(get_or_404(db, Job, job_id))


@router.delete("/jobs/{job_id}", status_code=204, responses=JOB_ERRORS)
def delete_job(
    job_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> None:
    """A finished job with its events, metrics, results and files (409 while unfinished or still used)."""
    leftovers = removal.delete_job(db, get_or_404(db, Job, job_id), settings)
    db.commit()
    leftovers.remove(settings)


@router.post("/jobs/{job_id}/cancel", status_code=202, responses=JOB_ERRORS)
def cancel(job_id: PathId, request: Request, db: Session = Depends(get_db)) -> JobOut:
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


@router.post("/jobs/{job_id}/resume", status_code=202, responses=errors(404, 409, 503))
def resume(job_id: PathId, request: Request, db: Session = Depends(get_db)) -> JobOut:
    """The next attempt of a failed or cancelled job (from its checkpoint), routed anew."""
    settings = request.app.state.settings
    with stored_fields(f"job {job_id}"):
        job = lifecycle.resume(request.app, db, job_id, lambda j: choose_queue(settings, j.kind, j.params))
    return serialize.job(job)


@router.post("/jobs/{job_id}/resend", status_code=202, responses=errors(404, 409, 503))
def resend(job_id: PathId, request: Request, db: Session = Depends(get_db)) -> JobOut:
    """Publish a queued job's message again, for the attempt it is queued for: a job stuck in `queued`
    (its message lost with the broker's data) runs. A duplicate message is harmless: the worker's claim
    is conditional on that attempt (backend.lifecycle.claim), so the job runs once. The API's re-sender does the
    same on its own for jobs missing from the broker (backend.resender)."""
    return serialize.job(lifecycle.resend(request.app, db, job_id))


@router.get("/jobs/{job_id}/metrics", responses=errors(404))
def metrics(
    job_id: PathId,
    names: str | None = Query(None, max_length=2000, pattern=NO_CONTROL_CHARS, description="comma-separated"),
    since_step: int | None = Query(None, ge=-1, le=MAX_ID),
    db: Session = Depends(get_db),
) -> MetricsOut:
    get_or_404(db, Job, job_id)
    q = select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.name, MetricPoint.step)
    if names:
        q = q.where(MetricPoint.name.in_([n.strip() for n in names.split(",") if n.strip()]))
    if since_step is not None:
        q = q.where(MetricPoint.step > since_step)
    series: dict[str, list[MetricPointOut]] = {}
    for p in db.scalars(q):
        series.setdefault(p.name, []).append(
            MetricPointOut(step=p.step, value=p.value, tokens=p.tokens, t=p.t)
        )
    return MetricsOut(job_id=job_id, series=series)


@router.get("/jobs/{job_id}/logs", responses=errors(404))
def logs(job_id: PathId, db: Session = Depends(get_db)) -> list[LogLine]:
    get_or_404(db, Job, job_id)
    rows = db.scalars(select(Event).where(Event.job_id == job_id, Event.type == "log").order_by(Event.id))
    return [LogLine(id=e.id, t=e.created_at, level=e.data.get("level"), msg=e.data.get("msg")) for e in rows]
