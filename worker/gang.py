"""A job over M nodes: a gang of M Celery messages that reserves M workers, then one torchrun each.

The job's M messages (node 0 .. M-1) go to its queue at once (backend.dispatch). A worker that takes
message i joins the gang, a Redis hash `<prefix>prunescope:gangs:<job>:<attempt>`, and holds its slot
(prefetch 1: it takes nothing else meanwhile). Node 0, before it claims the job row, waits until all M
joined within the gang timeout (`timeout_of`: the job's `gang_timeout_s`, else the worker's), then
opens the gang with the rendezvous endpoint (its address and a free port), and every node launches
`torchrun --nnodes M --node-rank i --master-addr/--master-port` (a static rendezvous: node 0's agent
hosts the store and global rank 0 is on node 0, so the metrics stay with the process that owns the job
row). Fewer than M within the timeout: the first to give up closes the gang as failed (one reason, set
once), node 0 refuses the job with it (it never started), members that joined return at once, and
messages taken later find the gang closed and are dropped. Nothing ran, so the job stays resumable.

Competing gangs (two `nodes: M` jobs whose node-0 messages reached two workers of the same queue at
once): each leader would hold a worker the other needs until both time out. Every forming gang is listed
per queue with its job attempt's first-lead time (a Redis sorted set); a leader whose gang is still
incomplete `YIELD_AFTER_S` after it began, while an older gang on its queue is forming (its leader alive:
a heartbeat in its hash), yields: its round is closed as "yielded" (members that joined leave without
failing the job, member messages taken later are dropped) and node 0's message is sent again for the
next round, which keeps the attempt's seniority. So at least the oldest gang forms; the others queue.

Busy workers: a gang still incomplete `YIELD_AFTER_S` into a round, while jobs that could use its
leader's worker wait in its queue (their first message, [job, attempt]: single-node jobs or another
gang's node 0), gives way to them too: the round closes as "yielded" ("waiting for 1 busy worker ...")
and node 0's message is sent again with a growing backoff (3, 6, 12, 24, 30 s), so the queued work runs
on that worker while the gang's missing workers finish their own jobs. With nothing else waiting it keeps
holding (giving way would buy nothing). The gang timeout counts from when the attempt began to wait (its
first lead, `<base>:wait`), across rounds, so a gang whose workers never come still fails after
`gang_timeout_s` in all, with the same reason as a single round; a round that begins after that still
waits `LAST_ROUND_S` (its workers may be free by now). Giving way to an older gang restarts the count:
that wait is for the older job, whose gang then holds the workers.

A node > 0 that stops on its own (its worker shutting down) leaves a note in the gang before it stops its
ranks, so node 0 reports that instead of torchrun's exit code (`stopped_note`).

Torch-free: the worker's task thread and the job processes both use it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend import broker, fleet
from backend.settings import Settings

KEY = "prunescope:gangs:"
TTL_S = 7 * 86400
POLL_S = 0.2
YIELD_AFTER_S = 2.0  # a leader waits this long for its own gang before it yields (older gang, busy workers)
YIELD_BACKOFF_S = 3.0  # a gang that gave way tries again this much later (busy workers: doubling per round)
BUSY_BACKOFF_MAX_S = 30.0
BUSY_CHECK_S = 1.0  # how often a leader reads its queue for waiting jobs
LAST_ROUND_S = 5.0  # a round that begins after the gang's timeout still waits this long for its members
BEAT_STALE_S = 15.0  # a forming gang whose leader has not polled for this long is not waited for


class GangIncomplete(RuntimeError):
    """Fewer than M nodes joined within the timeout (or one gave up): the job fails with this reason."""


class GangYielded(GangIncomplete):
    """This round of the gang gave way (to an older forming gang, or to queued jobs while its missing
    workers are busy): node 0's message is sent again `retry_in_s` later (the job is not failed);
    `waiting` is what the job shows meanwhile."""

    def __init__(self, reason: str, retry_in_s: float = YIELD_BACKOFF_S, waiting: str = ""):
        super().__init__(reason)
        self.retry_in_s, self.waiting = retry_in_s, waiting or reason


def worker_id() -> str:
    """This worker: host and the pid of the process that took the message (the Celery worker)."""
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


def timeout_of(params: dict | None, settings: Settings) -> float:
    """How long a job's gang may take to form: its own `gang_timeout_s` (one of its `params`), else this
    worker's PRUNESCOPE_GANG_TIMEOUT_S."""
    return float((params or {}).get("gang_timeout_s") or settings.gang_timeout_s)


