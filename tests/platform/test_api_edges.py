"""Edges a client reaches by mistake, found by driving every route as an outside tester (each test says
what it answered before): unknown, unready or mismatched rows named in a body, stored files gone from
the store, protocols and search shapes past the server's limits, datasets no job can read, blank names,
free text that cannot be stored, plans with targets previewed, cancels and deletes of jobs that build a
row, a broker failing halfway, and identical requests at once. Every refusal is a 4xx naming the field
(pydantic's `loc`) and writes nothing; none is a 500."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Job, Plan, Student, Teacher
from tests.conftest import settings_from
from tests.platform.helpers import student_rows

MISSING = 99_999


def counts(url: str) -> dict:
    with session_scope(url) as s:
        models = (Teacher, Dataset, Job, Plan, Student, ImportanceRun)
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in models}


@pytest.fixture
def rows(api_env) -> dict:
    """A ready teacher with a plan and a pending student, a pending teacher, a dataset, and two
    importance runs of the ready teacher: one with scores, one whose scores are not in the store."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher, students = student_rows(s, [("pending", "pending"), ("ready", "ready")])
        pending = Teacher(name="new", source="org/other", status="pending")
        dataset = Dataset(name="d", source="demo")
        s.add_all([pending, dataset])
        s.flush()
        scored = ImportanceRun(
            teacher_id=teacher.id, dataset_id=dataset.id, params={}, artifact="importance/x"
        )
        gone = ImportanceRun(
            teacher_id=teacher.id, dataset_id=dataset.id, params={}, artifact="importance/gone"
        )
        s.add_all([scored, gone])
        s.flush()
        return {
            "teacher": teacher.id,
            "pending_teacher": pending.id,
            "plan": students["pending"].plan_id,
            "pending_student": students["pending"].id,
            "student": students["ready"].id,
            "dataset": dataset.id,
            "run": scored.id,
            "gone_run": gone.id,
        }


def only_entry(response, status: int) -> dict:
    assert response.status_code == status, response.text
    (entry,) = response.json()["detail"]
    return entry


def test_unknown_or_unready_rows_in_a_body_name_their_field(client, api_env, rows):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    t, pending = rows["teacher"], rows["pending_teacher"]
    candidate = {"name": "a", "plan_id": rows["plan"]}
    cases = [
        ("/importance-runs", {"teacher_id": MISSING, "dataset_id": rows["dataset"]}, 404, ["teacher_id"]),
        ("/importance-runs", {"teacher_id": pending, "dataset_id": rows["dataset"]}, 409, ["teacher_id"]),
        ("/plans/validate", {"teacher_id": MISSING, "plan": {}}, 404, ["teacher_id"]),
        ("/plans", {"teacher_id": pending, "name": "p", "plan": {}}, 409, ["teacher_id"]),
        (
            "/plans/fill",
            {"teacher_id": t, "importance_run_id": MISSING, "targets": {"num_layers": 2}},
            404,
            ["importance_run_id"],
        ),
        (
            "/searches",
            {"importance_run_id": MISSING, "settings": {"budgets": ["params=80%"]}},
            404,
            ["importance_run_id"],
        ),
        (
            "/searches",
            {
                "importance_run_id": rows["run"],
                "dataset_id": MISSING,
                "settings": {"budgets": ["params=80%"]},
            },
            404,
            ["dataset_id"],
        ),
        (
            "/workflows?validate_only=true",
            {"teacher_id": MISSING, "candidates": [candidate]},
            404,
            ["teacher_id"],
        ),
        (
            "/workflows?validate_only=true",
            {"teacher_id": t, "candidates": [{"name": "a", "plan_id": MISSING}]},
            404,
            ["candidates", 0, "plan_id"],
        ),
        (
            "/workflows?validate_only=true",
            {"teacher_id": t, "candidates": [candidate], "distill": {"dataset_id": MISSING}},
            404,
            ["distill", "dataset_id"],
        ),
        (
            "/workflows?validate_only=true",
            {"teacher_id": t, "candidates": [candidate], "evaluate": {"dataset_id": MISSING}},
            404,
            ["evaluate", "dataset_id"],
        ),
        (
            "/workflows?validate_only=true",
            {
                "teacher_id": t,
                "importance_run_id": MISSING,
                "candidates": [{"name": "a", "targets": {"num_layers": 2}}],
            },
            404,
            ["importance_run_id"],
        ),
        ("/jobs", {"kind": "benchmark", "student_id": rows["pending_student"]}, 409, ["student_id"]),
        # A teacher is measured (or a study checked) once its inspect job has read it, as it is planned.
        ("/jobs", {"kind": "evaluate", "teacher_id": pending}, 409, ["teacher_id"]),
        (
            "/jobs?validate_only=true&planned_student=true",
            {"kind": "distill", "teacher_id": pending},
            409,
            ["teacher_id"],
        ),
        # A student's job runs on the student's teacher: another teacher_id beside it contradicts it.
        (
            "/jobs",
            {"kind": "benchmark", "student_id": rows["student"], "teacher_id": pending},
            422,
            ["teacher_id"],
        ),
    ]
    for path, body, status, field in cases:
        entry = only_entry(client.post(f"/api/v1{path}", json=body), status)
        assert entry["loc"] == ["body", *field], (path, body, entry)
    assert counts(url) == before
    same = {"kind": "benchmark", "student_id": rows["student"], "teacher_id": t}  # agrees: accepted
    assert client.post("/api/v1/jobs?validate_only=true", json=same).status_code == 200


