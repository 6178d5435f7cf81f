"""Run management (the dashboard's runs table): search and filter every job on the server (GET /runs, a
page at a time, so a run older than any page is found), rename and tag a job, export the metrics and
results of any jobs as JSON or CSV. Deleting a run is DELETE /jobs/{id} (backend/api/jobs.py)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from backend import serialize
from backend.deps import PathId, field_error, get_db, get_or_404
from backend.events import add_event
from backend.models import Job, JobKind, JobStatus, MetricPoint, Student, Teacher
from backend.responses import JobOut
from backend.schemas import MAX_ID, NO_CONTROL_CHARS, JobUpdate

router = APIRouter(tags=["runs"])

MAX_EXPORT = 500  # runs per export
MAX_WORDS = 8  # words of a runs search


class RunFacets(BaseModel):
    """What the filter menus offer: the values present over every job (not only the page)."""

    kinds: list[str]
    statuses: list[str]
    tags: list[str]


class RunsPage(BaseModel):
    """GET /runs: one page of the jobs matching the search and filters, newest first."""

    runs: list[JobOut]
    total: int = Field(description="jobs matching the search and filters, over every page")
    offset: int
    limit: int
    next_offset: int | None = Field(description="the offset of the next (older) page; null on the last")
    facets: RunFacets


def _words(q: str | None) -> list[str]:
    words = (q or "").lower().split()
    if len(words) > MAX_WORDS:
        raise field_error(["query", "q"], f"at most {MAX_WORDS} words per search")
    return words


def _matches(word: str):
    """A job whose name, kind, student's or teacher's name (its default name) or a tag holds `word`
    (case-insensitive; % and _ are plain characters), or whose id it is (`#12` or `12`). Tags are stored
    as JSON text, searched as such."""
    text = or_(
        Job.name.icontains(word, autoescape=True),
        Job.kind.icontains(word, autoescape=True),
        cast(Job.tags, String).icontains(word, autoescape=True),
        Job.student_id.in_(select(Student.id).where(Student.name.icontains(word, autoescape=True))),
        Job.teacher_id.in_(select(Teacher.id).where(Teacher.name.icontains(word, autoescape=True))),
    )
    digits = word.removeprefix("#")
    if digits.isdigit() and len(digits) <= 18:
        return Job.id == int(digits) if word.startswith("#") else or_(Job.id == int(digits), text)
    return text


def _has_tag(tag: str):
    """The tag as a whole element of the JSON list: tags hold no quote (schemas.TAG_PATTERN), so '"tag"'
    in the stored text is exactly one element (case-insensitive, as the search)."""
    return cast(Job.tags, String).icontains(json.dumps(tag), autoescape=True)


def facets(db: Session) -> RunFacets:
    tags: set[str] = set()
    listed = cast(Job.tags, String)  # JSON has no equality in PostgreSQL: no DISTINCT, the text instead
    for row in db.scalars(select(Job.tags).where(listed.isnot(None), listed.notin_(["[]", "null"]))):
        tags.update(t for t in row or [] if isinstance(t, str))
    return RunFacets(
        kinds=sorted(db.scalars(select(Job.kind).distinct())),
        statuses=sorted(db.scalars(select(Job.status).distinct())),
        tags=sorted(tags),
    )


@router.get("/runs")
def list_runs(
    q: str | None = Query(
        None,
        max_length=200,
        pattern=NO_CONTROL_CHARS,
        description="words, all matching: in the run's name, kind, student / teacher name or tags; #id",
    ),
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    tag: str | None = Query(None, max_length=40, pattern=NO_CONTROL_CHARS, description="runs with this tag"),
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_ID),
    db: Session = Depends(get_db),
) -> RunsPage:
    """The runs table's rows: every job matching the search and filters, newest first, one page at a
    time (`offset`, `next_offset`), with the total and the filter menus' values."""
    where = [_matches(w) for w in _words(q)]
    if kind is not None:
        where.append(Job.kind == kind)
    if status is not None:
        where.append(Job.status == status)
    if tag:
        where.append(_has_tag(tag.strip()))
    total = db.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = db.scalars(select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset))
    runs = [JobOut.of(j) for j in rows]
    more = offset + len(runs) < total
    return RunsPage(
        runs=runs,
        total=total,
        offset=offset,
        limit=limit,
        next_offset=offset + len(runs) if more and runs else None,
        facets=facets(db),
    )