def node_address(settings: Settings) -> str:
    """Where other nodes reach this one (PRUNESCOPE_WORKER_ADDRESS, default the host name)."""
    return settings.worker_address or socket.gethostname()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class Gang:
    client: Any
    key: str
    nodes: int
    round: int = 0
    base: str = ""  # the job attempt's key: `base:round` holds the current round, `base:since` seniority
    prefix: str = ""
    job_id: int = 0

    @classmethod
    def of(cls, settings: Settings, job_id: int, attempt: int, nodes: int, round: int | None = None) -> Gang:
        """The gang of a job attempt; its current round (the one node 0 leads) unless `round` is given."""
        client = fleet.client_for(settings)
        base = f"{settings.redis_prefix}{KEY}{job_id}:{attempt}"
        if round is None:
            round = int(client.get(f"{base}:round") or 0)
        key = base if round == 0 else f"{base}:r{round}"
        return cls(client, key, nodes, round, base, settings.redis_prefix, job_id)

    # -- membership -------------------------------------------------------------------------------

    def join(self, node: int, worker: str, address: str) -> str:
        """Take node `node`'s slot for `worker`: "joined"; "closed" when the gang already opened or
        failed, "taken" when the slot has a worker (a redelivered message), "busy" when this worker
        already holds another node of the gang (a gang needs M distinct workers)."""
        if self.state()[0] is not None:
            return "closed"
        if not self.client.hsetnx(self.key, f"worker:{worker}", node):
            return "busy"
        member = json.dumps({"worker": worker, "address": address, "joined": time.time()})
        if not self.client.hsetnx(self.key, f"node:{node}", member):
            self.client.hdel(self.key, f"worker:{worker}")
            return "taken"
        self.client.expire(self.key, TTL_S)
        return "joined"

    def members(self) -> dict[int, dict]:
        raw = self.client.hgetall(self.key)
        found = {}
        for name, value in raw.items():
            name = name.decode() if isinstance(name, bytes) else name
            if name.startswith("node:"):
                found[int(name.split(":", 1)[1])] = json.loads(value)
        return dict(sorted(found.items()))

    def workers(self) -> list[str]:
        return [m["worker"] for m in self.members().values()]

    # -- opening and closing (the first state written wins) -------------------------------------

    def open(self, endpoint: str) -> bool:
        self.client.hset(self.key, "endpoint", endpoint)
        return self._set_state("open")

    def close(self, reason: str) -> bool:
        """Mark the gang failed with `reason`; False when it was already open or closed."""
        self.client.hsetnx(self.key, "reason", reason)
        return self._set_state("failed")

    def _set_state(self, state: str) -> bool:
        done = bool(self.client.hsetnx(self.key, "state", state))
        self.client.expire(self.key, TTL_S)
        return done

    def yield_round(self, reason: str, restart_wait: bool = False) -> bool:
        """Close this round as yielded and make the next one current; False when it opened or failed.
        `restart_wait`: the next round's timeout counts afresh (it gave way to an older gang)."""
        self.client.hsetnx(self.key, "reason", reason)
        if not self._set_state("yielded"):
            return False
        if restart_wait:
            self.client.delete(f"{self.base}:wait")
        self.client.set(f"{self.base}:round", self.round + 1, ex=TTL_S)
        return True

    def wait_began(self) -> float:
        """When this attempt began waiting for its workers (epoch s): its first lead, kept across rounds
        that gave way to busy workers. The gang timeout counts from it."""
        self.client.set(f"{self.base}:wait", time.time(), nx=True, ex=TTL_S)
        return float(self.client.get(f"{self.base}:wait"))

    def stop_note(self, node: int, worker: str, why: str) -> None:
        """Node `node` stops its ranks on its own (`why`): node 0 reports it (stopped_note)."""
        note = json.dumps({"node": node, "worker": worker, "why": why})
        self.client.hsetnx(self.key, f"stopped:{node}", note)
        self.client.expire(self.key, TTL_S)

    def stopped_note(self) -> str | None:
        """What a node that stopped on its own left (the lowest node's), as the job's error; else None."""
        notes = []
        for name, value in self.client.hgetall(self.key).items():
            name = name.decode() if isinstance(name, bytes) else name
            if name.startswith("stopped:"):
                notes.append(json.loads(value))
        if not notes:
            return None
        n = min(notes, key=lambda x: x["node"])
        return f"node {n['node']} (worker {n['worker']}) stopped: {n['why']}"

    def state(self) -> tuple[str | None, str | None]:
        """("open", endpoint), ("failed" or "yielded", reason) or (None, None) while forming."""
        state, endpoint, reason = self.client.hmget(self.key, "state", "endpoint", "reason")
        decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
        state = decode(state)
        return state, decode(endpoint if state == "open" else reason)

    # -- competing gangs (the forming list of a queue) --------------------------------------------

    def forming_key(self, queue: str) -> str:
        return f"{self.prefix}{KEY}forming:{queue}"

    def enlist(self, queue: str) -> float:
        """List this round as forming on `queue`, with the attempt's first-lead time (its seniority)."""
        self.client.set(f"{self.base}:since", time.time(), nx=True, ex=TTL_S)
        since = float(self.client.get(f"{self.base}:since"))
        self.client.hset(self.key, "beat", time.time())
        self.client.zadd(self.forming_key(queue), {self.key: since})
        return since

    def delist(self, queue: str) -> None:
        self.client.zrem(self.forming_key(queue), self.key)

    def older_forming(self, queue: str) -> str | None:
        """The key of an older gang still forming on `queue` with a live leader (stale entries dropped)."""
        key = self.forming_key(queue)
        mine = self.client.zscore(key, self.key)
        if mine is None:
            return None
        for other, score in self.client.zrangebyscore(key, "-inf", mine, withscores=True):
            other = other.decode() if isinstance(other, bytes) else other
            if other == self.key or (score == mine and other > self.key):
                continue
            state, beat = self.client.hmget(other, "state", "beat")
            if state is None and beat is not None and time.time() - float(beat) < BEAT_STALE_S:
                return other
            self.client.zrem(key, other)  # opened, failed, yielded, or its leader is gone
        return None

    # -- busy workers (jobs waiting in the queue for the leader's worker) -------------------------

    def others_waiting(self, queue: str) -> int:
        """Other jobs whose first message ([job, attempt]) waits in `queue`: work the leader's worker
        could run while this gang's missing workers are busy. Messages that workers sent for gangs
        (members, a node 0 sent again) are not counted, so two waiting gangs do not trade a worker back
        and forth; gangs competing for workers are settled by seniority (`older_forming`)."""
        queued = broker.queued_run_jobs(self.client, self.prefix, queue)
        return sum(1 for args in queued if len(args) == 2 and args[0] != self.job_id)

    def _busy_yield(self, queue: str, missing: int, retry_cap_s: float) -> GangYielded | None:
        """Give this round way to the jobs waiting in `queue` (None when none wait, or it opened or
        failed meanwhile)."""
        others = self.others_waiting(queue)
        if not others:
            return None
        reason = (
            f"nodes: waiting for {missing} busy worker{'s' if missing > 1 else ''} on the {queue!r} queue "
            f"while {others} other job{'s' if others > 1 else ''} wait{'' if others > 1 else 's'} there"
        )
        if not self.yield_round(reason):
            return None
        retry = min(BUSY_BACKOFF_MAX_S, YIELD_BACKOFF_S * 2 ** min(self.round, 4), max(retry_cap_s, 0.0))
        waiting = f"{reason}; they run on node 0's worker meanwhile, the gang forms when its workers free up"
        return GangYielded(reason, retry, waiting)

    # -- waiting ----------------------------------------------------------------------------------

    def gather(
        self,
        timeout_s: float,
        should_stop: Callable[[], bool],
        queue: str | None = None,
        yield_after_s: float = YIELD_AFTER_S,
        last_round_s: float = LAST_ROUND_S,
    ) -> dict[int, dict]:
        """Node 0: wait until all M nodes joined; the members. Raises GangIncomplete on timeout (closing
        the gang) or when another node closed it; returns early (incomplete) when `should_stop`. With
        `queue`, the timeout counts from when the attempt began to wait (`wait_began`, across rounds;
        this round still waits at least `last_round_s`), and it raises GangYielded after
        `yield_after_s` when an older gang on it is forming, or when jobs wait there while the missing
        workers are busy."""
        began = time.monotonic()
        deadline = began + timeout_s
        if queue is not None:
            waited = max(time.time() - self.wait_began(), 0.0)
            deadline = began + max(timeout_s - waited, min(last_round_s, timeout_s))
        checked = began
        while True:
            members = self.members()
            state, reason = self.state()
            if state == "failed":
                raise GangIncomplete(reason)
            if len(members) >= self.nodes or should_stop():
                return members
            now = time.monotonic()
            if queue is not None and now < deadline:
                self.client.hset(self.key, "beat", time.time())
                older = self.older_forming(queue) if now - began >= yield_after_s else None
                if older is not None:
                    job = older.removeprefix(f"{self.prefix}{KEY}").split(":")[0]
                    reason = f"nodes: an older gang (job {job}) is forming on the {queue!r} queue"
                    if self.yield_round(reason, restart_wait=True):
                        raise GangYielded(reason, waiting=f"{reason}; waiting for it to form")
                    continue  # opened or closed meanwhile: read it again
                if now - began >= yield_after_s and now - checked >= BUSY_CHECK_S:
                    checked = now
                    gave_way = self._busy_yield(queue, self.nodes - len(members), deadline - now)
                    if gave_way is not None:
                        raise gave_way
                    if self.state()[0] is not None:
                        continue  # opened or closed meanwhile: read it again
            if now >= deadline:
                reason = (
                    f"nodes: only {len(members)} of {self.nodes} nodes joined within {timeout_s:.0f} s "
                    f"({', '.join(m['worker'] for m in members.values()) or 'none'}); nothing ran. Start "
                    f"more workers on the job's queue, or resume with fewer nodes"
                )
                if self.close(reason):
                    raise GangIncomplete(reason)
                continue  # opened or closed meanwhile: read it again
            time.sleep(POLL_S)

    def await_open(self, timeout_s: float, should_stop: Callable[[], bool]) -> str:
        """A member: the endpoint once node 0 opens the gang. Raises GangIncomplete when it is closed,
        or when node 0 did not open it within the timeout (closing it, so a late node 0 fails the job)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state, detail = self.state()
            if state == "open":
                return detail
            if state == "yielded":
                raise GangYielded(detail)
            if state == "failed":
                raise GangIncomplete(detail)
            if should_stop():
                raise GangIncomplete("stopped while the gang formed")
            if time.monotonic() >= deadline:
                self.close(
                    f"nodes: the gang of {self.nodes} did not start within {timeout_s:.0f} s "
                    f"(joined: {', '.join(self.workers()) or 'none'}); nothing ran"
                )
                continue
            time.sleep(POLL_S)


def lead(rt, gang: Gang, timeout_s: float, queue: str | None = None) -> str:
    """Node 0, in the worker's task thread before the job is claimed: wait up to `timeout_s` (`timeout_of`)
    for the gang, then open it at this node's address and a free port (the endpoint). Raises
    GangIncomplete (the job is then refused: it never started, so it stays resumable); a cancel or this
    worker's shutdown while it waits closes the gang. With `queue`, raises GangYielded when it gives way
    to an older forming gang there (the caller sends node 0's message again for `gang.round + 1`)."""
    if queue is not None:
        gang.enlist(queue)
    try:
        return _lead(rt, gang, timeout_s, queue)
    finally:
        if queue is not None:
            gang.delist(queue)


def _lead(rt, gang: Gang, timeout: float, queue: str | None) -> str:
    message = f"waiting for {gang.nodes} nodes to join (up to {timeout:.0f} s)"
    last = {"at": 0.0, "gone": False}

    def not_wanted() -> bool:
        """The job left `queued` for this attempt (a cancel); read at most once a second."""
        if time.monotonic() - last["at"] >= 1.0:
            last["at"], last["gone"] = time.monotonic(), rt.note_waiting(message) is None
        return last["gone"]

    from worker.runtime import SHUTTING_DOWN

    gang.gather(timeout, lambda: SHUTTING_DOWN.is_set() or not_wanted(), queue)
    last["at"] = 0.0
    if SHUTTING_DOWN.is_set() or not_wanted():
        why = "node 0's worker shut down" if SHUTTING_DOWN.is_set() else "the job was cancelled"
        gang.close(f"nodes: {why} while the gang formed; nothing ran")
        raise GangIncomplete(f"nodes: {why} while the gang formed; nothing ran")
    endpoint = f"{node_address(rt.settings)}:{free_port()}"
    if not gang.open(endpoint):  # a member gave up at the same moment
        raise GangIncomplete(gang.state()[1] or "nodes: the gang was closed")
    return endpoint


def opened(rt, job_id: int, nodes: int):
    """Node 0's job process: (Rendezvous, workers) of the gang its task formed and opened (`lead`).
    The job's log and row name every node's worker."""
    from backend.db import session_scope
    from backend.models import Job
    from worker.multi_rank import Rendezvous

    gang = Gang.of(rt.settings, job_id, rt.attempt, nodes)
    state, endpoint = gang.state()
    if state != "open":
        raise GangIncomplete(endpoint or "nodes: the job's gang was not formed")
    members = gang.members()
    workers = [m["worker"] for m in members.values()]
    rt.log(
        f"gang of {nodes} nodes: "
        + ", ".join(f"node {i} {m['worker']}" for i, m in members.items())
        + f"; rendezvous at {endpoint}"
    )
    with session_scope(rt.url) as s:
        job = s.get(Job, job_id)
        job.worker = ", ".join(workers)[:200]
        timeout = timeout_of(job.params, rt.settings)
    return Rendezvous(nodes, 0, endpoint, timeout), workers
