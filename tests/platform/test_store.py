"""The store and job runtime on SQLite and PostgreSQL: job claim (never twice), metric points unique per
(job, metric, step), replayed steps skipped, status transitions with timestamps, event ordering, the
lost-worker reaper, and the artifact store's all-or-nothing writes (local and fsspec)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backend.artifacts import ArtifactStore
from backend.db import session_scope
from backend.lifecycle import reap
from backend.models import Event, Job, MetricPoint, utcnow
from tests.conftest import settings_from
from worker.runtime import JobRuntime


def new_job(url: str, **fields) -> int:
    with session_scope(url) as s:
        job = Job(kind="distill", params={}, queue="cpu", **fields)
        s.add(job)
        s.flush()
        return job.id


def test_claim_metrics_and_finish(api_env):
    settings = settings_from(api_env)
    url = settings.resolved_database_url
    jid = new_job(url)
    assert JobRuntime(settings, jid, attempt=2).claim() is None  # a message for another attempt
    rt = JobRuntime(settings, jid, attempt=1)
    job = rt.claim()
    assert job.status == "running" and job.started_at is not None and job.device == "cpu"
    assert JobRuntime(settings, jid, attempt=1).claim() is None  # a redelivered duplicate

    assert rt.metrics({"step": 1, "tokens": 64, "kd_loss": 2.5, "lr": 1e-4, "phase": "train"}) is True
    assert rt.metrics({"step": 2, "tokens": 128, "kd_loss": 2.25, "lr": 1e-4}) is True
    assert (
        rt.metrics({"step": 2, "tokens": 128, "kd_loss": 9.0, "lr": 1e-4}) is False
    )  # replayed step: kept as is
    assert rt.metrics({"step": 2, "val_loss": 3.0}) is True  # another metric at the same step is new
    rt.progress(0.5, "half", force=True)
    rt.finish("succeeded", result={"ok": True})

    with session_scope(url) as s:
        points = s.execute(
            select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.job_id == jid)
            .order_by(MetricPoint.name, MetricPoint.step)
        ).all()
        assert [tuple(p) for p in points] == [
            ("kd_loss", 1, 2.5),
            ("kd_loss", 2, 2.25),
            ("lr", 1, 1e-4),
            ("lr", 2, 1e-4),
            ("val_loss", 2, 3.0),
        ]
        job = s.get(Job, jid)
        assert job.status == "succeeded" and job.progress == 1.0 and job.finished_at >= job.started_at
        events = s.scalars(select(Event).where(Event.job_id == jid).order_by(Event.id)).all()
        # The forced progress message ("half", a phase) is also a log line, right after its status; the
        # last line says how the attempt ended, after its status.
        assert [e.type for e in events] == [
            "status",
            "metric",
            "metric",
            "metric",
            "status",
            "log",
            "status",
            "log",
        ]
        logged = [e.data["msg"] for e in events if e.type == "log"]
        assert logged[0] == "half" and logged[1].startswith("succeeded after 0m ")
        assert [e.data.get("status") for e in events if e.type == "status"] == [
            "running",
            "running",
            "succeeded",
        ]
        # the database itself refuses a duplicate (job, metric, step)
        s.add(MetricPoint(job_id=jid, name="kd_loss", step=1, value=0.0))
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()


def test_reaper_marks_lost_jobs_failed_and_resumable(api_env):
    url = settings_from(api_env).resolved_database_url
    old = utcnow() - timedelta(seconds=120)
    lost = new_job(
        url, status="running", heartbeat_at=old, checkpoint="/ck", checkpoint_step=40, worker="w1:cpu"
    )
    lost_plain = new_job(url, status="running", heartbeat_at=old)
    alive = new_job(url, status="running", heartbeat_at=utcnow())
    with session_scope(url) as s:
        reaped = {j.id for j in reap(s, timeout_s=30)}
    assert reaped == {lost, lost_plain}
    with session_scope(url) as s:
        a, b, c = s.get(Job, lost), s.get(Job, lost_plain), s.get(Job, alive)
        assert a.status == b.status == "failed" and c.status == "running"
        assert "worker lost" in a.error and "w1:cpu" in a.error and "step 40" in a.error
        from backend.serialize import is_resumable

        assert is_resumable(a) and not is_resumable(b)


def test_artifact_store_is_all_or_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    staging = store.staging_dir()
    (staging / "weights.bin").write_bytes(b"v1")
    store.put_dir(staging, "students/1/model")
    assert (store.local_dir("students/1/model") / "weights.bin").read_bytes() == b"v1"
    staging = store.staging_dir()
    (staging / "weights.bin").write_bytes(b"v2")
    store.put_dir(staging, "students/1/model")  # replaced whole
    assert (store.local_dir("students/1/model") / "weights.bin").read_bytes() == b"v2"
    assert not store.exists("students/2/model")  # an unfinished staging dir is invisible
    store.staging_dir()
    assert not store.exists("students/2/model")
    for bad in ("../x", "a/../../b", ".tmp/x", ""):
        with pytest.raises(ValueError):
            store.put_dir(staging, bad)


def test_fsspec_store_needs_the_complete_marker(tmp_path):
    store = ArtifactStore("memory://prunescope-test")
    staging = tmp_path / "stage"
    staging.mkdir()
    (staging / "a.txt").write_text("hello")
    store.fs.put(str(staging), f"{store.base}/half/", recursive=True)  # uploaded, but never completed
    assert not store.exists("half")
    store.put_dir(staging, "importance/1")
    assert store.exists("importance/1")
    assert (store.local_dir("importance/1", cache=tmp_path / "cache") / "a.txt").read_text() == "hello"


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if line and not line.startswith(":") and ": " in line
        )
        if "data" in fields:
            events.append(
                {
                    "id": int(fields["id"]) if "id" in fields else None,
                    "event": fields.get("event"),
                    "data": fields["data"],
                }
            )
    return events


def test_event_stream_replay_and_resume_on_each_database(client, api_env):
    """The SSE cursor on SQLite and PostgreSQL: a finished job replays in order and ends; resuming from
    any Last-Event-ID returns exactly the rest."""
    settings = settings_from(api_env)
    jid = new_job(settings.resolved_database_url)
    rt = JobRuntime(settings, jid, attempt=1)
    rt.claim()
    for step in range(1, 11):
        rt.metrics({"step": step, "kd_loss": 1.0 / step})
    rt.log("halfway")
    rt.finish("succeeded", result={})
    full = parse_sse(client.get(f"/api/v1/jobs/{jid}/events").text)
    assert full[-1]["event"] == "end" and '"succeeded"' in full[-1]["data"]
    ids = [e["id"] for e in full[:-1]]
    assert (
        ids == sorted(set(ids)) and len(ids) == 1 + 10 + 1 + 1 + 1
    )  # running, 10 metrics, log, succeeded, its log
    for cut in (ids[0], ids[4], ids[-2]):
        rest = parse_sse(client.get(f"/api/v1/jobs/{jid}/events", headers={"Last-Event-ID": str(cut)}).text)
        assert [e["id"] for e in rest[:-1]] == [i for i in ids if i > cut]
        same = parse_sse(client.get(f"/api/v1/jobs/{jid}/events?last_event_id={cut}").text)
        assert [e["id"] for e in same] == [e["id"] for e in rest]
    assert client.get("/api/v1/jobs/9999/events").status_code == 404
