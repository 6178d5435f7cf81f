"""`python -m worker.rank_guard MODULE ARGS...`: run MODULE as `__main__`, killed when its launcher dies.

torchrun starts every rank in a session of its own, so killing the launcher's process group leaves the
ranks running. Each rank of a job (worker.multi_rank) is started through this guard instead, which asks
the kernel to SIGKILL it the moment its parent (the torchrun agent) exits, however the agent ends.
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
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
