"""What every job's code shares, the handlers (worker.handlers) and the multi-rank supervisors
(worker.*_ranks) alike: where a stored source is read from, loading a model with its progress, the job's
rows and dataset, and writing artifacts (staging dir + rename, never half-written)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from backend.artifacts import ArtifactStore
from backend.db import session_scope
from backend.models import Artifact, Dataset, Job, Student, Teacher
from backend.paths import stored_source
from worker.engine.roots import check_model_inside
from worker.runtime import JobRuntime


def model_source(source: str) -> str:
    """The local directory of a teacher's stored source; a hub id only through the hub client."""
    stored = stored_source(source)
    if stored.kind == "demo":
        from worker.demo import demo_teacher_path

        return str(demo_teacher_path())
    if stored.kind == "hub":
        from worker.hub import hub_snapshot

        return hub_snapshot(stored.value)
    return stored.value


def check_teacher_files(rt: JobRuntime, job: Job) -> None:
    """Before a job reads its teacher (its own, or its student's): a local teacher folder and every file
    in it resolve inside the allowed roots, or the local artifact store where a promoted student's
    weights are read in place. A link put in the folder after registration is refused (OutsideRoots)."""
    teacher_id = job.teacher_id
    if teacher_id is None and job.student_id is not None:
        (student,) = fetch_rows(rt, (Student, job.student_id))
        teacher_id = student.teacher_id if student is not None else None
    (teacher,) = fetch_rows(rt, (Teacher, teacher_id)) if teacher_id is not None else (None,)
    if teacher is None or stored_source(teacher.source).kind != "path":
        return
    artifacts = store(rt)
    check_model_inside(teacher.source, rt.settings.roots + ([artifacts.root] if artifacts.is_local else []))


def check_remote_code(rt: JobRuntime, trust_remote_code: bool) -> None:
    if trust_remote_code and not rt.settings.trust_remote_code:
        raise PermissionError("trust_remote_code is disabled on this server (PRUNESCOPE_TRUST_REMOTE_CODE)")


def load(
    rt: JobRuntime,
    source: str,
    trust_remote_code: bool = False,
    *,
    bar: tuple[float, float] | None = None,
    what: str = "weights",
):
    """(model, tokenizer), reporting `loading {what}: k/N tensors` as the checkpoint is read (the bar
    moves over `bar`, else stays where the job is)."""
    from worker.engine.loading import load_model

    check_remote_code(rt, trust_remote_code)
    if bar is None:
        at = rt.job_row().progress or 0.0
        bar = (at, at)
    return load_model(
        model_source(source),
        device=rt.device,
        trust_remote_code=trust_remote_code,
        progress=LoadCount(rt, what, bar),
    )


def _left(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s" if seconds >= 60 else f"{seconds}s"


class LoadCount:
    """`loading weights: k/N tensors, 1m 20s left` while a checkpoint is read (a 70B teacher: minutes).

    Its time left is the load's own, at the load's rate over the last minute (worker.eta); the job's
    ETA stays empty meanwhile: how fast weights are read says nothing of how fast the job's own work
    (calibration, training...) will go, and the bar's share of the load is a guess, not a measure.
    """

    def __init__(self, rt: JobRuntime, what: str, bar: tuple[float, float]):
        from worker.eta import RateEta

        self.rt, self.what, self.bar = rt, what, bar
        self.eta = RateEta()
        self.phase = f"loading {what}"

    def __call__(self, done: int, total: int) -> None:
        f = done / total if total else 1.0
        message = f"{self.phase}: {done}/{total} tensors"
        left = self.eta.update(self.rt._clock(), f)
        if left is not None and done < total:
            message += f", {_left(left)} left"
        start, end = self.bar
        self.rt.progress(start + (end - start) * f, message, phase=self.phase, job_eta=False)
        self.rt.raise_if_cancelled()


def store(rt: JobRuntime) -> ArtifactStore:
    return ArtifactStore(rt.settings.artifacts_url)


def fetch_rows(rt: JobRuntime, *pairs):
    """Fetch detached rows: fetch_rows(rt, (Teacher, 1), (Dataset, 2))."""
    with session_scope(rt.url) as s:
        rows = [s.get(model, pk) for model, pk in pairs]
        for row in rows:
            if row is not None:
                s.expunge(row)
    return rows


def publish(rt: JobRuntime, key: str, write: Callable[[Path], object]) -> str:
    """`write(dir)` into a staging directory, then move it to `key` whole (never half-written)."""
    st = store(rt)
    staging = st.staging_dir()
    try:
        write(staging / "out")
        return st.put_dir(staging / "out", key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def record_artifact(rt: JobRuntime, s, job_id: int, kind: str, key: str) -> None:
    st = store(rt)
    size = st.size(key) if st.is_local else None
    s.add(Artifact(job_id=job_id, kind=kind, key=key, size_bytes=size))


def mark_failed(rt: JobRuntime, model, pk: int, exc: Exception) -> None:
    """The teacher / student row the job was building shows why it failed."""
    with session_scope(rt.url) as s:
        row = s.get(model, pk)
        row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"


def job_dataset(rt: JobRuntime, params: dict) -> Dataset | None:
    """The job's dataset, its files checked against the allowed roots before any is read (every reader,
    in this process or in the ranks it starts, gets the dataset here)."""
    if not params.get("dataset_id"):
        return None
    (dataset,) = fetch_rows(rt, (Dataset, params["dataset_id"]))
    if dataset is not None and dataset.source != "demo":
        from worker.engine.shards import check_source_inside

        # A link to outside the roots put in the folder after registration is refused, not read.
        check_source_inside(dataset.source, rt.settings.roots)
    return dataset


def documents(dataset: Dataset | None, split: str) -> list[str]:
    from worker.engine.data import read_documents

    return read_documents(dataset.source if dataset else "demo", split)


def token_stream(dataset: Dataset | None, p: dict, tokenizer, split: str, *, repeat: bool):
    """The dataset read lazily (params `stream`, `data_format`, `text_field`: backend/data_reading.py)."""
    from worker.engine.streaming import TokenStream

    return TokenStream(
        tokenizer,
        dataset.source if dataset else "demo",
        seq_len=p["seq_len"],
        split=split,
        text_field=p.get("text_field", "text"),
        data_format=p.get("data_format", "auto"),
        repeat=repeat,
    )


def student_source(rt: JobRuntime, student: Student) -> str:
    if not student.path:
        raise RuntimeError(f"student {student.id} has no saved model (status {student.status})")
    return str(store(rt).local_dir(student.path))


def distilled_key(rt: JobRuntime, distill_job_id: int) -> str:
    with session_scope(rt.url) as s:
        key = s.scalar(
            select(Artifact.key)
            .where(Artifact.job_id == distill_job_id, Artifact.kind == "distilled")
            .order_by(Artifact.id.desc())
        )
    if key is None:
        raise RuntimeError(f"distill job {distill_job_id} saved no weights")
    return key


def json_safe(value):
    """Engine results (dataclasses, numpy scalars) -> JSON-safe values."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
