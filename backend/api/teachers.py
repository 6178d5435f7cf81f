"""Teachers (models to compress) and datasets (calibration / distillation / evaluation text)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle, serialize
from backend.deps import Page, PathId, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.models import Dataset, Teacher
from backend.paths import PathNotAllowed, classify_source
from backend.schemas import DatasetCreate, TeacherCreate
from backend.settings import Settings

router = APIRouter(tags=["teachers"])


def checked_source(source: str, settings: Settings, *, allow_hub: bool) -> str:
    """ "demo", a hub id, or a local path inside the allowed roots (returned resolved): backend/paths.py."""
    try:
        return classify_source(source, settings.roots, allow_hub=allow_hub).value
    except PathNotAllowed as exc:
        raise HTTPException(403, f"source: {exc}") from exc
    except FileNotFoundError as exc:
        raise HTTPException(404, f"source: {exc}") from exc


@router.post("/teachers", status_code=201)
def create_teacher(
    body: TeacherCreate,
    request: Request,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> dict:
    if body.trust_remote_code and not settings.trust_remote_code:
        raise HTTPException(
            403, "trust_remote_code: disabled on this server (set PRUNESCOPE_TRUST_REMOTE_CODE=1 to allow)"
        )
    source = checked_source(body.source, settings, allow_hub=True)
    teacher = Teacher(
        name=body.name, source=source, trust_remote_code=body.trust_remote_code, status="pending"
    )
    return register(request, db, teacher)


def register(request: Request, db: Session, teacher: Teacher) -> dict:
    """Add a checked, pending teacher and queue the `inspect` job that reads its architecture."""
    queue = choose_queue(request.app.state.settings, "inspect", {})  # a light job: always `default`
    db.add(teacher)
    db.flush()
    job = lifecycle.create(db, "inspect", {"source": teacher.source}, queue=queue, teacher_id=teacher.id)
    teacher.job_id = job.id
    lifecycle.send(request.app, db, job)
    return serialize.teacher(teacher)


@router.get("/teachers")
def list_teachers(page: Page = Depends(), db: Session = Depends(get_db)) -> list[dict]:
    rows = db.scalars(page.of(select(Teacher).order_by(Teacher.id.desc())))
    return [serialize.teacher(t) for t in rows]


@router.get("/teachers/{teacher_id}")
def get_teacher(teacher_id: PathId, db: Session = Depends(get_db)) -> dict:
    return serialize.teacher(get_or_404(db, Teacher, teacher_id))


@router.post("/datasets", status_code=201)
def create_dataset(
    body: DatasetCreate, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> dict:
    source = checked_source(body.source, settings, allow_hub=False)
    dataset = Dataset(name=body.name, source=source)
    db.add(dataset)
    db.commit()  # before the response: the client may use the id at once
    return serialize.dataset(dataset)


@router.get("/datasets")
def list_datasets(page: Page = Depends(), db: Session = Depends(get_db)) -> list[dict]:
    rows = db.scalars(page.of(select(Dataset).order_by(Dataset.id.desc())))
    return [serialize.dataset(d) for d in rows]


@router.get("/datasets/{dataset_id}")
def get_dataset(dataset_id: PathId, db: Session = Depends(get_db)) -> dict:
    return serialize.dataset(get_or_404(db, Dataset, dataset_id))
