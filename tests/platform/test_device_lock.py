"""The per-device reader/writer lock (worker.device_lock): heavy jobs share a device, a benchmark has it
alone, and a waiting benchmark is not starved by heavy jobs that keep arriving. In one process: each
holder opens the lock files itself, and `flock`s of separate opens exclude each other like processes."""

from __future__ import annotations

import threading
import time

import pytest

from backend.settings import Settings
from worker.device_lock import device_use
from worker.runtime import JobCancelled


class FakeRuntime:
    """What device_use needs of a JobRuntime: settings, device, progress messages, cancellation."""

    def __init__(self, tmp_path):
        self.settings = Settings(data_dir=tmp_path)
        self.device = "cuda:0"
        self.messages: list[str] = []
        self.cancelled = False

    def progress(self, fraction, message=None, *, force=False):
        self.messages.append(message)

    def raise_if_cancelled(self):
        if self.cancelled:
            raise JobCancelled()


def hold(rt, kind, entered: threading.Event, release: threading.Event, out: dict):
    with device_use(rt, kind) as use:
        out["use"] = use
        entered.set()
        release.wait(30)


def start(rt, kind):
    entered, release, out = threading.Event(), threading.Event(), {}
    thread = threading.Thread(target=hold, args=(rt, kind, entered, release, out), daemon=True)
    thread.start()
    return entered, release, out, thread


def test_heavy_jobs_share_a_device_and_a_benchmark_waits_for_them(tmp_path):
    a, b, bench = FakeRuntime(tmp_path), FakeRuntime(tmp_path), FakeRuntime(tmp_path)
    a_in, a_release, _, a_thread = start(a, "distill")
    b_in, b_release, _, b_thread = start(b, "evaluate")
    assert a_in.wait(5) and b_in.wait(5)  # shared: both at once
    bench_in, bench_release, bench_out, bench_thread = start(bench, "benchmark")
    assert not bench_in.wait(0.5)  # not beside them
    assert bench.messages == ["waiting for the other jobs on cuda:0 to finish (a benchmark runs alone)"]

    late = FakeRuntime(tmp_path)
    late_in, late_release, _, late_thread = start(late, "distill")
    assert not late_in.wait(0.5)  # queued behind the waiting benchmark, not ahead of it
    assert late.messages == ["waiting for a benchmark on cuda:0 to finish (benchmarks run alone)"]

    a_release.set()
    b_release.set()
    assert bench_in.wait(5)
    assert not late_in.wait(0.5)  # the benchmark runs alone
    assert bench_out["use"]["device_exclusive"] is True and bench_out["use"]["device_wait_s"] >= 0.5
    bench_release.set()
    assert late_in.wait(5)
    late_release.set()
    for thread in (a_thread, b_thread, bench_thread, late_thread):
        thread.join(5)


def test_light_jobs_take_no_lock_and_a_waiting_job_can_be_cancelled(tmp_path):
    bench = FakeRuntime(tmp_path)
    bench_in, bench_release, _, bench_thread = start(bench, "benchmark")
    assert bench_in.wait(5)
    with device_use(FakeRuntime(tmp_path), "inspect") as use:  # reads a config: not a device user
        assert use == {}
    waiting = FakeRuntime(tmp_path)
    threading.Timer(0.3, lambda: setattr(waiting, "cancelled", True)).start()
    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        with device_use(waiting, "distill"):
            pass
    assert time.monotonic() - t0 < 5
    bench_release.set()
    bench_thread.join(5)


def test_a_benchmark_sees_its_device_busy_while_a_job_holds_it_or_a_benchmark_waits_at_its_gate(tmp_path):
    from worker.device_lock import busy_for_a_benchmark

    settings = FakeRuntime(tmp_path).settings
    assert busy_for_a_benchmark(settings, "cuda:0") is False  # nothing on it
    job = FakeRuntime(tmp_path)
    job_in, job_release, _, job_thread = start(job, "distill")
    assert job_in.wait(5)
    assert busy_for_a_benchmark(settings, "cuda:0") is True
    assert busy_for_a_benchmark(settings, "cuda:1") is False  # another device
    waiting = FakeRuntime(tmp_path)
    bench_in, bench_release, _, bench_thread = start(waiting, "benchmark")  # waits at the gate
    assert not bench_in.wait(0.5)
    job_release.set()
    job_thread.join(5)
    assert bench_in.wait(5)
    assert busy_for_a_benchmark(settings, "cuda:0") is True  # held alone now
    bench_release.set()
    bench_thread.join(5)
    assert busy_for_a_benchmark(settings, "cuda:0") is False
    # The probe let go of both locks: a job takes the device at once.
    after_in, after_release, _, after_thread = start(FakeRuntime(tmp_path), "distill")
    assert after_in.wait(5)
    after_release.set()
    after_thread.join(5)


class QueuedRuntime(FakeRuntime):
    """What worker.tasks._wait_for_device needs of a JobRuntime for a queued job."""

    job_id, attempt = 7, 1

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.notes: list[str] = []

    def note_waiting(self, message):
        self.notes.append(message)
        return "gpu"


def test_a_benchmark_whose_device_is_busy_goes_back_on_its_queue_until_it_waited_long_enough(
    tmp_path, monkeypatch
):
    from worker import tasks
    from worker.device_lock import DEFER_LIMIT_S

    sent = []
    monkeypatch.setattr(tasks, "send_later", lambda args, queue, **kw: sent.append((args, queue, kw)))
    rt = QueuedRuntime(tmp_path)
    assert tasks._wait_for_device(rt, "benchmark", 0.0) is None and sent == []  # free: it runs now
    job_in, job_release, _, job_thread = start(FakeRuntime(tmp_path), "distill")
    assert job_in.wait(5)
    assert tasks._wait_for_device(rt, "evaluate", 0.0) is None  # shares the device: runs now
    began = time.time()
    assert tasks._wait_for_device(rt, "benchmark", 0.0) == "deferred"
    (args, queue, kw) = sent.pop()
    assert args == [7, 1] and queue == "gpu" and kw["after_s"] == tasks.DEVICE_POLL_S
    assert began <= kw["device_wait_since"] <= time.time()  # the first deferral starts its wait
    assert rt.notes == ["waiting for the other jobs on cuda:0 to finish (a benchmark runs alone)"]
    since = time.time() - 5
    assert tasks._wait_for_device(rt, "benchmark", since) == "deferred"
    assert sent.pop()[2]["device_wait_since"] == since  # carried along, not restarted
    # Deferred long enough: it starts, to wait at the gate ahead of new jobs (no starvation).
    assert tasks._wait_for_device(rt, "benchmark", time.time() - DEFER_LIMIT_S) is None and sent == []
    job_release.set()
    job_thread.join(5)
