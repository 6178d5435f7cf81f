"""Teachers (models to compress) and datasets (calibration / distillation / evaluation text); a teacher's
evaluation protocol can be changed after registration (PATCH /teachers/{id}); either can be deleted
(backend/unregister.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import dataset_holds, lifecycle, unregister
from backend.api.errors import errors
from backend.dataset_files import dataset_problem
from backend.deps import Page, PathId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Forbidden, InvalidInput, NotFound
from backend.limits import check_positions
from backend.models import Dataset, Teacher
from backend.paths import DEMO, PathNotAllowed, classify_source, stored_source
from backend.responses import DatasetOut, TeacherOut
from backend.schemas import DatasetCreate, TeacherCreate
from backend.settings import Settings
from worker.engine import eval_protocol
from worker.engine.roots import OutsideRoots, check_model_inside

router = APIRouter(tags=["teachers"])
PROTOCOL_AT = ("body", "eval_protocol")  # where a request carries a teacher's protocol


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
    if body.eval_protocol is not None:
        check_protocol_here(body.eval_protocol, settings, db)
    source = checked_source(body.source, settings, allow_hub=True)
    if stored_source(source).kind == "path":
        try:  # a file of the folder links out of the roots: the workers would refuse to read it
            check_model_inside(source, settings.roots)
        except OutsideRoots as exc:
            raise Forbidden(str(exc), field=("body", "source")) from exc
        if not (Path(source) / "config.json").is_file():  # its inspect job would fail on it, later
            what = "a folder without a config.json" if Path(source).is_dir() else "not a folder"
            raise InvalidInput(
                f"{source} is {what}: a teacher is a model folder as save_pretrained writes it "
                "(config.json, weights, tokenizer), or a hub id",
                field=("body", "source"),
            )
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
    # A promoted student's teacher copies its parent's protocol: held too (its field is still eval_protocol).
    dataset_holds.hold_for_protocol(db, teacher.eval_protocol, PROTOCOL_AT)
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


@router.delete("/teachers/{teacher_id}", status_code=204, responses=errors(404, 409))
def delete_teacher(
    teacher_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> None:
    """The teacher with its importance runs, plans and finished jobs; refused while it has students or
    unfinished jobs. Its source (the user's model files) is never touched."""
    leftovers = unregister.delete_teacher(db, get_or_404(db, Teacher, teacher_id), settings)
    db.commit()
    leftovers.remove(settings)


@router.post("/datasets", status_code=201, responses=errors(403, 404))
def create_dataset(
    body: DatasetCreate, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> DatasetOut:
    source = checked_source(body.source, settings, allow_hub=False)
    try:
        problem = None if source == DEMO else dataset_problem(Path(source), settings.roots)
    except PathNotAllowed as exc:  # a file of the folder links out of the roots
        raise Forbidden(str(exc), field=("body", "source")) from exc
    if problem is not None:
        raise InvalidInput(problem, field=("body", "source"))
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


@router.delete("/datasets/{dataset_id}", status_code=204, responses=errors(404, 409))
def delete_dataset(dataset_id: PathId, db: Session = Depends(get_db)) -> None:
    """The registration only (the data files stay); refused while an importance run, a teacher's evaluation
    protocol or any job names it."""
    unregister.delete_dataset(db, get_or_404(db, Dataset, dataset_id))
    db.commit()


# ---- the evaluation protocol, after registration --------------------------------------------------


class ProtocolChange(BaseModel):
    """The protocol fields to change; a field left out keeps the teacher's current value. Checked as a
    whole once merged (worker/engine/eval_protocol.py): a bad value is a 422 naming it with nearby values."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: int | None = Field(None, description="null: the demo corpus")
    split: str | None = Field(None, description=" | ".join(get_args(eval_protocol.Split)))
    context: int | None = Field(None, description="tokens per window (at most PRUNESCOPE_MAX_SEQ_LEN)")
    stride: int | None = Field(None, description="a window starts every `stride` tokens (below context)")
    max_documents: int | None = Field(None, description="the first N documents of the split")


class TeacherUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval_protocol: ProtocolChange = Field(
        description="the protocol its and its students' perplexities are measured on by default from now "
        "on; numbers already measured keep the protocol they were measured on (and are marked as not "
        "comparable when it differs)"
    )


def _nearby(name: str, value: Any, merged: dict, settings: Settings, db: Session) -> list[Any]:
    """Valid values close to a refused protocol field."""

    def clamp(low: int, high: int) -> list[int]:
        return [min(max(value, low), high)] if isinstance(value, int) else [low]

    if name == "split":
        return list(get_args(eval_protocol.Split))
    if name == "context":
        stride = merged.get("stride") if isinstance(merged.get("stride"), int) else 1
        return sorted({*clamp(max(2, stride + 1), settings.max_seq_len), 2 * max(stride, 1)})
    if name == "stride":
        context = merged.get("context") if isinstance(merged.get("context"), int) else 2
        return sorted({max(1, context // 2), *clamp(1, max(1, context - 1))})
    if name == "max_documents":
        return clamp(1, 100_000)
    if name == "dataset_id":
        ids = list(db.scalars(select(Dataset.id)))
        target = value if isinstance(value, int) else 0
        return [None, *sorted(ids, key=lambda i: (abs(i - target), i))[:3]]
    return []


def _checked_protocol(
    teacher: Teacher, change: ProtocolChange, settings: Settings, db: Session
) -> eval_protocol.EvalProtocol:
    sent = change.model_dump(exclude_unset=True)
    merged = {**eval_protocol.of_teacher(teacher.eval_protocol).model_dump(), **sent}
    where = ["body", "eval_protocol"]
    try:
        protocol = eval_protocol.EvalProtocol.model_validate(merged)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        name = e["loc"][0] if e["loc"] else None
        if name is None:  # the stride / context rule: the field the request changed
            name = "stride" if "stride" in sent or "context" not in sent else "context"
        raise field_error(
            [*where, name], e["msg"], e["type"], _nearby(name, merged.get(name), merged, settings, db)
        ) from exc
    check_protocol_here(protocol, settings, db)
    # windows past the teacher's positions (as its inspect stored them) would fail its every evaluation
    check_positions(teacher.spec or {}, protocol.context, [*where, "context"], f"teacher {teacher.id}")
    return protocol


def check_protocol_here(
    protocol: eval_protocol.EvalProtocol, settings: Settings, db: Session
) -> eval_protocol.EvalProtocol:
    """What a valid protocol must also meet on this server, at registration as at every change: a context
    within PRUNESCOPE_MAX_SEQ_LEN and a dataset that exists (else a 422 at body.eval_protocol.<field>)."""
    where, merged = ["body", "eval_protocol"], protocol.model_dump()
    if protocol.context > settings.max_seq_len:
        raise field_error(
            [*where, "context"],
            f"{protocol.context} is over this server's limit of {settings.max_seq_len} (PRUNESCOPE_MAX_SEQ_LEN)",
            nearby=_nearby("context", protocol.context, merged, settings, db),
        )
    if protocol.dataset_id is not None and db.get(Dataset, protocol.dataset_id) is None:
        raise field_error(
            [*where, "dataset_id"],
            f"Dataset {protocol.dataset_id} not found",
            nearby=_nearby("dataset_id", protocol.dataset_id, merged, settings, db),
        )
    return protocol


def write_protocol(db: Session, teacher: Teacher, protocol: dict[str, Any]) -> None:
    """Set the teacher's protocol (flushed) and hold the dataset it names until the commit: a concurrent
    DELETE /datasets waits and then refuses, or had deleted it and this is a 404 (backend/dataset_holds.py)."""
    teacher.eval_protocol = protocol
    db.flush()
    dataset_holds.hold_for_protocol(db, protocol, PROTOCOL_AT)


@router.patch("/teachers/{teacher_id}", responses=errors(404))
def update_teacher(
    teacher_id: PathId,
    body: TeacherUpdate,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> TeacherOut:
    """Change a teacher's evaluation protocol (any status). Its jobs and results are not rewritten: each
    keeps the protocol it was measured on, so the dashboard marks those now on another one (≠)."""
    teacher = get_or_404(db, Teacher, teacher_id)
    write_protocol(db, teacher, _checked_protocol(teacher, body.eval_protocol, settings, db).model_dump())
    db.commit()
    return TeacherOut.model_validate(teacher)
