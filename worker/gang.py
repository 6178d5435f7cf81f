"""A job over M nodes: a gang of M Celery messages that reserves M workers, then one torchrun each.

The job's M messages (node 0 .. M-1) go to its queue at once (backend.dispatch). A worker that takes
message i joins the gang, a Redis hash `<prefix>prunescope:gangs:<job>:<attempt>`, and holds its slot
(prefetch 1: it takes nothing else meanwhile). Node 0, before it claims the job row, waits until all M
joined within `gang_timeout_s`, then opens the gang with the rendezvous endpoint (its address and a free port), and every
node launches `torchrun --nnodes M --node-rank i --master-addr/--master-port` (a static rendezvous:
node 0's agent hosts the store and global rank 0 is on node 0, so the metrics stay with the process that
owns the job row). Fewer than M within the timeout: the first to give up closes the gang as failed
(one reason, set once), node 0 refuses the job with it (it never started), members that joined return at once, and messages
taken later find the gang closed and are dropped. Nothing ran, so the job stays resumable.

Torch-free: the worker's task thread and the job processes both use it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend import fleet
from backend.settings import Settings

KEY = "prunescope:gangs:"
TTL_S = 7 * 86400
POLL_S = 0.2


class GangIncomplete(RuntimeError):
    """Fewer than M nodes joined within the timeout (or one gave up): the job fails with this reason."""


def worker_id() -> str:
    """This worker: host and the pid of the process that took the message (the Celery worker)."""
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


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

    @classmethod
    def of(cls, settings: Settings, job_id: int, attempt: int, nodes: int) -> Gang:
        return cls(fleet.client_for(settings), f"{settings.redis_prefix}{KEY}{job_id}:{attempt}", nodes)

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

    def state(self) -> tuple[str | None, str | None]:
        """("open", endpoint), ("failed", reason) or (None, None) while forming."""
        state, endpoint, reason = self.client.hmget(self.key, "state", "endpoint", "reason")
        decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
        state = decode(state)
        return state, decode(endpoint if state == "open" else reason)

    # -- waiting ----------------------------------------------------------------------------------

    def gather(self, timeout_s: float, should_stop: Callable[[], bool]) -> dict[int, dict]:
        """Node 0: wait until all M nodes joined; the members. Raises GangIncomplete on timeout (closing
        the gang) or when another node closed it; returns early (incomplete) when `should_stop`."""
        deadline = time.monotonic() + timeout_s
        while True:
            members = self.members()
            state, reason = self.state()
            if state == "failed":
                raise GangIncomplete(reason)
            if len(members) >= self.nodes or should_stop():
                return members
            if time.monotonic() >= deadline:
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


def lead(rt, gang: Gang) -> str:
    """Node 0, in the worker's task thread before the job is claimed: wait for the gang, then open it at
    this node's address and a free port (the endpoint). Raises GangIncomplete (the job is then refused:
    it never started, so it stays resumable); a cancel or this worker's shutdown while it waits closes
    the gang."""
    timeout = rt.settings.gang_timeout_s

    message = f"waiting for {gang.nodes} nodes to join (up to {timeout:.0f} s)"
    last = {"at": 0.0, "gone": False}

    def not_wanted() -> bool:
        """The job left `queued` for this attempt (a cancel); read at most once a second."""
        if time.monotonic() - last["at"] >= 1.0:
            last["at"], last["gone"] = time.monotonic(), rt.note_waiting(message) is None
        return last["gone"]

    from worker.runtime import SHUTTING_DOWN

    gang.gather(timeout, lambda: SHUTTING_DOWN.is_set() or not_wanted())
    last["at"] = 0.0
    if SHUTTING_DOWN.is_set() or not_wanted():
        why = "node 0's worker shut down" if SHUTTING_DOWN.is_set() else "the job was cancelled"
        gang.close(f"nodes: {why} while the gang formed; nothing ran")
        raise GangIncomplete(f"nodes: {why} while the gang formed; nothing ran")
    endpoint = f"{node_address(rt.settings)}:{free_port()}"
    if not gang.open(endpoint):  # a member gave up at the same moment
        raise GangIncomplete(gang.state()[1] or "nodes: the gang was closed")
    return endpoint
