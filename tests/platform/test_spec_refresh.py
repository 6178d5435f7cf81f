"""Teachers inspected by an older version (their spec lacks fields added since: max_positions, the
sliding window) are read again when the API starts (real API restart, real worker): the spec is
complete afterwards, the teacher stays ready throughout, a failed refresh leaves it ready, and hub
teachers are left alone (no internet needed at start)."""

from __future__ import annotations

import shutil
import time

from sqlalchemy import select

from backend.db import session_scope
from backend.models import Job, Teacher

ADDED_SINCE = ("max_positions", "sliding_window", "sliding_layers")


def _register(app, name: str, source) -> int:
    teacher = app.api.post("/teachers", json={"name": name, "source": str(source)}).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    return teacher["id"]


def _make_stale(url: str, teacher_id: int) -> dict:
    """Drop the fields an older version did not write; returns the complete spec."""
    with session_scope(url) as s:
        row = s.get(Teacher, teacher_id)
        full = dict(row.spec)
        row.spec = {k: v for k, v in full.items() if k not in ADDED_SINCE}
        return full


def _refresh_jobs(url: str) -> dict[int, list[int]]:
    """teacher id -> ids of its refresh jobs."""
    with session_scope(url) as s:
        jobs = s.scalars(select(Job).where(Job.kind == "inspect").order_by(Job.id)).all()
        found: dict[int, list[int]] = {}
        for job in jobs:
            if job.params.get("refresh"):
                found.setdefault(job.teacher_id, []).append(job.id)
        return found


def _queued_for(url: str, teachers: int, timeout: float = 30.0) -> dict[int, list[int]]:
    """The refresh jobs once `teachers` teachers have one (or what there is at the deadline): the API
    queues them from a background task after it starts serving, one teacher after the other."""
    deadline = time.monotonic() + timeout
    while len(found := _refresh_jobs(url)) < teachers and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_old_specs_are_read_again_at_start_and_the_teachers_stay_ready(live_app):
    app, url = live_app, live_app.env["PRUNESCOPE_DATABASE_URL"]
    fresh = _register(app, "fresh", app.teacher_dir)
    broken_dir = shutil.copytree(app.teacher_dir, app.teacher_dir.parent / "broken")
    old, broken = _register(app, "old", app.teacher_dir), _register(app, "broken", broken_dir)
    full = _make_stale(url, old)
    _make_stale(url, broken)
    (broken_dir / "config.json").write_text('{"model_type": "no-such-family"}')  # its refresh fails
    with session_scope(url) as s:  # a hub teacher of an older version: its config may need the internet
        hub = Teacher(name="hub", source="org/old-model", status="ready", spec={"family": "llama"})
        s.add(hub)
        s.flush()
        hub_id = hub.id
    assert _refresh_jobs(url) == {}

    app.server.stop()
    app.server.start()  # the same port: app.api still reaches it

    jobs = _queued_for(url, 2)
    assert sorted(jobs) == [old, broken]  # neither the complete nor the hub teacher
    assert app.wait_job(jobs[old][0])["status"] == "succeeded"
    assert app.wait_job(jobs[broken][0])["status"] == "failed"
    teachers = {t["id"]: t for t in app.api.get("/teachers").json()}
    assert teachers[old]["spec"] == full and teachers[old]["status"] == "ready"
    assert teachers[broken]["status"] == "ready" and "max_positions" not in teachers[broken]["spec"]
    assert teachers[hub_id]["status"] == "ready" and teachers[fresh]["status"] == "ready"
    assert teachers[old]["job_id"] != jobs[old][0]  # its own inspect job is still the one it names

    app.server.stop()
    app.server.start()  # neither is queued again: one is complete, the other's refresh failed
    assert _refresh_jobs(url) == jobs
