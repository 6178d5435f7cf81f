"""A teacher's perplexity, measured once per weights and protocol.

Every what-if preview scores the teacher and then the masked teacher on the same text. The teacher's
half does not depend on the plan: a researcher trying ten plans paid for the same number ten times (on
the demo teacher's protocol, minutes each on a CPU). An earlier preview or evaluation of the same
teacher gives it when all of these match, so the number is the one this job would measure:
- the protocol record's id (text, split, documents or blocks, window);
- the weights stamp: the checkpoint files (path, size, modification time), the device and dtype the
  model was loaded with, and the prunescope version (same scorer, same batching).
A result without a stamp (rows from before it existed, a data-parallel evaluation, whose sums are
reduced in another order) is never reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from backend.db import session_scope
from backend.models import BenchmarkResult, Job

LOOK_BACK = 50  # newest results of each kind read per preview: enough for a session of plans


def weights_stamp(model_dir: str, device: str, dtype: str) -> str | None:
    """What the measured numbers depend on besides the protocol (None: not a readable directory)."""
    root = Path(model_dir)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(f"{device}|{dtype}|{importlib.metadata.version('prunescope')}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Known:
    loss: float  # mean next-token NLL (natural log)
    tokens: int
    job_id: int


def known(url: str, teacher_id: int, protocol_id: str, stamp: str | None) -> Known | None:
    """The newest teacher perplexity measured on `protocol_id` with these weights, from a succeeded
    preview of the teacher or an evaluation of it."""
    if stamp is None:
        return None
    with session_scope(url) as s:
        previews = s.execute(
            select(Job.id, Job.result)
            .where(Job.kind == "preview", Job.teacher_id == teacher_id, Job.status == "succeeded")
            .order_by(Job.id.desc())
            .limit(LOOK_BACK)
        ).all()
        evaluations = s.execute(
            select(BenchmarkResult.job_id, BenchmarkResult.result)
            .where(
                BenchmarkResult.kind == "evaluate",
                BenchmarkResult.teacher_id == teacher_id,
                BenchmarkResult.student_id.is_(None),
            )
            .order_by(BenchmarkResult.id.desc())
            .limit(LOOK_BACK)
        ).all()
    found = [_of_preview(job_id, r) for job_id, r in previews] + [
        _of_evaluation(j, r) for j, r in evaluations
    ]
    matching = [k for k, (pid, st) in found if k is not None and pid == protocol_id and st == stamp]
    return max(matching, key=lambda k: k.job_id, default=None)


def _protocol_id(result: dict) -> str | None:
    return (result.get("protocol") or {}).get("id")


def _of_preview(job_id: int, result: dict | None) -> tuple[Known | None, tuple]:
    result = result or {}
    if "teacher_loss" not in result:
        return None, ()
    known_ = Known(result["teacher_loss"], result["tokens"], result.get("teacher_from_job") or job_id)
    return known_, (_protocol_id(result), result.get("weights_stamp"))


def _of_evaluation(job_id: int, result: dict | None) -> tuple[Known | None, tuple]:
    result = result or {}
    ppl = result.get("perplexity") or {}
    if "loss" not in ppl:
        return None, ()
    return Known(ppl["loss"], ppl["tokens"], job_id), (_protocol_id(result), result.get("weights_stamp"))