def test_an_importance_run_whose_scores_are_gone_is_a_conflict(client, api_env, rows):
    """The run's row names scores that are no longer in the artifact store (removed by hand, a store
    restored from an older backup): every reader answers 409 saying so, not a 500."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    gone = rows["gone_run"]
    for what in ("heads", "neurons", "neuron-order", "hidden", "layers", "experts", "stability"):
        entry = only_entry(client.get(f"/api/v1/importance-runs/{gone}/{what}"), 409)
        assert entry["loc"] == [] and "scores are missing" in entry["msg"], (what, entry)
    body = {"teacher_id": rows["teacher"], "importance_run_id": gone, "targets": {"num_layers": 2}}
    entry = only_entry(client.post("/api/v1/plans/fill", json=body), 409)
    assert entry["loc"] == ["body", "importance_run_id"] and "scores are missing" in entry["msg"]
    body = {
        "teacher_id": rows["teacher"],
        "importance_run_id": gone,
        "candidates": [{"name": "a", "targets": {"num_layers": 2}}],
    }
    entry = only_entry(client.post("/api/v1/workflows", json=body), 409)
    assert entry["loc"] == ["body", "importance_run_id"], entry
    assert counts(url) == before


def test_a_teachers_protocol_is_checked_at_registration(client, api_env, rows):
    """POST /teachers holds `eval_protocol` to what PATCH /teachers/{id} holds it to: a dataset that
    exists and a context within PRUNESCOPE_MAX_SEQ_LEN (both were stored, and every evaluation of the
    teacher and its students failed later)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    limit = settings_from(api_env).max_seq_len
    for protocol, field, words in (
        ({"dataset_id": MISSING}, "dataset_id", f"Dataset {MISSING} not found"),
        ({"context": limit + 2, "stride": 1}, "context", f"limit of {limit} (PRUNESCOPE_MAX_SEQ_LEN)"),
    ):
        body = {"name": "t", "source": "demo", "eval_protocol": protocol}
        entry = only_entry(client.post("/api/v1/teachers", json=body), 422)
        assert entry["loc"] == ["body", "eval_protocol", field] and words in entry["msg"], entry
        # The same protocol is refused alike as a change of a registered teacher.
        r = client.patch(f"/api/v1/teachers/{rows['teacher']}", json={"eval_protocol": protocol})
        assert only_entry(r, 422)["loc"] == ["body", "eval_protocol", field]
    assert counts(url) == before
    body = {"name": "t", "source": "demo", "eval_protocol": {"dataset_id": rows["dataset"], "context": limit}}
    assert client.post("/api/v1/teachers", json=body).status_code == 201