@router.patch("/jobs/{job_id}")
def update_job(job_id: PathId, body: JobUpdate, db: Session = Depends(get_db)) -> JobOut:
    """Rename (`name`; null: back to the default) and/or re-tag (`tags` replaces them) a job of any status."""
    job = get_or_404(db, Job, job_id)
    if "name" in body.model_fields_set:
        job.name = body.name
    if "tags" in body.model_fields_set:
        job.tags = body.tags or []
    db.flush()
    add_event(db, job, "status", serialize.job(job))  # open pages follow the new name / tags
    db.commit()
    return JobOut.of(job)


class ExportedRun(BaseModel):
    id: int
    name: str | None
    kind: str
    status: str
    tags: list[str]
    teacher_id: int | None
    student_id: int | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    protocol: dict[str, Any] | None = Field(description="what its perplexities were measured on")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    metrics: dict[str, list[dict[str, Any]]] = Field(description="by name: [{step, value, tokens, t}]")


class RunsExport(BaseModel):
    runs: list[ExportedRun]


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise field_error(["query", "ids"], "must be comma-separated integer job ids") from exc
    if not ids:
        raise field_error(["query", "ids"], "name at least one job id")
    if any(not 1 <= i <= MAX_ID for i in ids):
        raise field_error(["query", "ids"], f"ids must be between 1 and {MAX_ID}")
    if len(set(ids)) > MAX_EXPORT:
        raise field_error(["query", "ids"], f"at most {MAX_EXPORT} runs per export")
    return list(dict.fromkeys(ids))


def exported(db: Session, job: Job) -> ExportedRun:
    row = serialize.job(job)
    metrics: dict[str, list[dict[str, Any]]] = {}
    points = (
        select(MetricPoint).where(MetricPoint.job_id == job.id).order_by(MetricPoint.name, MetricPoint.step)
    )
    for p in db.scalars(points):
        metrics.setdefault(p.name, []).append(
            {"step": p.step, "value": p.value, "tokens": p.tokens, "t": p.t}
        )
    fields = {k: row[k] for k in ExportedRun.model_fields if k != "metrics"}
    return ExportedRun(**fields, metrics=metrics)


def flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested results/params as (dotted key, scalar) pairs: perplexity.perplexity, tasks[0].acc."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in flat(v, f"{prefix}[{i}]")]
    return [(prefix, value)]


CSV_COLUMNS = [
    "run_id",
    "run_name",
    "kind",
    "status",
    "tags",
    "section",
    "key",
    "step",
    "tokens",
    "t",
    "value",
]


def as_csv(runs: list[ExportedRun]) -> str:
    """One long table: a row per metric point (section "metric"), per result value ("result"), per
    parameter ("param"), per protocol field ("protocol")."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in runs:
        head = [run.id, run.name or "", run.kind, run.status, ";".join(run.tags)]
        for section, values in (("param", run.params), ("protocol", run.protocol), ("result", run.result)):
            for key, value in flat(values or {}):
                text = json.dumps(value) if isinstance(value, (bool, type(None))) else value
                writer.writerow([*head, section, key, "", "", "", text])
        for name, points in run.metrics.items():
            for p in points:
                writer.writerow(
                    [*head, "metric", name, p["step"], p["tokens"] or "", p["t"] or "", repr(p["value"])]
                )
    return out.getvalue()


@router.get(
    "/runs/export",
    response_model=RunsExport,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON (RunsExport) or CSV (format=csv)"}},
)
def export_runs(
    ids: str = Query(..., max_length=8000, description="comma-separated job ids"),
    format: Literal["json", "csv"] = Query("json", description="json: RunsExport; csv: one long table"),
    db: Session = Depends(get_db),
) -> Response:
    """The parameters, protocol, result and every metric point of the named jobs, as a download."""
    runs = [exported(db, get_or_404(db, Job, job_id)) for job_id in parse_ids(ids)]
    disposition = {"Content-Disposition": f'attachment; filename="prunescope-runs.{format}"'}
    if format == "csv":
        return Response(as_csv(runs), media_type="text/csv; charset=utf-8", headers=disposition)
    body = RunsExport(runs=runs).model_dump_json()
    return Response(body, media_type="application/json", headers=disposition)
