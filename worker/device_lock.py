"""A benchmark runs alone on its device: every other heavy job on that device holds it shared.

Speed measured beside other jobs is not the model's speed (a teacher's decode was measured at 45.8 and
22.5 tok/s in two runs while distillations shared the device). So each heavy job holds a per-device
reader/writer lock: shared for ordinary heavy jobs, exclusive for a benchmark. A benchmark waits for the
jobs already on its device, and heavy jobs that arrive meanwhile wait for it. A second "gate" lock keeps
a waiting benchmark from being starved by a stream of new shared holders: a reader passes the gate only
while no benchmark is queued at it.

A benchmark whose device is busy when its message arrives does not wait in its worker's slot: it goes
back on its queue (worker.tasks), so the jobs queued behind it run meanwhile; only after DEFER_LIMIT_S
of that does it wait here, at the gate, where new jobs of the device queue behind it (no starvation).

The locks are `flock`s on files, so the kernel releases them when a job's process ends, however it ends.
They coordinate the workers of one host (the locks live in PRUNESCOPE_DEVICE_LOCK_DIR, default
<data_dir>/locks): a device is a host's resource. Light jobs (inspect) never take them.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from backend.routing import HEAVY_KINDS
from backend.settings import Settings
from worker.runtime import JobRuntime

EXCLUSIVE_KINDS = frozenset({"benchmark"})
POLL_S = 0.2
DEFER_LIMIT_S = 600.0  # a benchmark deferred this long waits for its device in its slot, ahead of new jobs


def lock_dir(settings: Settings) -> Path:
    return Path(settings.device_lock_dir or settings.data_dir / "locks").resolve()


def _lock_files(settings: Settings, device: str) -> tuple[Path, Path]:
    """(gate, use) lock files of `device`."""
    folder = lock_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    name = device.replace(":", "-")
    return folder / f"{name}.gate", folder / f"{name}.lock"


def waiting_message(device: str, exclusive: bool) -> str:
    if exclusive:
        return f"waiting for the other jobs on {device} to finish (a benchmark runs alone)"
    return f"waiting for a benchmark on {device} to finish (benchmarks run alone)"


def busy_for_a_benchmark(settings: Settings, device: str) -> bool:
    """Whether a benchmark would wait for `device` now: a benchmark waits at its gate (held exclusively)
    or a job holds it. Tried without blocking and let go at once: the gate shared, as a reader takes it;
    the device lock exclusively (only that says whether a reader holds it; a reader trying it in that
    instant retries in POLL_S)."""
    gate_path, use_path = _lock_files(settings, device)
    with _open(gate_path) as gate, _open(use_path) as use:
        for fd, mode in ((gate, fcntl.LOCK_SH), (use, fcntl.LOCK_EX)):
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    return False


@contextmanager
def device_use(rt: JobRuntime, kind: str, waited_s: float = 0.0) -> Iterator[dict]:
    """Hold `rt.device` as `kind` needs it; yields what to record in a benchmark's result (`waited_s`:
    how long it was already deferred for its device before it started: worker.tasks)."""
    if kind not in HEAVY_KINDS:
        yield {}
        return
    exclusive = kind in EXCLUSIVE_KINDS
    gate_path, use_path = _lock_files(rt.settings, rt.device)
    waiting = waiting_message(rt.device, exclusive)
    t0 = time.monotonic()
    with ExitStack() as stack:
        gate = stack.enter_context(_open(gate_path))
        _acquire(rt, gate, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, waiting)
        use = stack.enter_context(_open(use_path))
        _acquire(rt, use, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, waiting)
        fcntl.flock(gate, fcntl.LOCK_UN)  # `use` is held now: the gate may let others queue again
        waited = waited_s + time.monotonic() - t0
        yield {"device_exclusive": exclusive, "device_wait_s": round(waited, 3)}


@contextmanager
def _open(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        yield fd
    finally:
        os.close(fd)  # also releases the flock


def _acquire(rt: JobRuntime, fd: int, mode: int, waiting: str) -> None:
    told = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not told:
            rt.progress(0.0, waiting, force=True)
            told = True
        rt.raise_if_cancelled()
        time.sleep(POLL_S)
