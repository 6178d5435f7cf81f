"""The live app on PostgreSQL, as deployed with docker-compose: the API subprocess migrates an empty
schema, a real worker registers a teacher, cuts a student and distills it against that database, and
what the worker wrote is read back through the API, the SSE replay and PostgreSQL itself."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from backend.db import normalize_url
from tests.conftest import postgres_base_url, postgres_schema, start_live_app, stop_live_app
from tests.platform.helpers import make_student, read_sse, start_distill

pytestmark = pytest.mark.skipif(
    postgres_base_url() is None, reason="no PostgreSQL server (set PRUNESCOPE_TEST_POSTGRES_URL)"
)


@pytest.fixture(scope="module")
def pg_app(tmp_path_factory, redis_url):
    with postgres_schema() as url:
        app = start_live_app(tmp_path_factory.mktemp("pg"), redis_url, database_url=url)
        try:
            yield app
        finally:
            stop_live_app(app)


def test_worker_pipeline_on_postgresql(pg_app):
    assert pg_app.api.get("/health").json()["database"] == "postgresql"
    student = make_student(pg_app)
    assert student["status"] == "ready" and student["spec"]["num_layers"] == 3

    job = start_distill(pg_app, student["id"], steps=8, checkpoint_every=4)
    done = pg_app.wait_job(job["id"])
    assert done["status"] == "succeeded" and done["checkpoint_step"] == 8, done

    stored = pg_app.api.get(f"/jobs/{job['id']}/metrics?names=kd_loss").json()["series"]["kd_loss"]
    assert [p["step"] for p in stored] == list(range(1, 9))
    replay = read_sse(f"{pg_app.url}/api/v1/jobs/{job['id']}/events")
    streamed = [e.data for e in replay if e.type == "metric" and "kd_loss" in e.data["values"]]
    assert [(m["step"], m["values"]["kd_loss"]) for m in streamed] == [
        (p["step"], p["value"]) for p in stored
    ]
    assert replay[-1].type == "end" and replay[-1].data["status"] == "succeeded"

    # The rows are in the PostgreSQL schema the app was given, once per step.
    engine = sa.create_engine(normalize_url(pg_app.env["PRUNESCOPE_DATABASE_URL"]))
    try:
        with engine.connect() as conn:
            kinds = dict(conn.execute(sa.text("SELECT kind, count(*) FROM jobs GROUP BY kind")).all())
            points = conn.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT step) FROM metric_points WHERE job_id = :j AND name = 'kd_loss'"
                ),
                {"j": job["id"]},
            ).one()
    finally:
        engine.dispose()
    assert kinds.get("distill") == 1 and kinds.get("prune") == 1
    assert tuple(points) == (8, 8)
