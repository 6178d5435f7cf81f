"""Students: pruned copies of a teacher, created by a `prune` job from a plan."""

from __future__ import annotations

import tempfile
import zipfile

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle, memcheck, removal
from backend.api.errors import errors
from backend.api.teachers import register
from backend.artifacts import ArtifactStore
from backend.deps import Page, PathId, QueryId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Conflict, NotFound, fields_at
from backend.models import Artifact, Job, Plan, Student, Teacher
from backend.responses import StudentOut, TeacherOut
from backend.schemas import StudentCreate, TeacherPromote
from backend.settings import Settings
from worker.engine.plan import PrunePlan

router = APIRouter(tags=["students"])


@router.post("/students", status_code=201, responses=errors(404, 409, 503))
def create_student(body: StudentCreate, request: Request, db: Session = Depends(get_db)) -> StudentOut:
    plan = get_or_404(db, Plan, body.plan_id, field=("body", "plan_id"))
    if PrunePlan.model_validate(plan.plan).needs_filling():  # surgery cuts explicit units only
        raise field_error(
            ["body", "plan_id"],
            f"plan {plan.id} has targets: fill them from an importance run (POST /plans/fill) "
            "and save the explicit plan first",
        )
    params = {
        "plan_id": plan.id,
        "plan_version": plan.version,
        "device": body.device,
        "out_of_core": body.out_of_core,
    }
    teacher = db.get(Teacher, plan.teacher_id)
    with fields_at(("body",)):
        queue = choose_queue(request.app.state.settings, "prune", params)
        memcheck.check_prune(request.app.state.settings, teacher and teacher.spec, plan.stats, params, queue)
    student = Student(name=body.name, plan_id=plan.id, teacher_id=plan.teacher_id, status="pending")
    db.add(student)
    db.flush()
    job = lifecycle.create(
        db,
        "prune",
        params,
        queue=queue,
        teacher_id=plan.teacher_id,
        student_id=student.id,
        plan_id=plan.id,
    )
    student.job_id = job.id
    lifecycle.send(request.app, db, job)
    return StudentOut.model_validate(student)


@router.get("/students")
def list_students(
    teacher_id: QueryId = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[StudentOut]:
    q = select(Student).order_by(Student.id.desc())
    if teacher_id is not None:
        q = q.where(Student.teacher_id == teacher_id)
    return [StudentOut.model_validate(s) for s in db.scalars(page.of(q))]


@router.get("/students/{student_id}", responses=errors(404))
def get_student(student_id: PathId, db: Session = Depends(get_db)) -> StudentOut:
    return StudentOut.model_validate(get_or_404(db, Student, student_id))


@router.delete("/students/{student_id}", status_code=204, responses=errors(404, 409))
def delete_student(
    student_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> None:
    """The student, its jobs (prune, distill, evaluate, benchmark) with their results, and its files."""
    leftovers = removal.delete_student(db, get_or_404(db, Student, student_id), settings)
    db.commit()
    leftovers.remove(settings)


@router.post("/students/{student_id}/promote", status_code=201, responses=errors(404, 409, 503))
def promote(
    student_id: PathId,
    request: Request,
    body: TeacherPromote | None = None,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> TeacherOut:
    """Register the student's weights as a new teacher (the next round of an iterative compression
    chain). The teacher loads them in place from the artifact store; the student cannot be deleted
    while it does (backend/removal.py)."""
    body = body or TeacherPromote()
    student = get_or_404(db, Student, student_id)
    if student.status != "ready" or not student.path:
        raise Conflict(f"Student {student_id} is {student.status}, not ready")
    key, distill_job_id = _promoted_weights(db, student, body.distill_job_id)
    store = ArtifactStore(settings.artifacts_url)
    if not store.is_local:  # a teacher's source is a directory every worker can read
        raise Conflict(
            f"the artifact store ({settings.artifacts_url}) is not local: promoting needs a local one"
        )
    try:
        directory = store.local_dir(key)
    except FileNotFoundError as exc:
        raise Conflict(f"Student {student_id}: weights {key} are missing ({exc})") from exc
    made_from = f"distill #{distill_job_id}" if distill_job_id else "pruned"
    teacher = Teacher(
        name=body.name or f"{student.name[:180]} ({made_from})",
        source=str(directory),
        trust_remote_code=False,  # students are saved by our own code (supported architectures only)
        status="pending",
        parent_student_id=student.id,
        parent_distill_job_id=distill_job_id,
        # The next round is measured like this one: its numbers stay comparable with its parent's.
        eval_protocol=db.get(Teacher, student.teacher_id).eval_protocol,
    )
    try:
        return register(request, db, teacher)
    except NotFound as exc:  # its dataset went between this read and the hold: the body named neither
        raise Conflict(
            f"Teacher {student.teacher_id}'s evaluation protocol names a dataset deleted meanwhile ({exc}); "
            "set its protocol again and promote again"
        ) from exc


def _promoted_weights(db: Session, student: Student, distill_job_id: int | None) -> tuple[str, int | None]:
    """(artifact key, distill job id or None): the named distillation's weights, else the newest
    succeeded distillation's, else the pruned weights."""
    newest = (
        select(Job.id, Artifact.key)
        .join(Artifact, Artifact.job_id == Job.id)
        .where(Job.student_id == student.id, Job.kind == "distill", Artifact.kind == "distilled")
        .where(Job.status == "succeeded")
        .order_by(Job.id.desc(), Artifact.id.desc())
    )
    if distill_job_id is None:
        row = db.execute(newest).first()
        return (row.key, row.id) if row else (student.path, None)
    loc = ["body", "distill_job_id"]
    job = db.get(Job, distill_job_id)
    if job is None or job.kind != "distill" or job.student_id != student.id:
        raise field_error(loc, f"job {distill_job_id} is not a distillation of student {student.id}")
    if job.status != "succeeded":
        raise field_error(loc, f"distill job {distill_job_id} is {job.status}, not succeeded")
    row = db.execute(newest.where(Job.id == distill_job_id)).first()
    if row is None:
        raise field_error(loc, f"distill job {distill_job_id} saved no weights")
    return row.key, row.id


@router.get(
    "/students/{student_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the weights directory as a ZIP"},
        **errors(404, 409),
    },
)
def download(
    student_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> StreamingResponse:
    student = get_or_404(db, Student, student_id)
    if student.status != "ready" or not student.path:
        raise Conflict(f"Student {student_id} is {student.status}, not ready")
    try:
        directory = ArtifactStore(settings.artifacts_url).local_dir(student.path)
    except FileNotFoundError as exc:
        raise Conflict(f"Student {student_id}: weights {student.path} are missing ({exc})") from exc
    # A large student spills to a temp file instead of RAM; ZIP_STORED: safetensors do not compress.
    buffer = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                zf.write(path, f"{_safe(student.name)}/{path.relative_to(directory)}")
    buffer.seek(0)
    filename = f"{_safe(student.name)}.zip"
    return StreamingResponse(
        _chunks(buffer),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _chunks(file, size: int = 1 << 20):
    with file:
        while chunk := file.read(size):
            yield chunk


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "student"
