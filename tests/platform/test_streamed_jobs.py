"""Jobs that stream their dataset (`stream`, `data_format`, `text_field` params): checked at submit, and
run on a real worker over a dataset only the streaming reader can read (its text is in field 'content')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.db import session_scope
from tests.platform.helpers import make_student, start_distill, student_rows


def _corpus(folder: Path, documents: int = 400) -> Path:
    """A folder of two JSONL shards whose text is in field 'content' (the in-memory reader wants 'text')."""
    from worker.engine.data import read_documents

    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        line for doc in read_documents("demo", "train")[:20] for line in doc.split("\n") if len(line) > 30
    ]
    docs = docs[:documents]
    for index, part in enumerate((docs[: len(docs) // 2], docs[len(docs) // 2 :])):
        shard = folder / f"part-{index}.jsonl"
        shard.write_text("".join(json.dumps({"content": d}) + "\n" for d in part))
    return folder


@pytest.fixture
def rows(client, api_env):
    """A ready teacher and student (rows only) and a streamable dataset registered through the API."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher, made = student_rows(s, (("s", "ready"),))
        ids = teacher.id, made["s"].id
    folder = _corpus(Path(api_env["PRUNESCOPE_DATA_DIR"]) / "corpus", documents=20)
    dataset = client.post("/api/v1/datasets", json={"name": "c", "source": str(folder)}).json()
    return (*ids, dataset["id"])


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"text_field": "content"}, "text_field", "applies to streamed data"),
        ({"stream": True, "data_format": "csv"}, "data_format", "'auto', 'txt', 'jsonl' or 'parquet'"),
        ({"stream": True, "text_field": "two words"}, "text_field", "pattern"),
        ({"stream": True, "data_format": "parquet"}, "data_format", "no .parquet files in directory"),
    ],
)
def test_bad_streaming_options_are_422s_naming_the_field(client, rows, params, field, message):
    teacher_id, student_id, dataset_id = rows
    importance = {"teacher_id": teacher_id, "dataset_id": dataset_id, **params}
    distill = {"kind": "distill", "student_id": student_id, "params": {"dataset_id": dataset_id, **params}}
    for path, body, loc in (
        ("/api/v1/importance-runs", importance, ["body", field]),
        ("/api/v1/jobs", distill, ["body", "params", field]),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["loc"] == loc and message in error["msg"], error
    assert client.get("/api/v1/jobs").json() == []  # nothing written


@pytest.mark.parametrize(("option", "value"), [("data_format", "parquet"), ("text_field", "content")])
def test_file_options_on_the_built_in_demo_corpus_are_refused(client, rows, option, value):
    """The demo corpus has no files: a format or field for them was accepted and silently ignored."""
    teacher_id, student_id, _ = rows
    demo = client.post("/api/v1/datasets", json={"name": "demo", "source": "demo"}).json()["id"]
    params = {"stream": True, option: value}
    for path, body, loc in (
        (
            "/api/v1/importance-runs",
            {"teacher_id": teacher_id, "dataset_id": demo, **params},
            ["body", option],
        ),
        (
            "/api/v1/jobs",
            {"kind": "distill", "student_id": student_id, "params": params},
            ["body", "params", option],
        ),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["loc"] == loc and "the demo corpus is built in" in error["msg"], error
    assert client.get("/api/v1/jobs").json() == []


def test_streamed_importance_and_distillation_on_a_real_worker(live_app):
    folder = _corpus(live_app.data_dir / "corpus")
    dataset = live_app.api.post("/datasets", json={"name": "shards", "source": str(folder)}).json()
    stream = {"stream": True, "data_format": "jsonl", "text_field": "content"}
    student = make_student(live_app)

    body = {"teacher_id": student["teacher_id"], "dataset_id": dataset["id"], "samples": 4, "seq_len": 32}
    r = live_app.api.post("/importance-runs", json={**body, "batch_size": 2, **stream})
    assert r.status_code == 201, r.text
    assert live_app.wait_job(r.json()["job_id"])["status"] == "succeeded"
    manifest = json.loads(
        (live_app.data_dir / "artifacts" / "importance" / str(r.json()["id"]) / "manifest.json").read_text()
    )
    assert manifest["samples"] == 4 and manifest["data_stream"]["text_field"] == "content"

    job = start_distill(
        live_app, student["id"], dataset_id=dataset["id"], steps=6, checkpoint_every=3, **stream
    )
    done = live_app.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    stored = live_app.api.get(f"/jobs/{job['id']}/metrics?names=kd_loss").json()["series"]["kd_loss"]
    assert [p["step"] for p in stored] == list(range(1, 7))
