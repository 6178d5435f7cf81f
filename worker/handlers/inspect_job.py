"""The `inspect` job: a teacher's architecture from its config alone (shapes on "meta", no weights read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.models import Job, Teacher
from backend.spec_refresh import REFRESH
from worker.handlers.common import (
    check_remote_code,
    fetch_rows,
    mark_failed,
    model_source,
)
from worker.runtime import JobRuntime


def run_inspect(rt: JobRuntime, job: Job) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from worker.engine.adapters import arch_spec
    from worker.engine.dtypes import config_dtype, dtype_name
    from worker.engine.loading import LAYERS_FILE, resize_to_layers_file

    (teacher,) = fetch_rows(rt, (Teacher, job.teacher_id))
    check_remote_code(rt, teacher.trust_remote_code)
    source = model_source(teacher.source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=teacher.trust_remote_code)
        with torch.device("meta"):  # shapes only: no memory, no weights read
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=teacher.trust_remote_code)
            if (Path(source) / LAYERS_FILE).is_file():  # a promoted non-uniform student: config.json
                resize_to_layers_file(model, Path(source), config)  # holds only the widest layer
        spec = arch_spec(model)
        dtype = config_dtype(config)
        if dtype is not None:
            spec.dtype = dtype_name(dtype)
        summary = spec.summary()
    except Exception as exc:
        if not job.params.get(REFRESH):  # a refresh (backend.spec_refresh) leaves a ready teacher ready
            mark_failed(rt, Teacher, teacher.id, exc)
        raise
    with session_scope(rt.url) as s:
        row = s.get(Teacher, teacher.id)
        row.spec, row.status, row.error = summary, "ready", None
    return {"spec": summary}
