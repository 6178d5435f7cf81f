"""A job's ETA comes from its current rate: per phase, and after a resume from the rate since the resume
(issue 13: a resumed distillation promised 1m18s for ~10 minutes of work)."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from backend.db import session_scope
from backend.models import Event, Job, Teacher
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
        msgs = [e.data["msg"] for e in logs]
        assert msgs[:-1] == ["loading models"]  # a phase is logged once, steps are not
        assert msgs[-1].startswith("succeeded after ")  # then how the attempt ended


def _job(url: str, kind: str, params: dict, teacher_id: int | None = None) -> int:
    with session_scope(url) as s:
        job = Job(kind=kind, params=params, queue="cpu", teacher_id=teacher_id)
        s.add(job)
        s.flush()
        return job.id


def _reports(url: str, jid: int, type_: str = "status") -> list[dict]:
    with session_scope(url) as s:
        events = s.scalars(select(Event).where(Event.job_id == jid, Event.type == type_).order_by(Event.id))
        return [e.data for e in events]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the job's own events: one DB is enough
def test_load_benchmark_and_lm_eval_progress_carry_their_counts(api_env, tiny_teacher_dir):
    """A benchmark job in process (the handler, the engine, the runtime's events; a clock ticking 1 s a
    reading so every report is written): loading k/N tensors with the load's own time left and no job
    ETA, then k/N runs with the ETA at the runs' rate; lm-eval's calls k/N requests with their tasks."""
    from worker.handlers.measure_jobs import LmEvalCount, run_benchmark

    settings = settings_from(api_env)
    url = settings.resolved_database_url
    with session_scope(url) as s:
        teacher = Teacher(name="tiny", source=str(tiny_teacher_dir), status="ready")
        s.add(teacher)
        s.flush()
        teacher_id = teacher.id
    params = {"batch_size": 1, "seq_len": 8, "new_tokens": 2, "repeats": 2}
    jid = _job(url, "benchmark", params, teacher_id)
    rt = JobRuntime(settings, jid, attempt=1)
    ticks = itertools.count(1000.0)
    rt._clock = lambda: next(ticks)
    job = rt.claim()
    rt.finish("succeeded", result=run_benchmark(rt, job))
    said = [(r["message"], r["progress"], r["eta_s"]) for r in _reports(url, jid)]
    loading = [r for r in said if r[0].startswith("loading teacher weights: ")]
    assert [m.split(": ")[1].split(",")[0] for m, _, _ in loading] == [f"{k}/39 tensors" for k in range(40)]
    assert all(eta is None for _, _, eta in loading)  # the read's pace says nothing of the job's
    assert loading[5][0].endswith("s left") and loading[-1][1] == pytest.approx(0.05)
    runs = [r for r in said if r[0].startswith("benchmark: ")]
    assert [m for m, _, _ in runs] == [
        "benchmark: 0/3 runs (starting)",
        "benchmark: 1/3 runs (batch 1: warm-up 1/1)",
        "benchmark: 2/3 runs (batch 1: timed round 1/2)",
        "benchmark: 3/3 runs (batch 1: timed round 2/2)",
    ]
    assert runs[0][2] is None  # one point of the phase: no rate yet
    for _, progress, eta in runs[1:]:  # a run a second, 0.3 of the bar each: the rest at that pace
        assert eta == pytest.approx((1 - progress) / 0.3)
    logged = [e["msg"] for e in _reports(url, jid, "log")]
    assert "benchmark: 0/3 runs (starting)" in logged  # the phase's first line, once in the job's log

    from worker.engine.evaluation.lm_eval_runner import RequestProgress

    jid = _job(url, "evaluate", {})
    rt = JobRuntime(settings, jid, attempt=1)
    ticks = itertools.count(1000.0)
    rt._clock = lambda: next(ticks)
    rt.claim()
    count = LmEvalCount(rt, ["cloze", "rolling"], (0.5, 0.95))
    for k in range(5):  # call 1 of (at most) 2: the first half of the bar's lm-eval share
        count(RequestProgress(1, "loglikelihood", k, 4, "requests", 4, ("cloze",)))
    for k in range(0, 7, 2):
        count(RequestProgress(2, "loglikelihood_rolling", k, 6, "windows", 2, ("rolling",)))
    rt.finish("succeeded", result={})
    said = [(r["message"], r["progress"], r["eta_s"]) for r in _reports(url, jid)]
    said = [r for r in said if (r[0] or "").startswith("lm-eval")]
    assert len(said) == 9 and said[2] == (
        "lm-eval loglikelihood: 2/4 requests (cloze)",
        pytest.approx(0.6125),
        pytest.approx((1 - 0.6125) / 0.05625),  # its own pace: 0.225 / 4 a second
    )
    assert said[4][:2] == ("lm-eval loglikelihood: 4/4 requests (cloze)", pytest.approx(0.725))
    assert said[5] == (
        "lm-eval loglikelihood_rolling: 0/6 windows of 2 documents (rolling)",
        pytest.approx(0.725),
        None,
    )
    assert said[8][:2] == (
        "lm-eval loglikelihood_rolling: 6/6 windows of 2 documents (rolling)",
        pytest.approx(0.95),
    )


def test_an_importance_run_mirrors_its_jobs_message_and_eta(client, api_env):
    """The teachers page polls GET /importance-runs every 4 s while a run runs and redraws the progress
    cells from it: without the job's message and ETA there, what the job stream had just shown under
    the bar ("50% · ETA 6s · calibration: 4/8 samples") fell back to a bare "50%" at every poll."""
    from backend.models import Dataset, ImportanceRun

    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready")
        dataset = Dataset(name="d", source="demo")
        s.add_all([teacher, dataset])
        s.flush()
        run = ImportanceRun(teacher_id=teacher.id, dataset_id=dataset.id, params={})
        s.add(run)
        s.flush()
        job = Job(
            kind="importance", params={}, status="running", teacher_id=teacher.id, importance_run_id=run.id
        )
        job.progress, job.eta_s, job.message = 0.5, 6.0, "calibration: 4/8 samples"
        s.add(job)
        s.flush()
        run.job_id = job.id
        ids = (teacher.id, run.id)
    (listed,) = client.get(f"/api/v1/importance-runs?teacher_id={ids[0]}").json()
    one = client.get(f"/api/v1/importance-runs/{ids[1]}").json()
    for shown in (listed, one):
        assert (shown["status"], shown["progress"], shown["eta_s"]) == ("running", 0.5, 6.0), shown
        assert shown["message"] == "calibration: 4/8 samples", shown
