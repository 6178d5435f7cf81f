"""Teachers (models to compress) and datasets (calibration / distillation / evaluation text)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle
from backend.api.errors import errors
from backend.deps import Page, PathId, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Forbidden, NotFound
from backend.models import Dataset, Teacher
from backend.paths import PathNotAllowed, classify_source
from backend.responses import DatasetOut, TeacherOut
from backend.schemas import DatasetCreate, TeacherCreate
from backend.settings import Settings

router = APIRouter(tags=["teachers"])


def checked_source(source: str, settings: Settings, *, allow_hub: bool) -> str:
    """ "demo", a hub id, or a local path inside the allowed roots (returned resolved): backend/paths.py."""
    try:
        return classify_source(source, settings.roots, allow_hub=allow_hub).value
    except PathNotAllowed as exc:
        raise Forbidden(str(exc), field=("body", "source")) from exc
    except FileNotFoundError as exc:
        raise NotFound(str(exc), field=("body", "source")) from exc


@router.post("/teachers", status_code=201, responses=errors(403, 404, 503))
def create_teacher(
    body: TeacherCreate,
    request: Request,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> TeacherOut:
    if body.trust_remote_code and not settings.trust_remote_code:
        raise Forbidden(
            "disabled on this server (set PRUNESCOPE_TRUST_REMOTE_CODE=1 to allow)",
            field=("body", "trust_remote_code"),
            nearby=[False],
        )
    source = checked_source(body.source, settings, allow_hub=True)
    teacher = Teacher(
        name=body.name,
        source=source,
        trust_remote_code=body.trust_remote_code,
        status="pending",
        eval_protocol=body.eval_protocol.model_dump() if body.eval_protocol else None,
    )
    return register(request, db, teacher)


def register(request: Request, db: Session, teacher: Teacher) -> TeacherOut:
    """Add a checked, pending teacher and queue the `inspect` job that reads its architecture."""
    queue = choose_queue(request.app.state.settings, "inspect", {})  # a light job: always `default`
    db.add(teacher)
    db.flush()
    job = lifecycle.create(db, "inspect", {"source": teacher.source}, queue=queue, teacher_id=teacher.id)
    teacher.job_id = job.id
    lifecycle.send(request.app, db, job)
    return TeacherOut.model_validate(teacher)


@router.get("/teachers")
def list_teachers(page: Page = Depends(), db: Session = Depends(get_db)) -> list[TeacherOut]:
    rows = db.scalars(page.of(select(Teacher).order_by(Teacher.id.desc())))
    return [TeacherOut.model_validate(t) for t in rows]


@router.get("/teachers/{teacher_id}", responses=errors(404))
def get_teacher(teacher_id: PathId, db: Session = Depends(get_db)) -> TeacherOut:
    return TeacherOut.model_validate(get_or_404(db, Teacher, teacher_id))


@router.post("/datasets", status_code=201, responses=errors(403, 404))
def create_dataset(
    body: DatasetCreate, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> DatasetOut:
    source = checked_source(body.source, settings, allow_hub=False)
    dataset = Dataset(name=body.name, source=source)
    db.add(dataset)
    db.commit()  # before the response: the client may use the id at once
    return DatasetOut.model_validate(dataset)


@router.get("/datasets")
def list_datasets(page: Page = Depends(), db: Session = Depends(get_db)) -> list[DatasetOut]:
    rows = db.scalars(page.of(select(Dataset).order_by(Dataset.id.desc())))
    return [DatasetOut.model_validate(d) for d in rows]


@router.get("/datasets/{dataset_id}", responses=errors(404))
def get_dataset(dataset_id: PathId, db: Session = Depends(get_db)) -> DatasetOut:
    return DatasetOut.model_validate(get_or_404(db, Dataset, dataset_id))
