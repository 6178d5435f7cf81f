"""`python -m worker.rank_guard [--on-parent-death TERM] MODULE ARGS...`: run MODULE as `__main__`,
signalled (default SIGKILL) by the kernel the moment its parent exits, however the parent ends.

torchrun starts every rank in a session of its own, so killing the launcher's process group leaves the
ranks running: each rank of a job (worker.multi_rank) is started through this guard, killed when the
torchrun agent dies. The agent itself runs through it too, with SIGTERM (it then stops its ranks) when
the job's process dies; setting the signal here rather than in a `preexec_fn` keeps the job process,
which has threads, from running Python between fork and exec.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """The calling process gets `sig` when its parent exits (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))


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
    runpy.run_module(module, run_name="__main__", alter_sys=True)