def test_a_teacher_source_must_be_a_model_folder(client, api_env, tmp_path):
    """A file, or a folder without config.json, was registered, and its inspect job failed later."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for source, words in (
        (tmp_path / "notes.json", "is not a folder"),
        (tmp_path / "empty", "without a config.json"),
    ):
        entry = only_entry(client.post("/api/v1/teachers", json={"name": "t", "source": str(source)}), 422)
        assert entry["loc"] == ["body", "source"] and words in entry["msg"], entry
    assert counts(url) == before
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "llama"}')
    assert (
        client.post("/api/v1/teachers", json={"name": "t", "source": str(tmp_path / "empty")}).status_code
        == 201
    )


def test_a_protocol_window_over_the_positions_is_named_as_the_protocols(client, api_env, rows):
    """An evaluation that leaves seq_len to the teacher's protocol, whose context exceeds the model's
    positions (a protocol registered before the teacher's positions were known): the 422 at seq_len
    says the value came from the protocol and how to change it."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        s.get(Teacher, rows["teacher"]).eval_protocol = {"context": 256, "stride": 128}  # 128 positions
    r = client.post("/api/v1/jobs", json={"kind": "evaluate", "teacher_id": rows["teacher"], "params": {}})
    entry = only_entry(r, 422)
    assert entry["loc"] == ["body", "params", "seq_len"] and entry["nearby"] == [128], entry
    assert (
        f"not given, so teacher {rows['teacher']}'s evaluation protocol sets it: 256 is over" in entry["msg"]
    )
    assert f"PATCH /teachers/{rows['teacher']}" in entry["msg"], entry
    # A window the request gives is refused as before, without that story.
    r = client.post(
        "/api/v1/jobs", json={"kind": "evaluate", "teacher_id": rows["teacher"], "params": {"seq_len": 256}}
    )
    assert "not given" not in only_entry(r, 422)["msg"]
    r = client.post(
        "/api/v1/jobs", json={"kind": "evaluate", "teacher_id": rows["teacher"], "params": {"seq_len": 128}}
    )
    assert r.status_code == 201, r.text


def test_a_dataset_must_hold_data_a_job_can_read(client, api_env, tmp_path):
    """POST /datasets reads each data file's first bytes: an empty source, a binary or non-UTF-8 text
    file, a .jsonl that is not JSON lines, a .parquet / .jsonl.gz that is not one, a folder without data
    files is a 422 naming `source` (each was registered, and its first job failed at the worker)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    root = tmp_path / "sources"  # under the allowed roots (tmp_path)
    root.mkdir()

    def made(name: str, content: bytes | None = None) -> Path:
        path = root / name
        if content is None:
            path.mkdir()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return path

    fifo = root / "pipe.txt"
    os.mkfifo(fifo)  # opening it to read would wait for a writer
    before = counts(url)
    for source, words in (
        (made("empty.txt", b""), "is empty"),
        (made("blank.txt", b" \n\n \t\n"), "is empty"),
        (made("binary.txt", b"text\x00\x01\x02" * 10), "not text"),
        (made("latin1.txt", "café au lait".encode("latin-1")), "not UTF-8"),
        (made("rows.jsonl", b"id,text\n1,hello\n"), "not JSON lines"),
        (made("array.jsonl", b"[1, 2]\n"), "not JSON lines"),
        (made("fake.parquet", b"id,text\n1,hello\n"), "not a .parquet file"),
        (made("fake.jsonl.gz", b'{"text": "hi"}\n'), "not a .jsonl.gz file"),
        (made("nothing"), "no .txt, .jsonl, .jsonl.gz, .parquet files"),
        (made("csv-only/a.csv", b"a,b\n").parent, "no .txt"),
        (made("all-empty/a.txt", b"").parent, "is empty"),
        (fifo, "not a regular file"),
    ):
        entry = only_entry(client.post("/api/v1/datasets", json={"name": "d", "source": str(source)}), 422)
        assert entry["loc"] == ["body", "source"] and words in entry["msg"], (source, entry)
    assert counts(url) == before

    made("mixed/part-1.txt", "first document, déjà vu\n\nsecond".encode())
    made("mixed/part-0.txt", b"")  # an empty shard beside others: no documents, no harm
    for i in range(40):  # many shards: the first ones are read, the rest only sized
        made(f"many/part-{i:02d}.txt", b"" if i < 35 else b"text of the later shards")
    for source in (
        made("ok.jsonl", b'{"text": "one"}\n{"text": "two"}\n'),
        made("ok.jsonl.gz", gzip.compress(b'{"text": "one"}\n')),
        made("notes.md", b"# a file a job streams with an explicit data_format\n"),
        root / "mixed",
        root / "many",
    ):
        r = client.post("/api/v1/datasets", json={"name": "d", "source": str(source)})
        assert r.status_code == 201, (source, r.text)


def test_a_blank_name_is_refused_where_a_name_is_given(client, api_env, rows):
    """Spaces alone name nothing in a list: a 422 naming the field wherever a name is sent (a job's new
    name already was; a teacher, dataset, plan, student, promotion or bake-off took one)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    t, blank = rows["teacher"], " \t "
    candidate = {"name": "a", "plan_id": rows["plan"]}
    for method, path, body, loc in (
        ("POST", "/teachers", {"name": blank, "source": "demo"}, ["name"]),
        ("POST", "/datasets", {"name": blank, "source": "demo"}, ["name"]),
        ("POST", "/plans", {"teacher_id": t, "name": blank, "plan": {}}, ["name"]),
        ("PUT", f"/plans/{rows['plan']}", {"version": 1, "name": blank}, ["name"]),
        ("POST", "/students", {"plan_id": rows["plan"], "name": blank}, ["name"]),
        ("POST", f"/students/{rows['student']}/promote", {"name": blank}, ["name"]),
        ("POST", "/workflows", {"teacher_id": t, "name": blank, "candidates": [candidate]}, ["name"]),
        (
            "POST",
            "/workflows",
            {"teacher_id": t, "candidates": [{**candidate, "name": blank}]},
            ["candidates", 0, "name"],
        ),
        ("PATCH", f"/jobs/{MISSING}", {"name": blank}, ["name"]),
    ):
        entry = only_entry(client.request(method, f"/api/v1{path}", json=body), 422)
        assert entry["loc"] == ["body", *loc] and "must not be blank" in entry["msg"], (path, entry)
    assert counts(url) == before
    assert client.post("/api/v1/datasets", json={"name": " d ", "source": "demo"}).status_code == 201


def test_a_search_whose_report_is_gone_or_damaged_is_a_conflict(client, api_env, rows):
    """A succeeded search's report directory removed, or its search.json cut short: the candidate routes
    answer 409 naming the report, not a 500 (a plan saved from it would write nothing either)."""
    from backend.models import Artifact

    url = api_env["PRUNESCOPE_DATABASE_URL"]
    damaged = Path(api_env["PRUNESCOPE_ARTIFACTS"]) / "searches" / "damaged"
    damaged.mkdir(parents=True)
    (damaged / "search.json").write_text('{"candidates": [{"id": "L3"')
    searches = []
    with session_scope(url) as s:
        for key in ("searches/gone", "searches/damaged"):
            job = Job(kind="search", status="succeeded", params={}, teacher_id=rows["teacher"], queue="cpu")
            s.add(job)
            s.flush()
            s.add(Artifact(job_id=job.id, kind="search", key=key))
            searches.append(job.id)
    before = counts(url)
    for job_id in searches:
        for method, path in (
            ("GET", f"/searches/{job_id}/candidates"),
            ("GET", f"/searches/{job_id}/candidates/L3"),
            ("POST", f"/searches/{job_id}/candidates/L3/plan"),
        ):
            entry = only_entry(client.request(method, f"/api/v1{path}"), 409)
            assert "report searches/" in entry["msg"] and "cannot be read" in entry["msg"], (path, entry)
    assert counts(url) == before


def test_cancelling_the_job_that_builds_a_row_fails_the_row(client, api_env, rows):
    """A student whose prune job, or a teacher whose inspect job, is cancelled (queued, or running and
    finished `cancelled` by its worker) is failed saying so: it stayed `pending` for ever, a row no job
    would ever make ready (a bake-off's retry cuts it again)."""
    from backend import lifecycle

    url = api_env["PRUNESCOPE_DATABASE_URL"]
    student = client.post("/api/v1/students", json={"plan_id": rows["plan"], "name": "s"}).json()
    teacher = client.post("/api/v1/teachers", json={"name": "t", "source": "demo"}).json()
    for path, row in ((f"/students/{student['id']}", student), (f"/teachers/{teacher['id']}", teacher)):
        assert client.post(f"/api/v1/jobs/{row['job_id']}/cancel").status_code == 202
        after = client.get(f"/api/v1{path}").json()
        assert after["status"] == "failed", after
        assert (
            after["error"]
            == f"its {'prune' if 'students' in path else 'inspect'} job {row['job_id']} was cancelled by the user"
        )

    running = client.post("/api/v1/students", json={"plan_id": rows["plan"], "name": "r"}).json()
    with session_scope(url) as s:
        assert lifecycle.claim(s, running["job_id"], 1, device="cpu", worker="w") is not None
    assert client.post(f"/api/v1/jobs/{running['job_id']}/cancel").json()["status"] == "running"
    assert client.get(f"/api/v1/students/{running['id']}").json()["status"] == "pending"  # until it stops
    with session_scope(url) as s:  # the worker stops at its next step
        lifecycle.finish(s, running["job_id"], 1, "cancelled", error="cancelled by the user")
    after = client.get(f"/api/v1/students/{running['id']}").json()
    assert after["status"] == "failed" and after["error"] == "cancelled by the user", after


def test_deleting_a_failed_job_takes_the_row_it_never_built(client, api_env, rows):
    """The runs table deletes any finished run, but a cancelled (or failed) importance or inspect job was
    refused for ever: 'built importance run N / teacher N ... delete that instead', and there is no
    DELETE for either. Such a job now takes its run without scores / its never-inspected teacher along,
    unless something else names that row (then a 409 says what)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    api = "/api/v1"
    run = client.post(
        f"{api}/importance-runs", json={"teacher_id": rows["teacher"], "dataset_id": rows["dataset"]}
    )
    teacher = client.post(f"{api}/teachers", json={"name": "t", "source": "demo"}).json()
    named = client.post(
        f"{api}/importance-runs", json={"teacher_id": rows["teacher"], "dataset_id": rows["dataset"]}
    )
    run, named = run.json(), named.json()
    for job_id in (run["job_id"], teacher["job_id"], named["job_id"]):
        assert client.post(f"{api}/jobs/{job_id}/cancel").status_code == 202
    plan = {"teacher_id": rows["teacher"], "importance_run_id": named["id"], "name": "from run", "plan": {}}
    plan = client.post(f"{api}/plans", json=plan).json()

    before = counts(url)
    entry = only_entry(client.delete(f"{api}/jobs/{named['job_id']}"), 409)
    assert entry["msg"] == (
        f"Job {named['job_id']} (importance) failed to build importance run {named['id']}, "
        f"which plan {plan['id']} names"
    )
    assert counts(url) == before

    for job_id, row in (
        (run["job_id"], f"importance-runs/{run['id']}"),
        (teacher["job_id"], f"teachers/{teacher['id']}"),
    ):
        assert client.delete(f"{api}/jobs/{job_id}").status_code == 204
        assert client.get(f"{api}/jobs/{job_id}").status_code == 404
        assert client.get(f"{api}/{row}").status_code == 404
    after = counts(url)
    assert {k: before[k] - after[k] for k in before} == {
        **dict.fromkeys(before, 0),
        "Job": 2,
        "ImportanceRun": 1,
        "Teacher": 1,
    }
    # A run with scores is still its job's output: refused as before.
    with session_scope(url) as s:
        s.get(ImportanceRun, named["id"]).artifact = "importance/x"
        s.get(Job, named["job_id"]).status = "succeeded"
    entry = only_entry(client.delete(f"{api}/jobs/{named['job_id']}"), 409)
    assert f"built importance run {named['id']}" in entry["msg"]


def test_identical_requests_at_once_never_500(client, api_env, rows):
    """Four clients sending the same cancel / resume / delete / plan update at the same moment (a double
    click, a retrying proxy): each transition happens once, the others get a 4xx, none a 500."""
    import threading

    url = api_env["PRUNESCOPE_DATABASE_URL"]
    api = "/api/v1"
    with session_scope(url) as s:
        common = {
            "kind": "distill",
            "params": {},
            "teacher_id": rows["teacher"],
            "student_id": rows["student"],
        }
        resumable = Job(**common, status="failed", checkpoint="checkpoints/x", checkpoint_step=2, queue="cpu")
        finished = Job(**common, status="succeeded", queue="cpu")
        s.add_all([resumable, finished])
        s.flush()
        ids = resumable.id, finished.id
    queued = client.post(f"{api}/jobs", json={"kind": "benchmark", "student_id": rows["student"]}).json()[
        "id"
    ]
    plan = client.post(
        f"{api}/plans", json={"teacher_id": rows["teacher"], "name": "twice", "plan": {}}
    ).json()["id"]

    def at_once(method: str, path: str, body=None) -> list[int]:
        barrier, codes = threading.Barrier(4), []

        def send():
            barrier.wait()
            codes.append(client.request(method, f"{api}{path}", json=body).status_code)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(code < 500 for code in codes), (method, path, codes)
        return sorted(codes)

    assert at_once("POST", f"/jobs/{queued}/cancel") == [202, 409, 409, 409]
    assert at_once("POST", f"/jobs/{ids[0]}/resume") == [202, 409, 409, 409]
    assert at_once("DELETE", f"/jobs/{ids[1]}").count(204) == 1
    assert at_once("PUT", f"/plans/{plan}", {"version": 1, "name": "q"}) == [200, 409, 409, 409]
    assert 204 in at_once("DELETE", f"/plans/{plan}")
    assert 204 in at_once("DELETE", f"/jobs/{queued}")
    assert client.get(f"{api}/jobs/{ids[0]}").json()["attempts"] == 2  # resumed once
    for path in (f"/jobs/{ids[1]}", f"/jobs/{queued}", f"/plans/{plan}"):
        assert client.get(f"{api}{path}").status_code == 404


def test_a_searchs_timed_shapes_stay_within_the_servers_limits(client, api_env, rows):
    """A measured budget (latency, prefill, throughput) times the model at its batch and context on the
    worker; past PRUNESCOPE_MAX_BATCH_SIZE / MAX_SEQ_LEN it was queued anyway (only eval_* were held to
    them) and ran out of memory there. Now a 422 at the budget, or at the default it took its shape from."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    limits = settings_from(api_env)
    batch, seq = limits.max_batch_size, limits.max_seq_len
    before = counts(url)
    for settings, loc, words in (
        ({"budgets": [f"latency=5ms@{batch + 1},128"]}, ["budgets", 0], f"batch {batch + 1}"),
        (
            {"budgets": ["params=80%", f"throughput=10@1,{seq}"]},
            ["budgets", 1],
            f"context {seq} + 16 decoded tokens",
        ),
        ({"budgets": ["prefill=1s"], "latency_batch": batch + 1}, ["latency_batch"], "MAX_BATCH_SIZE"),
        ({"budgets": ["latency=5ms"], "latency_context": seq}, ["latency_context"], "MAX_SEQ_LEN"),
    ):
        body = {"importance_run_id": rows["run"], "settings": settings}
        entry = only_entry(client.post("/api/v1/searches", json=body), 422)
        assert entry["loc"] == ["body", "settings", *loc] and words in entry["msg"], (settings, entry)
    assert counts(url) == before
    # Computed budgets run nothing at their shape; a measured one within the limits is queued. Both within
    # the tiny teacher's 128 positions (past them is refused too: tests/platform/test_search_submit_checks.py).
    for budgets in ([f"memory=2GB@{batch + 1},128"], [f"latency=5ms@{batch},{128 - 16}"]):
        r = client.post(
            "/api/v1/searches", json={"importance_run_id": rows["run"], "settings": {"budgets": budgets}}
        )
        assert r.status_code == 201, r.text


def test_free_text_in_job_settings_is_plain_text(client, api_env, rows):
    """A search's lm_eval_task holding an unpaired surrogate was a 500 (its params could not be stored as
    JSON); with a NUL byte, like a streamed job's text_field, it was stored and failed on the worker."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    run = rows["run"]
    raw = (
        (
            "/searches",
            f'{{"importance_run_id": {run}, "settings": {{"budgets": ["params=80%"], "lm_eval_task": "cloze\\ud800"}}}}',
            ["settings", "lm_eval_task"],
        ),
        (
            "/searches",
            f'{{"importance_run_id": {run}, "settings": {{"budgets": ["params=80%"], "lm_eval_task": "cl\\u0000oze"}}}}',
            ["settings", "lm_eval_task"],
        ),
        (
            "/jobs",
            f'{{"kind": "distill", "student_id": {rows["student"]}, "params": {{"stream": true, "text_field": "te\\u0000xt"}}}}',
            ["params", "text_field"],
        ),
        (
            "/importance-runs",
            f'{{"teacher_id": {rows["teacher"]}, "dataset_id": {rows["dataset"]}, "stream": true, "text_field": "te\\u0001xt"}}',
            ["text_field"],
        ),
    )
    for path, text, loc in raw:
        r = client.post(f"/api/v1{path}", content=text, headers={"content-type": "application/json"})
        assert only_entry(r, 422)["loc"] == ["body", *loc], (path, r.text)
    assert counts(url) == before


def test_a_workflows_importance_run_is_checked_even_when_unused(client, api_env, rows):
    """A bake-off of saved plans may still name an importance run: an unknown one was a 500 (the job row's
    foreign key) after validate_only had answered ok; another teacher's run was stored as this one's. Its
    distill settings cannot continue an earlier distillation."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        other = Teacher(name="o", source="org/o", status="ready", spec=s.get(Teacher, rows["teacher"]).spec)
        s.add(other)
        s.flush()
        theirs = ImportanceRun(
            teacher_id=other.id, dataset_id=rows["dataset"], params={}, artifact="importance/x"
        )
        s.add(theirs)
        s.flush()
        theirs = theirs.id
    before = counts(url)
    body = {"teacher_id": rows["teacher"], "candidates": [{"name": "a", "plan_id": rows["plan"]}]}
    for path in ("/workflows?validate_only=true", "/workflows"):
        entry = only_entry(client.post(f"/api/v1{path}", json={**body, "importance_run_id": MISSING}), 404)
        assert entry["loc"] == ["body", "importance_run_id"], entry
        entry = only_entry(client.post(f"/api/v1{path}", json={**body, "importance_run_id": theirs}), 422)
        assert entry["loc"] == ["body", "importance_run_id"] and "belongs to teacher" in entry["msg"], entry
    # Its students are cut by it: no distillation of theirs exists to continue (each child would have
    # loaded the named job's weights, another student's, or failed on the worker).
    distill = {"init_distill_job_id": MISSING}
    entry = only_entry(client.post("/api/v1/workflows", json={**body, "distill": distill}), 422)
    assert entry["loc"] == ["body", "distill", "init_distill_job_id"] and entry["nearby"] == [None], entry
    assert counts(url) == before
    # A saved plan names the run it was filled from: another teacher's run is refused there too.
    plan = {"teacher_id": rows["teacher"], "importance_run_id": theirs, "name": "p", "plan": {}}
    entry = only_entry(client.post("/api/v1/plans", json=plan), 422)
    assert entry["loc"] == ["body", "importance_run_id"] and "belongs to teacher" in entry["msg"], entry
    assert counts(url) == before
    r = client.post("/api/v1/workflows", json={**body, "importance_run_id": rows["run"]})
    assert r.status_code == 201 and r.json()["importance_run_id"] == rows["run"], r.text


def test_a_plan_with_targets_is_not_previewed(client, api_env, rows):
    """A saved plan may keep targets (num_layers...) to fill later; its preview was queued, loaded the
    teacher, measured it and then failed (masking cuts explicit units only). Refused at once, as a
    student cut from it is."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    body = {"teacher_id": rows["teacher"], "name": "later", "plan": {"targets": {"num_layers": 2}}}
    plan = client.post("/api/v1/plans", json=body).json()
    before = counts(url)
    entry = only_entry(client.post(f"/api/v1/plans/{plan['id']}/preview", json={}), 422)
    assert entry["loc"] == ["path", "plan_id"] and "has targets" in entry["msg"], entry
    entry = only_entry(client.post("/api/v1/students", json={"plan_id": plan["id"], "name": "s"}), 422)
    assert entry["loc"] == ["body", "plan_id"] and "has targets" in entry["msg"], entry
    assert counts(url) == before
    assert (
        client.post(f"/api/v1/plans/{rows['plan']}/preview", json={}).status_code == 202
    )  # explicit: queued


def test_a_broker_failing_on_the_teachers_evaluation_leaves_the_students_job_submitted(client, api_env, rows):
    """A student's evaluation also queues its teacher's on the same protocol. When the broker took the
    student's message and then refused the teacher's, the answer was a 503 for a job that was queued (a
    client retrying made two); now it is the 201 it is, the teacher's job withdrawn."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    celery = client.app.state.celery
    sent = []

    def flaky(name, args, queue):
        if sent:
            raise ConnectionError("broker went away")
        sent.append(args)

    original, celery.send_task = celery.send_task, flaky
    try:
        before = counts(url)
        r = client.post("/api/v1/jobs", json={"kind": "evaluate", "student_id": rows["student"]})
    finally:
        celery.send_task = original
    assert r.status_code == 201, r.text
    assert sent == [[r.json()["id"], 1]]
    assert counts(url) == {**before, "Job": before["Job"] + 1}  # the student's job only
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.student_id.is_(None))) == 0
