"""Every job runs in a process of its own, forked from a server that preloaded torch and the engine.

Why a process per job rather than threads of one worker process: torch's default dtype, intra-op thread
count, global RNG and autocast state are process-wide, and third-party code changes them: transformers
sets the default dtype around every model construction (`local_torch_dtype`), so a bf16 model loading in
one thread made another thread's fp32 evaluation fail (`expected m1 and m2 to have the same dtype`), and
two overlapping loads can even leave the wrong default behind for good. Never touching global state
ourselves cannot stop a library from doing it, so jobs never share a process. The children come from a
multiprocessing forkserver that imported torch, transformers and the engine once (`worker.preload`) and
never ran a job: each job starts from the same untouched state for the price of a fork, not of importing
torch again.

The worker thread that runs the Celery task supervises its child: when the worker shuts down it sends
the child SIGTERM (the child stops at its next step, checkpoints and marks the job failed, resumable);
a child whose worker died (SIGKILL, OOM) exits at once, so the job's heartbeat stops and the API marks
it lost, exactly as when the job ran inside the worker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing import connection
from typing import Any

from worker.runtime import SHUTTING_DOWN

PRELOAD = ["worker.preload"]
TIE = "worker.fork_server_tie"
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)
_start_lock = threading.Lock()
# What multiprocessing reports as a forkserver child's exit code when it cannot read the real one from the
# fork server (popen_forkserver.Popen.poll): the server is gone, not necessarily the child.
FORK_SERVER_LOST = 255


class ChildDied(RuntimeError):
    """The job's process ended without reporting a result (killed, crashed)."""


def warm_up() -> None:
    """Start the fork server now (it imports torch once), so the first job does not wait for it. Called
    from the worker's main thread, which lives as long as the worker: the server is tied to it
    (worker.fork_server_tie). One started later from another thread (a server lost and started again by
    a job's thread, or tests calling run_isolated from pools) is not, since it would end with that thread."""
    from multiprocessing import forkserver

    _context.set_forkserver_preload([TIE, *PRELOAD])
    try:
        forkserver.ensure_running()
    finally:
        _context.set_forkserver_preload(PRELOAD)


def run_isolated(target: Callable[..., Any], *args: Any, poll_s: float = 0.2) -> Any:
    """`target(*args)` in a fresh process; its return value (picklable), or `ChildDied`.

    `target` must be importable by name (a module-level function). While it runs, a worker shutdown
    (SHUTTING_DOWN) is passed on to it as SIGTERM, once.
    """
    reader, writer = _context.Pipe(duplex=False)
    process = _context.Process(
        target=_child_main, args=(target, args, writer), name=f"job-{args[0] if args else target.__name__}"
    )
    with _start_lock:  # one fork request at a time through the server's socket
        process.start()
    writer.close()
    signalled = False
    outcome = None
    try:
        while outcome is None:
            if reader.poll(poll_s):
                try:
                    outcome = reader.recv()
                except EOFError:  # the child exited without sending
                    break
            elif not process.is_alive() and process.exitcode != FORK_SERVER_LOST:
                if reader.poll(0):  # it sent its result just before it exited
                    continue
                break
            # FORK_SERVER_LOST: the fork server, which relays exit codes, died (a SIGTERM to the worker's
            # process group reaches it too); the job's process may still be stopping and about to write
            # its status, so only its end of the pipe closing (EOF above) says it has ended.
            if SHUTTING_DOWN.is_set() and not signalled:
                signalled = True
                _signal(process.pid, signal.SIGTERM)  # the child's handler stops the job at its next step
        process.join(timeout=30)  # the result is in: a child stuck on its way out is killed below
    finally:
        reader.close()
        if process.is_alive():  # stuck after reporting, or this thread itself was interrupted
            process.kill()
            process.join()
    if outcome is None:
        raise ChildDied(_describe_exit(process.exitcode))
    ok, value = outcome
    if not ok:
        raise ChildDied(value)
    return value


def _signal(pid: int | None, signum: int) -> None:
    # By pid, not process.terminate(): that sends nothing once the lost fork server made the exit code 255.
    try:
        if pid is not None:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the job's process was killed by {name}{hint}"
    return f"the job's process exited with code {code} before it finished"


def _child_main(target: Callable[..., Any], args: tuple, writer) -> None:
    # SIGTERM / SIGINT (worker shutdown, Ctrl-C on the terminal's process group) stop the job gracefully.
    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    _exit_with_parent()
    try:
        outcome = (True, target(*args))
    except BaseException as exc:  # report it: the parent must not mistake it for a crash
        outcome = (False, f"{type(exc).__name__}: {exc}")
    writer.send(outcome)
    writer.close()


def _shutdown(_signum, _frame) -> None:
    SHUTTING_DOWN.set()


def _exit_with_parent() -> None:
    """Exit at once, writing nothing more, when the worker that started this child dies."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        connection.wait([parent.sentinel])
        os._exit(70)

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()
