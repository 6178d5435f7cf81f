"""`python -m worker.rank_guard [--on-parent-death TERM] MODULE ARGS...`: run MODULE as `__main__`,
signalled (default SIGKILL) by the kernel the moment its parent exits, however the parent ends.

torchrun starts every rank in a session of its own, so killing the launcher's process group leaves the
ranks running: each rank of a job (worker.multi_rank) is started through this guard, killed when the
torchrun agent dies. The agent itself runs through it too, with SIGTERM (it then stops its ranks) when
the job's process dies; setting the signal here rather than in a `preexec_fn` keeps the job process,
which has threads, from running Python between fork and exec.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import runpy
import signal
import sys
import traceback

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """The calling process gets `sig` when its parent exits (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))


def run_then_exit(module: str) -> None:
    """Run `module` as `__main__`, then exit as the interpreter would (a traceback and 1 for an error,
    SystemExit's code) after the atexit handlers and flushing, but without tearing the interpreter
    down: with torch and transformers loaded that teardown costs seconds per process, and a job's ranks
    and their agent all pay it at the end of every multi-rank job."""
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the launcher died before the guard was set
        os._exit(1)
    args = sys.argv[1:]
    if args[:1] == ["--on-parent-death"]:
        die_with_parent(signal.Signals["SIG" + args[1]])
        args = args[2:]
    module, sys.argv = args[0], args
    run_then_exit(module)
