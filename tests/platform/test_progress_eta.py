"""A job's ETA comes from its current rate: per phase, and after a resume from the rate since the resume
(issue 13: a resumed distillation promised 1m18s for ~10 minutes of work)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.db import session_scope
from backend.models import Event, Job
from tests.conftest import settings_from
from worker.eta import RateEta
from worker.runtime import JobRuntime


def test_rate_eta_measures_the_current_pace():
    eta = RateEta(window_s=60)
    assert eta.update(0.0, 0.0) is None  # one point: no rate yet
    assert eta.update(10.0, 0.1) == pytest.approx(90.0)  # 1% a second, 90% left
    # The pace halves: within one window the ETA follows it (old points leave the window).
    for t in range(20, 200, 10):
        left = eta.update(float(t), 0.1 + (t - 10) * 0.0005)
    assert left == pytest.approx((1 - (0.1 + 180 * 0.0005)) / 0.0005, rel=1e-6)  # t = 190


def test_rate_eta_restarts_per_phase_and_when_progress_goes_back():
    eta = RateEta()
    eta.update(0.0, 0.0)
    eta.update(50.0, 0.05)  # a slow model load: 5% in 50 s
    eta.restart()  # calibration begins
    eta.update(50.0, 0.05)
    assert eta.update(52.0, 0.25) == pytest.approx(7.5)  # 10%/s from here on, not 0.1%/s
    assert eta.update(53.0, 0.1) is None  # backwards: a retried phase, measured anew


def test_a_resumed_job_estimates_from_the_rate_since_the_resume(api_env):
    settings = settings_from(api_env)
    url = settings.resolved_database_url
    with session_scope(url) as s:
        job = Job(kind="distill", params={}, queue="cpu")
        s.add(job)
        s.flush()
        jid = job.id
    clock = {"t": 1000.0}
    rt = JobRuntime(settings, jid, attempt=1)
    rt._clock = lambda: clock["t"]
    assert rt.claim() is not None
    rt.progress(0.0, "loading models", force=True)
    clock["t"] += 40.0  # loading took 40 s; the checkpoint was at step 150 of 200
    rt.progress(151 / 200, "step 151/200", phase="training")
    assert rt.job_row().eta_s is None  # one training point: the rate is not known yet
    clock["t"] += 10.0  # 10 steps in 10 s: 39 steps left -> 39 s
    rt.progress(161 / 200, "step 161/200", phase="training")
    row = rt.job_row()
    assert row.eta_s == pytest.approx(39.0)
    # The old rule (elapsed since the process started x (1 - f) / f) said 50 x 0.195 / 0.805 = 12 s.
    assert row.message == "step 161/200" and row.progress == pytest.approx(0.805)
    rt.finish("succeeded", result={})
    with session_scope(url) as s:
        logs = s.scalars(select(Event).where(Event.job_id == jid, Event.type == "log")).all()
        assert [e.data["msg"] for e in logs] == ["loading models"]  # a phase is logged once, steps are not
