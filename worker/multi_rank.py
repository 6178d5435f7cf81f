"""A job over N ranks on this worker: its process launches `torchrun` as a child and supervises it.

Why the job process stays the only one that talks to the platform: the ranks need no database or broker
access. Rank 0 appends each step's metrics to a JSON-lines file (`--metrics-jsonl`) that this process
tails and forwards through the job's JobRuntime, so progress, metrics, logs and the final status flow
exactly as for a one-process job. A cancel or a worker shutdown creates the stop file every rank polls
(they stop together at the next step, with a checkpoint); ranks still running `stop_grace_s(kind)` later
are killed: a minute for a distillation (its checkpoint to write), a few seconds for the others, which save
nothing on a stop (an evaluation's ranks inside lm-eval building its requests read no stop file).

Nothing outlives the job: the torchrun agent and every rank run through worker.rank_guard (a parent-death
signal), so the agent gets SIGTERM when the job process dies (it then stops its ranks) and each rank is
SIGKILLed when the agent dies; the job process also ends the agent on its way out whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.rank_failures import command_error, failure_reason, whole_lines
from worker.runtime import JobRuntime

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 60.0  # ranks that write a checkpoint as they stop
NOTHING_TO_SAVE_GRACE_S = 5.0  # ranks that save nothing on a stop
POLL_S = 0.5
# How much of the end of the ranks' log a failure is read from: torchrun's failure summary (a few hundred
# bytes a rank) is last; a long run's whole log can be large.
SUMMARY_BYTES = 1 << 20
# The gang has formed when the nodes launch torchrun, but a node's job process can take tens of seconds
# to start on a loaded or freshly started worker (its fork server imports torch first): node 0's store
# waits at least this long for the other agents, whatever the gang's own timeout.
RENDEZVOUS_MIN_S = 60
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RanksFailed(RuntimeError):
    """torchrun ended with an error; the message carries the end of the ranks' output."""


class NodeStopped(RanksFailed):
    """Node 0's ranks ended because another node stopped its own (its worker shutting down): the
    message says which node, on which worker, and why (worker.gang.Gang.stopped_note)."""


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of a job over several nodes meet (worker.gang): this node's place and node 0's
    endpoint. A static rendezvous, so node 0's agent hosts the store and holds global rank 0."""

    nodes: int
    node_rank: int
    endpoint: str  # host:port of node 0
    timeout_s: float

    def torchrun_options(self) -> list[str]:
        host, port = self.endpoint.rsplit(":", 1)
        return [
            f"--nnodes={self.nodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={host}",
            f"--master-port={port}",
            f"--rdzv-conf=timeout={max(RENDEZVOUS_MIN_S, int(self.timeout_s))}",
        ]


def torchrun_command(
    ranks: int, module: str, args: list[str], rendezvous: Rendezvous | None = None
) -> list[str]:
    placement = rendezvous.torchrun_options() if rendezvous else ["--standalone"]
    return [
        sys.executable,
        "-m",
        "worker.rank_guard",
        "--on-parent-death",
        "TERM",  # the agent: SIGTERM when the job's process dies, and it stops its ranks
        "torch.distributed.run",
        *placement,
        f"--nproc-per-node={ranks}",
        "--monitor-interval=0.5",
        "-m",
        "worker.rank_guard",
        module,
        *args,
    ]


