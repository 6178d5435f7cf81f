"""A worker's light-job consumer: Celery shares one worker's slots among all its queues, so a light
job (reading a teacher) could wait behind distillations; `prunescope worker` gives the `default` queue
a consumer process of its own, started, watched and stopped here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

PARENT_PID_ENV = "PRUNESCOPE_WORKER_PARENT_PID"


def is_light_consumer() -> bool:
    """This process is a worker's light-job consumer (started by `start`), not a worker."""
    return bool(os.environ.get(PARENT_PID_ENV))


def start(device: str, args) -> subprocess.Popen:
    """Start the consumer of `default` (light jobs) for the worker of `device` run with `args`."""
    from backend.routing import DEFAULT

    command = [sys.executable, "-m", "worker", "worker", "--device", device, "--queues", DEFAULT]
    command += ["--pool", "threads", "--concurrency", str(args.light_slots), "--light-slots", "0"]
    command += ["--loglevel", args.loglevel]
    light = subprocess.Popen(command, env={**os.environ, PARENT_PID_ENV: str(os.getpid())})

    def watch() -> None:
        """This worker's registry entry lists `default` for its light consumer: if that consumer dies,
        stop the whole worker (its supervisor restarts it) rather than leave light jobs unserved."""
        code = light.wait()
        from worker.runtime import SHUTTING_DOWN

        if not SHUTTING_DOWN.wait(2.0):
            print(
                f"prunescope worker: the light-job consumer exited ({code}); stopping this worker",
                file=sys.stderr,
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="light-consumer-watch", daemon=True).start()
    return light


def stop(light: subprocess.Popen | None) -> None:
    if light is None or light.poll() is not None:
        return
    light.send_signal(signal.SIGTERM)
    try:
        light.wait(timeout=30)
    except subprocess.TimeoutExpired:
        light.kill()
        light.wait()


def exit_with_parent() -> None:
    """A light consumer shuts down (warm, as on SIGTERM) when the worker that started it is gone."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()
