"""The `inspect` job: a teacher's architecture from its config alone (shapes on "meta", no weights read)."""

from __future__ import annotations

from typing import Any

from backend.db import session_scope
from backend.models import Job, Teacher
from backend.spec_refresh import REFRESH
from worker.job_io import (
    check_remote_code,
    fetch_rows,
    mark_failed,
    model_source,
)
from worker.runtime import JobRuntime


def run_inspect(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.loading import config_spec

    (teacher,) = fetch_rows(rt, (Teacher, job.teacher_id))
    check_remote_code(rt, teacher.trust_remote_code)
    source = model_source(teacher.source)
    try:
        summary = config_spec(source, trust_remote_code=teacher.trust_remote_code).summary()
    except Exception as exc:
        if not job.params.get(REFRESH):  # a refresh (backend.spec_refresh) leaves a ready teacher ready
            mark_failed(rt, Teacher, teacher.id, exc)
        raise
    with session_scope(rt.url) as s:
        row = s.get(Teacher, teacher.id)
        row.spec, row.status, row.error = summary, "ready", None
    return {"spec": summary}