def rank_env(device_type: str) -> dict[str, str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    for name in LAUNCHER_ENV:
        env.pop(name, None)
    if device_type == "cpu":  # N gloo ranks share the cores: one intra-op thread each, as torchrun advises
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def stop_grace_s(kind: str) -> float:
    """How long a job's ranks may take to stop once asked (see the module docstring)."""
    return STOP_GRACE_S if kind == "distill" else NOTHING_TO_SAVE_GRACE_S


def run_ranks(
    rt: JobRuntime,
    ranks: int,
    module: str,
    args: list[str],
    *,
    work: Path,
    device_type: str,
    on_record: Callable[[dict], None],
    rendezvous: Rendezvous | None = None,
    stop_grace_s: float = STOP_GRACE_S,
) -> bool:
    """Run `module args` as `ranks` ranks until they end; forward rank 0's records and output lines.

    True when they finished, False when they stopped on request (torchrun then exits 1: a rank's
    "stopped" exit code 3 is a failure to it). Raises RanksFailed when they failed unasked.
    `args` gets `--stop-file` and `--metrics-jsonl` under `work` appended. With `rendezvous` these
    are this node's `ranks` of a job over several nodes (rank 0's records come only on node 0).
    Ranks still running `stop_grace_s` after a stop was asked are ended (`stop_grace_s(kind)`).
    """
    work.mkdir(parents=True, exist_ok=True)
    stop_file, metrics, output = work / "stop", work / "metrics.jsonl", work / "ranks.log"
    for stale in (stop_file, metrics):
        stale.unlink(missing_ok=True)
    command = torchrun_command(
        ranks, module, [*args, "--stop-file", str(stop_file), "--metrics-jsonl", str(metrics)], rendezvous
    )
    where = (
        f" --nnodes={rendezvous.nodes} --node-rank={rendezvous.node_rank} at {rendezvous.endpoint}"
        if rendezvous
        else ""
    )
    rt.log(f"launching {ranks} ranks: torchrun --nproc-per-node={ranks}{where} -m {module}")
    with output.open("wb") as out:
        agent = subprocess.Popen(
            command,
            cwd=ROOT,
            env=rank_env(device_type),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the worker's terminal reaches the job, not the agent
        )
    tails = {metrics: 0, output: 0}
    stop_sent: float | None = None
    try:
        while True:
            ended = agent.poll() is not None
            tails[metrics] = _follow(metrics, tails[metrics], lambda line: on_record(json.loads(line)))
            tails[output] = _follow(output, tails[output], lambda line: rt.log(line[:2000]))
            if ended:
                break
            if stop_sent is None and rt.should_stop():
                stop_file.touch()
                stop_sent = time.monotonic()
                rt.log("stop requested: every rank stops at its next step")
            elif stop_sent is not None and time.monotonic() - stop_sent > stop_grace_s:
                rt.log(f"ranks still running {stop_grace_s:.0f} s after the stop: ending them", "warning")
                _end(agent)
            time.sleep(POLL_S)
    finally:
        _end(agent)
    code = agent.returncode
    if code == 0:
        return True
    if stop_sent is not None:
        return False
    if rendezvous is not None and rendezvous.node_rank == 0:
        note = _stopped_node(rt, rendezvous)
        if note:  # another node stopped on its own: say so, not torchrun's exit code
            rt.log(note, "warning")
            raise NodeStopped(note)
    if rt.should_stop():  # a cancel another node saw first ended the ranks: a stop, not a failure
        return False
    log = _tail(output, SUMMARY_BYTES)
    # First what the command said, then the rank that ended them (torchrun's "root cause" is often one that
    # failed after it), then the output's end.
    head = [line for line in (command_error(log), failure_reason(log)) if line]
    first = "".join(f"{line}\n" for line in head)
    tail = whole_lines(log[-3000:]) if len(log) > 3000 else log
    raise RanksFailed(f"{first}torchrun over {ranks} ranks exited with code {code}:\n{tail}")


def _stopped_node(rt, rendezvous: Rendezvous) -> str | None:
    """What a node that stopped on its own noted in the job's gang (worker.gang), if any."""
    from worker.gang import Gang

    try:
        return Gang.of(rt.settings, rt.job_id, rt.attempt, rendezvous.nodes).stopped_note()
    except Exception:  # Redis unreachable: torchrun's exit code is all there is to report
        return None


def _tail(path: Path, size: int) -> str:
    """The last `size` bytes of `path` as text."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - size))
        return f.read().decode(errors="replace")


def _follow(path: Path, offset: int, handle: Callable[[str], None]) -> int:
    """Hand each complete new line of `path` after `offset` to `handle`; the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        if line.strip():
            handle(line)
    return offset + len(complete)


def _end(agent: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the agent (it stops its ranks), SIGKILL it if it lingers (its guarded ranks die with it)."""
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            agent.kill()
    agent.wait()
