"""Node i > 0 of a job over several nodes, in a job process of its own (worker.isolation).

It never claims or finishes the job row: node 0 owns it (worker.distill_ranks, worker.importance_ranks,
worker.evaluate_ranks). It waits for node 0 to open the gang (worker.gang), then launches this node's
ranks with torchrun at node 0's rendezvous and supervises them as node 0 supervises its own
(worker.multi_rank: parent-death signals, a stop file): its ranks' output becomes job lines prefixed
`[node i]`, and a cancel or this worker's shutdown reaches its ranks through its own stop file. A stop
of its own (this worker shutting down) is first noted in the gang, so node 0 reports what happened
instead of torchrun's exit code. When node 0 never opens the gang, the job (still queued) fails with the
gang's reason; when the gang's round gave way (worker.gang.GangYielded: to an older gang, or to queued
jobs while the gang's other workers are busy), it just ends and frees its worker.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from backend.db import session_scope
from backend.models import Job
from backend.routing import device_type
from backend.settings import Settings
from worker.engine.roots import OutsideRoots
from worker.gang import Gang, GangIncomplete, GangYielded, timeout_of, worker_id
from worker.multi_rank import RanksFailed, Rendezvous, run_ranks, stop_grace_s
from worker.runtime import SHUTTING_DOWN, JobRuntime

log = logging.getLogger(__name__)
# A member waits for node 0 a little longer than node 0 waits for the gang, so node 0 decides.
MEMBER_SLACK_S = 30.0
WORKER_SHUTTING_DOWN = "worker shutting down; resumable"


class NodeRuntime:
    """What run_ranks needs from a JobRuntime, for a node that does not own the job row."""

    def __init__(self, rt: JobRuntime, node: int, gang: Gang | None = None):
        self.rt, self.node, self.gang = rt, node, gang
        self._checked, self._stop, self._noted = 0.0, False, False

    def log(self, msg: str, level: str = "info") -> None:
        self.rt.log(f"[node {self.node}] {msg}", level)

    def should_stop(self) -> bool:
        """A worker shutdown, a cancel, or the job no longer running this attempt (read every second).
        A shutdown of this worker is noted in the gang (once) before the ranks are told to stop."""
        if SHUTTING_DOWN.is_set():
            if self.gang is not None and not self._noted:
                self._noted = True
                joined = self.gang.members().get(self.node, {})  # the worker as the gang names it
                self.gang.stop_note(self.node, joined.get("worker", worker_id()), WORKER_SHUTTING_DOWN)
            return True
        if self._stop:
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


def node_command(rt: JobRuntime, job: Job, node: int, staging: Path) -> tuple[str, list[str], Path, int]:
    """(module, args, work dir, ranks) of this job's ranks on a node > 0: the same command node 0 runs
    (its outputs go to `staging`, which only global rank 0, on node 0, writes)."""
    ranks = int(job.params.get("gpus", 1))
    if job.kind == "distill":
        from worker.distill_checkpoints import checkpoint_dir
        from worker.distill_ranks import MODULE, rank_args, resuming

        ckpt = checkpoint_dir(rt, job)  # shared by every node: every rank writes its checkpoint shards
        args = rank_args(rt, job, out=staging / "out", work=ckpt)
        if resuming(job, ckpt):
            args.append("--resume")
        return MODULE, args, ckpt / f"ranks-node{node}", ranks
    if job.kind == "importance":
        from worker.importance_ranks import MODULE, rank_args

        return MODULE, rank_args(rt, job, staging / "out"), staging / "ranks", ranks
    if job.kind == "evaluate":
        from worker.evaluate_ranks import MODULE, rank_args

        return MODULE, rank_args(rt, job, staging / "result.json"), staging / "ranks", ranks
    raise RuntimeError(f"a {job.kind} job does not run over several nodes")


def execute_member(job_id: int, attempt: int, node: int, nodes: int, device: str, round: int = 0) -> str:
    from worker.job_io import check_teacher_files, store

    settings = Settings()
    rt = JobRuntime(settings, job_id, attempt, device=device)
    gang = Gang.of(settings, job_id, attempt, nodes, round)
    member = NodeRuntime(rt, node, gang)
    job = rt.job_row()  # its kind and parameters: what every step below needs
    timeout = timeout_of(job.params, settings)
    try:
        endpoint = gang.await_open(timeout + MEMBER_SLACK_S, member.should_stop)
    except GangYielded:  # node 0 gave way and sends its job again: nothing to fail
        return "skipped"
    except GangIncomplete as exc:
        rt.refuse(str(exc))  # node 0 never claimed the job: it fails here (a no-op once node 0 runs it)
        return "skipped"
    try:  # this machine's copy of the teacher's folder: a link out of this worker's roots is not read
        check_teacher_files(rt, job)
    except OutsideRoots as exc:  # node 0's ranks give up waiting for ours, and it reports this note
        gang.stop_note(node, worker_id(), str(exc))
        member.log(str(exc), "error")
        return "failed"
    staging = store(rt).staging_dir()  # only global rank 0 (node 0) writes outputs; ours stays empty
    try:
        module, args, work, ranks = node_command(rt, job, node, staging)
        run_ranks(
            member,
            ranks,
            module,
            args,
            work=work,
            device_type=device_type(device),
            on_record=lambda _record: None,  # rank 0's records are node 0's
            rendezvous=Rendezvous(nodes, node, endpoint, timeout),
            stop_grace_s=stop_grace_s(job.kind),
        )
    except RanksFailed as exc:  # node 0's ranks fail with ours: it fails the job, with its own reason
        member.log(str(exc)[-2000:], "warning")
        return "failed"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"node {node} done"
