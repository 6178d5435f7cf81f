"""A worker's entry in the worker registry (backend.fleet): written when the worker is ready to consume,
refreshed by a daemon thread, deleted when it shuts down. Each refresh also records the device's total
and free memory and the host's RAM (worker.device_memory), the spill disk's free space and the disk tier's
default limit (worker.engine.spill_disk), and its devices (worker.device_inventory). Torch-free on a CPU
worker."""

from __future__ import annotations

import logging
import os
import socket
import threading

from backend import fleet
from backend.models import utcnow
from backend.serialize import ts
from backend.settings import Settings
from worker.device_inventory import device_inventory
from worker.device_memory import device_memory, host_memory
from worker.engine.memplan import spill_limit_bytes
from worker.engine.spill_disk import spill_disk

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, settings: Settings, device: str, queues: list[str]):
        self.settings = settings
        self.record = {
            "hostname": socket.gethostname(),
            "device": device,
            "queues": list(queues),
            "pid": os.getpid(),
            "started_at": ts(utcnow()),
            # what decides an "auto" prune job's mode here (out_of_core.resolve_mode); the API and the
            # dashboard resolve it per worker from this (backend.memcheck.prune_threshold). None: half
            # the host's available RAM (its `host_memory`).
            "out_of_core_threshold_bytes": None
            if settings.out_of_core_threshold_gb is None
            else int(settings.out_of_core_threshold_gb * 1e9),
        }
        self.interval = max(float(settings.worker_refresh_s), 0.1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, **_signal_kwargs) -> None:
        """Publish now (so the API sees the worker as soon as it consumes), then keep refreshing."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._publish()
            self._thread = threading.Thread(target=self._refresh, name="worker-presence", daemon=True)
            self._thread.start()

    def stop(self, **_signal_kwargs) -> None:
        """Leave the registry (idempotent): a stopping worker takes no new jobs."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            fleet.remove(fleet.client_for(self.settings), self.settings.redis_prefix, self.record)
        except Exception as exc:  # the entry then expires on its own
            log.warning("could not leave the worker registry: %s", exc)

    def _publish(self) -> None:
        try:  # the device's total and free memory, fresh at every refresh (the API sizes jobs by it)
            self.record["memory"] = device_memory(self.record["device"])
        except Exception as exc:
            log.warning("could not read the device's memory: %s", exc)
        try:  # host RAM, on a CUDA worker too: out-of-core cuts and pinned activation stores live there
            self.record["host_memory"] = host_memory()
        except Exception as exc:
            log.warning("could not read the host's memory: %s", exc)
        try:  # the disk tier's limit a streamed importance run gets here without its own spill limit
            limit = spill_limit_bytes(self.settings.spill_limit_gb)
            self.record["spill_disk"] = spill_disk(self.settings.spill_dir, limit)
        except Exception as exc:
            log.warning("could not read the spill disk's free space: %s", exc)
        try:  # how many ranks a multi-GPU job may use here, and each GPU's memory
            self.record.update(device_inventory(self.record["device"], self.settings.worker_cpu_ranks))
        except Exception as exc:
            log.warning("could not list the devices: %s", exc)
        try:
            ttl = self.interval * fleet.TTL_INTERVALS
            fleet.publish(fleet.client_for(self.settings), self.settings.redis_prefix, self.record, ttl)
        except Exception as exc:  # Redis briefly away: try again at the next interval
            log.warning("worker registry refresh failed: %s", exc)

    def _refresh(self) -> None:
        while not self._stop.wait(self.interval):
            self._publish()
