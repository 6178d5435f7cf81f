"""What `prunescope up` needs to run its children like a small init: children that die with it (the
parent-death signal, Linux), a crashed child restarted with exponential back-off, one `up` per data
directory (a lock), and a clear refusal when the API's port is taken. Torch-free."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.cli import CliError

PR_SET_PDEATHSIG = 1
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 30.0
STABLE_S = 60.0  # a child that ran this long had a good run: its back-off starts over
MAX_CRASHES = 6  # quick crashes in a row restarted; at the next one `up` gives up (a child that cannot start)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` asking the kernel to SIGTERM the child when this process dies, however it dies
    (SIGKILL included), so no API, worker or Redis outlives `up`. None where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)  # loaded before the fork
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)

    return preexec


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    crashes: int = 0  # consecutive exits after short runs
    restart_at: float | None = None


class Supervisor:
    """Keeps children running: `tend()` notices an exited child and restarts it after 1, 2, 4 ... 30 s;
    a child that keeps exiting right away ends `up` (CliError)."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.children: dict[str, Child] = {}

    def add(self, name: str, start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        child = self.children[name] = Child(name, start)
        self._launch(child)
        return child.proc

    def proc(self, name: str) -> subprocess.Popen:
        return self.children[name].proc

    def tend(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    try:
                        self._launch(child)
                        self.say(f"the {child.name} process is running again (pid {child.proc.pid})")
                    except Exception as exc:  # e.g. Redis not answering: count it as a crash
                        self._crashed(child, str(exc), time.monotonic())
                continue
            code = child.proc.poll()
            if code is not None:
                self._crashed(child, describe_exit(code), now)

    def _launch(self, child: Child) -> None:
        child.restart_at = None
        child.started = time.monotonic()
        child.proc = child.start()

    def _crashed(self, child: Child, why: str, now: float) -> None:
        child.crashes = 1 if now - child.started >= STABLE_S else child.crashes + 1
        if child.crashes > MAX_CRASHES:
            raise CliError(f"the {child.name} process keeps exiting ({why}); giving up")
        delay = min(FIRST_DELAY_S * 2 ** (child.crashes - 1), MAX_DELAY_S)
        self.say(f"the {child.name} process exited ({why}); restarting it in {delay:g} s")
        child.restart_at = now + delay

    def stop(self, names: list[str], timeout: float = 15.0) -> None:
        """SIGTERM `names` together, then wait (SIGKILL after `timeout`)."""
        procs = [c.proc for n, c in self.children.items() if n in names and c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def lock_data_dir(data_dir: Path):
    """Hold an exclusive lock on `data_dir/up.lock` for as long as the returned file stays open: a second
    `up` on the same data directory refuses instead of sharing (and then stopping) the first one's
    Redis. The kernel drops the lock when this process dies, however it dies."""
    path = data_dir / "up.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise CliError(
            f"another `prunescope up` (pid {pid}) is running on the data directory {data_dir}; "
            "stop it first, or use another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def check_port_free(host: str, port: int) -> None:
    """CliError when something already listens on host:port (uvicorn would fail later, less clearly)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot resolve the host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {port} on {host} is already in use by another program; "
                    "stop it or choose another port with --port"
                ) from None
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
