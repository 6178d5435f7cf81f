"""Node i > 0 of a job over several nodes, in a job process of its own (worker.isolation).

It never claims or finishes the job row: node 0 owns it (worker.distill_ranks). It waits for node 0 to
open the gang (worker.gang), then launches this node's ranks with torchrun at node 0's rendezvous and
supervises them as node 0 supervises its own (worker.multi_rank: parent-death signals, a stop file):
its ranks' output becomes job lines prefixed `[node i]`, and a cancel or this worker's shutdown reaches
its ranks through its own stop file (every rank then stops at the same step: the stop is all-reduced).
When node 0 never opens the gang, the job (still queued) fails with the gang's reason.
"""

from __future__ import annotations

import logging
import time

from backend.db import session_scope
from backend.models import Job
from backend.routing import device_type
from backend.settings import Settings
from worker.gang import Gang, GangIncomplete
from worker.multi_rank import RanksFailed, Rendezvous, run_ranks
from worker.runtime import SHUTTING_DOWN, JobRuntime

log = logging.getLogger(__name__)
# A member waits for node 0 a little longer than node 0 waits for the gang, so node 0 decides.
MEMBER_SLACK_S = 30.0


class NodeRuntime:
    """What run_ranks needs from a JobRuntime, for a node that does not own the job row."""

    def __init__(self, rt: JobRuntime, node: int):
        self.rt, self.node = rt, node
        self._checked, self._stop = 0.0, False

    def log(self, msg: str, level: str = "info") -> None:
        self.rt.log(f"[node {self.node}] {msg}", level)

    def should_stop(self) -> bool:
        """A worker shutdown, a cancel, or the job no longer running this attempt (read every second)."""
        if SHUTTING_DOWN.is_set() or self._stop:
            return True
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            with session_scope(self.rt.url) as s:
                job = s.get(Job, self.rt.job_id)
                self._stop = (
                    job is None
                    or bool(job.cancel_requested)
                    or job.attempts != self.rt.attempt
                    or job.status not in ("queued", "running")
                )
        return self._stop


def execute_member(job_id: int, attempt: int, node: int, nodes: int, device: str) -> str:
    from worker.distill_ranks import MODULE, rank_args, resuming
    from worker.handlers import checkpoint_dir, store

    settings = Settings()
    rt = JobRuntime(settings, job_id, attempt, device=device)
    member = NodeRuntime(rt, node)
    gang = Gang.of(settings, job_id, attempt, nodes)
    try:
        endpoint = gang.await_open(settings.gang_timeout_s + MEMBER_SLACK_S, member.should_stop)
    except GangIncomplete as exc:
        rt.refuse(str(exc))  # node 0 never claimed the job: it fails here (a no-op once node 0 runs it)
        return "skipped"
    job = rt.job_row()
    ckpt = checkpoint_dir(rt, job)  # shared by every node: the sharded checkpoint is written by all ranks
    staging = store(rt).staging_dir()  # only global rank 0 (node 0) saves the student; ours stays empty
    args = rank_args(rt, job, out=staging / "out", work=ckpt)
    if resuming(job, ckpt):
        args.append("--resume")
    ranks = int(job.params.get("gpus", 1))
    try:
        run_ranks(
            member,
            ranks,
            MODULE,
            args,
            work=ckpt / f"ranks-node{node}",
            device_type=device_type(device),
            on_record=lambda _record: None,  # rank 0's records are node 0's
            rendezvous=Rendezvous(nodes, node, endpoint, settings.gang_timeout_s),
        )
    except RanksFailed as exc:  # node 0's ranks fail with ours: it fails the job, with its own reason
        member.log(str(exc)[-2000:], "warning")
        return "failed"
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return f"node {node} done"
