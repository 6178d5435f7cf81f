"""Where a distill job keeps its checkpoints and how their step reaches the job row: shared by the
one-process handler (worker.handlers.distill_job), the ranks' supervisor (worker.distill_ranks) and the
other nodes of a gang (worker.node_member)."""

from __future__ import annotations

import json
from pathlib import Path

from backend.models import Job
from worker.job_io import store
from worker.runtime import JobRuntime


def checkpoint_dir(rt: JobRuntime, job: Job) -> Path:
    """Checkpoints live with the artifacts (a shared directory lets another worker resume)."""
    st = store(rt)
    if not st.is_local:
        return rt.settings.data_dir.resolve() / "checkpoints" / f"job-{job.id}"
    return st.root / "checkpoints" / f"job-{job.id}"


def checkpoint_step(ckpt: Path) -> int | None:
    """The step of the newest checkpoint in `ckpt` (None: none yet, or unreadable)."""
    try:
        return int(json.loads((ckpt / "checkpoint.json").read_text())["step"])
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
        return None


class CheckpointMirror:
    """Call it to mirror the newest checkpoint on disk (what a resume starts from: its step in the
    torch-free checkpoint.json, one process or sharded alike) into the job row, once per new step."""

    def __init__(self, rt: JobRuntime, ckpt: Path):
        self.rt, self.ckpt, self.step = rt, ckpt, None

    def __call__(self) -> None:
        saved = checkpoint_step(self.ckpt)
        if saved is not None and saved != self.step:
            self.step = saved
            self.rt.checkpoint(saved, str(self.ckpt))
