"""Launching a script as N gloo ranks with `python -m torch.distributed.run`, for the distributed tests.

Every launch runs in a process group of its own and is SIGKILLed as a group when it ends, so no rank
outlives its test.

The launcher is torchrun's own `main()` (`python -m tests.engine.torchrun_helpers ARGS` is
`python -m torch.distributed.run ARGS`) ending with `os._exit`: the agent's interpreter, torch loaded,
took seconds to tear down after its ranks had finished (about 0.5-1 s on a quiet 2-core machine,
several under load), on every launch, for nothing the tests check."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rank_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a test run under a launcher must not leak its own rank into ours
    return env


TORCHRUN = [sys.executable, "-m", "tests.engine.torchrun_helpers"]  # torch.distributed.run, exiting fast


def launch(target: list[str], *, ranks: int = 2, env: dict | None = None) -> subprocess.Popen:
    """`target`: a script path and its arguments, or ["-m", module, ...]."""
    command = [*TORCHRUN, "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.Popen(
        [*command, "--monitor-interval=0.5", *target],
        cwd=ROOT,
        env=env or rank_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, killed whole below
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and any rank still alive
    except ProcessLookupError:
        pass
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    finally:
        kill_group(proc)


def launch_nodes(target: list[str], *, nodes: int = 2, env: dict | None = None) -> list[subprocess.Popen]:
    """`nodes` torchrun agents of one rank each meeting at a c10d rendezvous: N "nodes" on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test"]
    command = [*TORCHRUN, f"--nnodes={nodes}", "--nproc-per-node=1"]
    return [
        subprocess.Popen(
            [*command, *rendezvous, "--monitor-interval=0.5", *target],
            cwd=ROOT,
            env=env or rank_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(nodes)
    ]


def run(target: list[str], *, ranks: int = 2, env: dict | None = None) -> tuple[int, str]:
    return finish(launch(target, ranks=ranks, env=env))


def exit_fast(main) -> None:
    """Run `main()` and leave with its exit status without the interpreter's teardown: what
    `sys.exit(main())` reports (an exception: its traceback, status 1), output flushed first."""
    import traceback

    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    from torch.distributed.run import main as torchrun_main

    exit_fast(torchrun_main)


def live_ranks(module: str, marker: str) -> list[str]:
    """Command lines of live processes running `module` (ranks and their torchrun agent) that hold
    `marker` (a test's own directory: other tests, and the other test process, run ranks of their own)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if module in cmdline and marker in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found
