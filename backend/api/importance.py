"""Importance runs and their heatmap payloads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import heatmaps, lifecycle, memcheck, unregister
from backend.api.errors import errors
from backend.artifacts import ArtifactStore
from backend.data_reading import check_data_reading
from backend.deps import Page, PathId, QueryId, field_error, get_db, get_or_404, get_settings
from backend.dispatch import choose_queue
from backend.errors import Conflict, NotFound, fields_at
from backend.limits import check_job_size, check_positions
from backend.models import Dataset, ImportanceRun, Job, Teacher
from backend.responses import (
    ExpertsMap,
    HeadsMap,
    HiddenMap,
    ImportanceRunOut,
    LayerScores,
    NeuronOrder,
    NeuronsMap,
)
from backend.schemas import BatchAgg, ImportanceRunCreate, SeqAgg
from backend.settings import Settings

router = APIRouter(tags=["importance"])
RUN_ERRORS = errors(404, 409)  # no such run; no results yet


def ready_teacher(db: Session, teacher_id: int, field: tuple | None = None) -> Teacher:
    """The teacher, inspected; `field`: the request field that named it (404 / 409 name it)."""
    teacher = get_or_404(db, Teacher, teacher_id, field=field)
    if teacher.status != "ready" or not teacher.spec:
        raise Conflict(f"Teacher {teacher_id} is {teacher.status}, not ready", field=field)
    return teacher


@router.post("/importance-runs", status_code=201, responses=errors(403, 404, 409, 503))
def create_run(
    body: ImportanceRunCreate, request: Request, db: Session = Depends(get_db)
) -> ImportanceRunOut:
    check_job_size(body, request.app.state.settings, ["body"])
    teacher = ready_teacher(db, body.teacher_id, ("body", "teacher_id"))
    check_positions(teacher.spec, body.seq_len, ["body", "seq_len"], f"teacher {teacher.id}")
    dataset = get_or_404(db, Dataset, body.dataset_id, field=("body", "dataset_id"))
    check_data_reading(body, dataset.source, ["body"], request.app.state.settings.roots)
    layers = teacher.spec["num_layers"]
    if ("block" in body.scans or "angular" in body.scans) and not 1 <= body.block_size < layers:
        raise field_error(
            ["body", "block_size"], f"must be between 1 and {layers - 1} (the teacher has {layers} layers)"
        )
    params = body.model_dump(exclude={"teacher_id", "dataset_id"})
    with fields_at(("body",)):
        queue = choose_queue(request.app.state.settings, "importance", params)
        memcheck.check_importance(request.app.state.settings, teacher.spec, params, queue)
    run = ImportanceRun(teacher_id=teacher.id, dataset_id=body.dataset_id, params=params)
    db.add(run)
    db.flush()
    # The job row names its data too (the run keeps it in a column): the runs table's data column reads
    # a job's params, and showed "–" for every importance run (audit 19).
    job = lifecycle.create(
        db,
        "importance",
        {**params, "dataset_id": body.dataset_id},
        queue=queue,
        teacher_id=teacher.id,
        importance_run_id=run.id,
    )
    run.job_id = job.id
    lifecycle.send(request.app, db, job)
    return ImportanceRunOut.of(run, job)


@router.get("/importance-runs")
def list_runs(
    teacher_id: QueryId = None,
    page: Page = Depends(),
    db: Session = Depends(get_db),
) -> list[ImportanceRunOut]:
    q = (
        select(ImportanceRun, Job)
        .outerjoin(Job, Job.id == ImportanceRun.job_id)
        .order_by(ImportanceRun.id.desc())
    )
    if teacher_id is not None:
        q = q.where(ImportanceRun.teacher_id == teacher_id)
    return [ImportanceRunOut.of(r, j) for r, j in db.execute(page.of(q))]


@router.get("/importance-runs/{run_id}", responses=errors(404))
def get_run(run_id: PathId, db: Session = Depends(get_db)) -> ImportanceRunOut:
    run = get_or_404(db, ImportanceRun, run_id, "Importance run")
    return ImportanceRunOut.of(run, db.get(Job, run.job_id) if run.job_id else None)


def artifact_path(
    db: Session, run_id: int, settings: Settings, field: tuple | None = None
) -> tuple[ImportanceRun, Path]:
    """The run and the directory of its scores; `field`: the request field that named the run."""
    run = get_or_404(db, ImportanceRun, run_id, "Importance run", field)
    if not run.artifact:
        job = db.get(Job, run.job_id) if run.job_id else None
        raise Conflict(
            f"Importance run {run_id} has no results yet (status {job.status if job else 'queued'})",
            field=field,
        )
    try:
        return run, ArtifactStore(settings.artifacts_url).local_dir(run.artifact)
    except FileNotFoundError as exc:  # removed from the store behind the database's back
        raise Conflict(f"Importance run {run_id}: its scores are missing ({exc})", field=field) from exc


def run_artifact(
    run_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> tuple[ImportanceRun, Path]:
    return artifact_path(db, run_id, settings)


def aggregation(batch: BatchAgg = "l2", seq: SeqAgg = "mean") -> tuple[str, str]:
    """The batch and sequence reductions, by query parameter (default: the papers' best)."""
    return batch, seq


RunArtifact = Annotated[tuple[ImportanceRun, Path], Depends(run_artifact)]
Aggregation = Annotated[tuple[str, str], Depends(aggregation)]


@router.delete("/importance-runs/{run_id}", status_code=204, responses=errors(404, 409))
def delete_run(
    run_id: PathId, db: Session = Depends(get_db), settings: Settings = Depends(get_settings)
) -> None:
    """The run, its score files and its importance job; refused while a plan was filled from it or
    another job (search, bake-off) reads it, or while its job is queued/running."""
    leftovers = unregister.delete_importance_run(
        db, get_or_404(db, ImportanceRun, run_id, "Importance run"), settings
    )
    db.commit()
    leftovers.remove(settings)


@router.get("/importance-runs/{run_id}/heads", responses=RUN_ERRORS)
def run_heads(artifact: RunArtifact, agg: Aggregation, db: Session = Depends(get_db)) -> HeadsMap:
    run, path = artifact
    teacher = db.get(Teacher, run.teacher_id)
    return heatmaps.heads(path, *agg, (teacher.spec or {}).get("num_kv_heads"))


@router.get("/importance-runs/{run_id}/neurons", responses=RUN_ERRORS)
def run_neurons(
    artifact: RunArtifact,
    agg: Aggregation,
    bins: int = Query(256, ge=1, le=4096),
    order: Literal["sorted", "natural"] = "sorted",
    layer_start: int = Query(0, ge=0),
    layer_end: int | None = Query(None, ge=1),
    start: int = Query(0, ge=0),
    end: int | None = Query(None, ge=1),
) -> NeuronsMap:
    try:
        return heatmaps.neurons(
            artifact[1],
            *agg,
            bins=bins,
            order=order,
            layer_start=layer_start,
            layer_end=layer_end,
            start=start,
            end=end,
        )
    except heatmaps.RangeError as exc:
        raise field_error(["query", exc.field], str(exc)) from exc


@router.get("/importance-runs/{run_id}/neuron-order", responses=RUN_ERRORS)
def run_neuron_order(artifact: RunArtifact, agg: Aggregation) -> NeuronOrder:
    return heatmaps.neuron_order(artifact[1], *agg)


@router.get("/importance-runs/{run_id}/hidden", responses=RUN_ERRORS)
def run_hidden(artifact: RunArtifact, agg: Aggregation) -> HiddenMap:
    return heatmaps.hidden(artifact[1], *agg)


@router.get("/importance-runs/{run_id}/layers", responses=RUN_ERRORS)
def run_layers(artifact: RunArtifact, agg: Aggregation) -> LayerScores:
    return heatmaps.layers(artifact[1], *agg)


@router.get("/importance-runs/{run_id}/experts", responses=RUN_ERRORS)
def run_experts(artifact: RunArtifact, agg: Aggregation) -> ExpertsMap:
    try:
        return heatmaps.experts(artifact[1], *agg)
    except heatmaps.NoExperts as exc:
        raise NotFound(f"Importance run {artifact[0].id}: {exc}") from exc


@router.get("/importance-runs/{run_id}/stability", responses=RUN_ERRORS)
def run_stability(artifact: RunArtifact, agg: Aggregation) -> dict[str, float | None]:
    return heatmaps.stability(artifact[1], *agg)
