"""Every job's log panel shows the worker's Python log (worker.joblog) and the job's phases with their
own progress (issue 13: "the log panel is empty for evaluations"; "importance sat at 0% for ~50 s")."""

from __future__ import annotations

import logging
import re
import warnings

from tests.platform.helpers import make_dataset
from worker.joblog import JobLogHandler, job_log


def test_the_handler_sends_records_rate_limited_and_counts_what_it_drops():
    sent: list[tuple[str, str]] = []
    clock = {"t": 0.0}
    handler = JobLogHandler(
        lambda m, lvl: sent.append((m, lvl)), burst=3, per_s=1.0, clock=lambda: clock["t"]
    )
    logger = logging.getLogger("worker.engine.test_joblog")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        for i in range(10):  # a burst: three pass, seven are dropped
            logger.info("line %d", i)
        assert sent == [(f"worker.engine.test_joblog: line {i}", "info") for i in range(3)]
        clock["t"] += 2.0  # two seconds: two more tokens; the drop is reported first
        logger.warning("later")
        assert sent[3:] == [
            ("(7 log lines skipped: more than 1 a second)", "warning"),
            ("worker.engine.test_joblog: later", "warning"),
        ]
    finally:
        logger.removeHandler(handler)


def test_plumbing_loggers_pass_only_warnings_and_the_runtime_never():
    sent = []
    handler = JobLogHandler(lambda m, lvl: sent.append(m))
    for name, level, kept in [
        ("sqlalchemy.engine", logging.INFO, False),
        ("sqlalchemy.engine", logging.WARNING, True),
        ("worker.runtime", logging.WARNING, False),  # it writes the events: a failure there would loop
        ("lm_eval.evaluator", logging.INFO, True),
    ]:
        record = logging.LogRecord(name, level, __file__, 1, "m", None, None)
        assert bool(handler.filter(record)) is kept, name


def test_job_log_captures_warnings_and_restores_the_root_logger():
    sent = []
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with job_log(lambda m, lvl: sent.append((m, lvl))):
        logging.getLogger("worker.engine.x").info("visible at INFO")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    assert ("worker.engine.x: visible at INFO", "info") in sent
    assert any("a library's warning" in m and lvl == "warning" for m, lvl in sent)
    assert (root.level, list(root.handlers)) == before


def test_a_jobs_log_has_the_workers_python_log_and_its_phases(live_app):
    api = live_app.api
    teacher = api.post("/teachers", json={"name": "log-tiny", "source": str(live_app.teacher_dir)}).json()
    assert live_app.wait_job(teacher["job_id"])["status"] == "succeeded"
    data = make_dataset(live_app, documents=40)
    run = api.post(
        "/importance-runs",
        json={
            "teacher_id": teacher["id"],
            "dataset_id": data["id"],
            "samples": 8,
            "seq_len": 32,
            "batch_size": 4,
        },
    )
    assert run.status_code == 201, run.text
    job = live_app.wait_job(run.json()["job_id"])
    assert job["status"] == "succeeded", job
    lines = api.get(f"/jobs/{job['id']}/logs").json()
    msgs = [line["msg"] for line in lines]
    # The engine's own log record, through the job process's handler, not a progress message.
    loaded = [m for m in msgs if m.startswith("worker.engine.loading: loaded ")]
    assert len(loaded) == 1 and "parameters" in loaded[0], msgs
    # Each phase once, in order: loading, tokenising, calibration (with its own count), saving.
    phases = [m for m in msgs if m.startswith(("loading model", "tokenising", "calibration", "saving"))]
    assert [p.split(":")[0] for p in phases] == [
        "loading model",
        "tokenising the calibration data",
        "calibration",
        "saving the scores",
    ], phases
    assert phases[2] == "calibration: 0/8 samples (forward + BI, drop, block k=2 scans)"
    # The last line says how it ended (the log stopped at "saving the scores"; outside UI audit 25).
    assert re.fullmatch(r"succeeded after \d+m \d\ds", msgs[-1]), msgs[-1]

    # An evaluation, which has no training loop, logs the worker's lines too.
    r = api.post(
        "/jobs",
        json={"kind": "evaluate", "teacher_id": teacher["id"], "params": {"max_documents": 4}},
    )
    assert r.status_code == 201, r.text
    assert live_app.wait_job(r.json()["id"])["status"] == "succeeded"
    evaluation = [line["msg"] for line in api.get(f"/jobs/{r.json()['id']}/logs").json()]
    assert any(m.startswith("worker.engine.loading: loaded ") for m in evaluation), evaluation
    assert "perplexity: 0 of 4 documents" in evaluation  # its scoring phase, with its own count

    # The planner's preview: two passes (teacher, masked teacher), each a phase with its own count.
    plan = api.post(
        "/plans", json={"teacher_id": teacher["id"], "name": "log-plan", "plan": {"drop_layers": [3]}}
    ).json()
    preview = api.post(f"/plans/{plan['id']}/preview", json={"samples": 4, "seq_len": 32})
    assert preview.status_code == 202, preview.text
    assert live_app.wait_job(preview.json()["id"])["status"] == "succeeded"
    said = [line["msg"] for line in api.get(f"/jobs/{preview.json()['id']}/logs").json()]
    assert said.index("teacher perplexity: starting") < said.index("masked perplexity: starting"), said
