"""Helpers for the platform tests: a quick student, and a small SSE client."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx


def student_rows(session, names_and_statuses) -> tuple:
    """Rows only (no worker): a ready teacher, a plan, and one student per (name, status), each ready one
    with a weights key `students/<id>/model`. Returns (teacher, {name: student})."""
    from backend.models import Plan, Student, Teacher
    from tests.tiny_models import tiny_spec

    teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
    session.add(teacher)
    session.flush()
    plan = Plan(teacher_id=teacher.id, name="p", plan={"drop_layers": [1]}, messages=[])
    session.add(plan)
    session.flush()
    students = {}
    for name, status in names_and_statuses:
        student = Student(name=name, teacher_id=teacher.id, plan_id=plan.id, status=status)
        session.add(student)
        session.flush()
        student.path = f"students/{student.id}/model" if status == "ready" else None
        students[name] = student
    return teacher, students


def make_student(app, plan: dict | None = None) -> dict:
    """Teacher (tiny Llama) -> explicit plan -> student, through the API and the real worker."""
    api = app.api
    teacher = api.post("/teachers", json={"name": "tiny", "source": str(app.teacher_dir)}).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    plan = plan or {"drop_layers": [3], "remove_neurons": {str(i): list(range(8)) for i in range(4)}}
    created = api.post("/plans", json={"teacher_id": teacher["id"], "name": "quick", "plan": plan})
    assert created.status_code == 201, created.text
    student = api.post("/students", json={"plan_id": created.json()["id"], "name": "s"}).json()
    assert app.wait_job(student["job_id"])["status"] == "succeeded"
    return api.get(f"/students/{student['id']}").json()


def make_dataset(app, documents: int = 300) -> dict:
    """A small local .jsonl dataset (demo documents): quick to tokenize, under the allowed roots."""
    import json as _json

    from worker.engine.data import read_documents

    path = app.data_dir / f"small-{documents}.jsonl"
    if not path.exists():
        docs = read_documents("demo", "train")[:documents]
        path.write_text("".join(_json.dumps({"text": d[:3000]}) + "\n" for d in docs))
    r = app.api.post("/datasets", json={"name": path.stem, "source": str(path)})
    assert r.status_code == 201, r.text
    return r.json()


def start_distill(app, student_id: int, **params) -> dict:
    if "dataset_id" not in params:
        params["dataset_id"] = make_dataset(app)["id"]
    body = {
        "steps": 12,
        "batch_size": 2,
        "seq_len": 32,
        "val_every": 0,
        "val_batches": 2,
        "checkpoint_every": 4,
        "warmup": 2,
    }
    body.update(params)
    r = app.api.post("/jobs", json={"kind": "distill", "student_id": student_id, "params": body})
    assert r.status_code == 201, r.text
    return r.json()


@dataclass
class SseEvent:
    id: int | None
    type: str
    data: dict
    received: float  # time.time() when the client parsed it


def read_sse(
    url: str, *, last_event_id: int | None = None, stop=None, timeout: float = 120.0
) -> list[SseEvent]:
    """Read events until the server closes the stream, `stop(events)` is true, or `timeout`."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    events: list[SseEvent] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout, connect=10)) as response:
        response.raise_for_status()
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    events.append(
                        SseEvent(
                            int(fields["id"]) if "id" in fields else None,
                            fields.get("event", "message"),
                            json.loads(fields["data"]),
                            time.time(),
                        )
                    )
                    if stop and stop(events):
                        break
                fields = {}
                if time.monotonic() > deadline:
                    break
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


def error_text(response) -> str:
    """Every message of an error answer ({"detail": [{"loc", "msg", "type", "nearby"}]}), joined: what
    `in` assertions on the words of a 4xx read."""
    return "; ".join(entry["msg"] for entry in response.json()["detail"])
