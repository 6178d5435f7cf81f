"""End to end through the real API server, Redis and a real Celery worker: teacher -> importance ->
plan -> preview -> student (surgery) -> download -> distill with metrics."""

from __future__ import annotations

import io
import json
import zipfile

import pytest


@pytest.fixture(scope="module")
def teacher(live_app):
    r = live_app.api.post("/teachers", json={"name": "tiny", "source": str(live_app.teacher_dir)})
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["status"] == "pending" and t["spec"] is None
    job = live_app.wait_job(t["job_id"])
    assert job["status"] == "succeeded", job
    t = live_app.api.get(f"/teachers/{t['id']}").json()
    assert t["status"] == "ready"
    return t


@pytest.fixture(scope="module")
def dataset(live_app):
    r = live_app.api.post("/datasets", json={"name": "demo", "source": "demo"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def importance_run(live_app, teacher, dataset):
    body = {
        "teacher_id": teacher["id"],
        "dataset_id": dataset["id"],
        "samples": 8,
        "seq_len": 32,
        "batch_size": 4,
        "scans": ["bi", "drop", "block"],
        "block_size": 2,
        "seed": 0,
    }
    r = live_app.api.post("/importance-runs", json=body)
    assert r.status_code == 201, r.text
    job = live_app.wait_job(r.json()["job_id"])
    assert job["status"] == "succeeded", job
    return live_app.api.get(f"/importance-runs/{r.json()['id']}").json()


def test_teacher_spec_is_the_real_architecture(teacher):
    spec = teacher["spec"]
    assert (spec["num_layers"], spec["num_heads"], spec["num_kv_heads"], spec["hidden_size"]) == (4, 8, 4, 32)
    assert spec["intermediate_size"] == 48 and spec["vocab_size"] == 4096
    # exact count of the saved model: embeddings + lm_head + 4 layers + final norm
    d, f, v = 32, 48, 4096
    layer = d * 64 + 2 * d * 32 + 64 * d + 3 * d * f + 2 * d
    assert spec["params_total"] == 2 * v * d + 4 * layer + d


def test_importance_payloads(live_app, importance_run):
    rid = importance_run["id"]
    assert importance_run["status"] == "succeeded" and importance_run["progress"] == 1.0
    manifest = json.loads(
        (live_app.data_dir / "artifacts" / "importance" / str(rid) / "manifest.json").read_text()
    )
    assert manifest["model"] == str(live_app.teacher_dir.resolve())
    assert (manifest["data"], manifest["seed"]) == ("demo", 0)
    assert (manifest["samples"], manifest["seq_len_requested"], manifest["batch_size"]) == (8, 32, 4)
    assert len(manifest["weights_sha256"]) == 64 and manifest["libraries"]["torch"]
    heads = live_app.api.get(f"/importance-runs/{rid}/heads").json()
    assert (heads["layers"], heads["heads"], heads["kv_groups"]) == (4, 8, 4)
    assert sorted(heads["rank"][0]) == list(range(8))
    # the rank orders the scores
    row, rank = heads["z"][2], heads["rank"][2]
    assert row[rank.index(7)] == max(row) and row[rank.index(0)] == min(row)
    mean = live_app.api.get(f"/importance-runs/{rid}/heads?batch=mean&seq=l2").json()
    assert mean["z"] != heads["z"]

    neurons = live_app.api.get(f"/importance-runs/{rid}/neurons?bins=16&order=sorted").json()
    assert neurons["width"] == 48 and neurons["bins"] == 16 and len(neurons["z"]) == 4
    assert neurons["bin_edges"][0] == 0 and neurons["bin_edges"][-1] == 48
    for z, zmax in zip(neurons["z"], neurons["zmax"]):
        assert z == sorted(z, reverse=True)  # sorted descending -> bin means descend
        assert all(a <= b * (1 + 1e-3) for a, b in zip(z, zmax))
    zoom = live_app.api.get(
        f"/importance-runs/{rid}/neurons?order=natural&layer_start=1&layer_end=3&start=8&end=12"
    ).json()
    assert zoom["layers"] == [1, 2] and zoom["bins"] == 4 and zoom["bin_edges"] == [8, 9, 10, 11, 12]
    bad = live_app.api.get(f"/importance-runs/{rid}/neurons?start=40&end=60")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "end"

    hidden = live_app.api.get(f"/importance-runs/{rid}/hidden").json()
    assert len(hidden["z"]) == 32 and sorted(hidden["rank"]) == list(range(32))
    layers = live_app.api.get(f"/importance-runs/{rid}/layers").json()
    assert len(layers["block_importance"]) == 4 and len(layers["drop_loss"]) == 4
    assert len(layers["block_loss"]["2"]) == 3 and layers["base_loss"] > 0
    stability = live_app.api.get(f"/importance-runs/{rid}/stability").json()
    assert set(stability) >= {"heads", "neurons", "hidden"}
    # The aggregation query applies to the layer scores and to rank stability too.
    layers_mean = live_app.api.get(f"/importance-runs/{rid}/layers?batch=mean").json()
    assert layers_mean["block_importance"] != layers["block_importance"]
    assert layers_mean["drop_loss"] == layers["drop_loss"]  # loss scans are plain means
    stability_mean = live_app.api.get(f"/importance-runs/{rid}/stability?batch=mean&seq=l2").json()
    assert set(stability_mean) == set(stability)
    bad = live_app.api.get(f"/importance-runs/{rid}/layers?batch=bogus")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "batch"


def test_plan_student_and_distill(live_app, teacher, importance_run):
    api = live_app.api
    filled = api.post(
        "/plans/fill",
        json={
            "teacher_id": teacher["id"],
            "importance_run_id": importance_run["id"],
            "targets": {"num_layers": 2, "layer_method": "block", "intermediate_size": 32},
        },
    )
    assert filled.status_code == 200, filled.text
    body = filled.json()
    assert len(body["plan"]["drop_layers"]) == 2
    assert body["stats"]["spec"]["num_layers"] == 2 and body["stats"]["spec"]["intermediate_size"] == 32
    assert body["stats"]["params_total"] < teacher["spec"]["params_total"]

    plan = api.post(
        "/plans",
        json={
            "teacher_id": teacher["id"],
            "importance_run_id": importance_run["id"],
            "name": "2 layers, mlp 32",
            "plan": body["plan"],
        },
    )
    assert plan.status_code == 201, plan.text
    plan = plan.json()

    preview = api.post(f"/plans/{plan['id']}/preview", json={"samples": 4, "seq_len": 32})
    assert preview.status_code == 202, preview.text
    job = live_app.wait_job(preview.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["ppl_masked"] > 0 and job["result"]["ppl_teacher"] > 0
    assert job["result"]["ppl_masked"] != job["result"]["ppl_teacher"]

    student = api.post("/students", json={"plan_id": plan["id"], "name": "s1"})
    assert student.status_code == 201, student.text
    job = live_app.wait_job(student.json()["job_id"])
    assert job["status"] == "succeeded", job
    student = api.get(f"/students/{student.json()['id']}").json()
    assert student["status"] == "ready"
    assert student["spec"]["params_total"] == body["stats"]["params_total"]

    zipped = api.get(f"/students/{student['id']}/download")
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert any(n.endswith("config.json") for n in names)
    assert job["result"]["surgery"].startswith("in memory (model")  # auto: this teacher is small
    check_out_of_core_student(live_app, plan, student)

    job = api.post(
        "/jobs",
        json={
            "kind": "distill",
            "student_id": student["id"],
            "params": {
                "steps": 4,
                "batch_size": 2,
                "seq_len": 32,
                "val_every": 2,
                "checkpoint_every": 2,
                "warmup": 1,
            },
        },
    )
    assert job.status_code == 201, job.text
    job = live_app.wait_job(job.json()["id"])
    assert job["status"] == "succeeded", job
    series = api.get(f"/jobs/{job['id']}/metrics?names=kd_loss,val_loss").json()["series"]
    assert [p["step"] for p in series["kd_loss"]] == [1, 2, 3, 4]
    assert all(p["value"] > 0 for p in series["kd_loss"])
    assert series["val_loss"]
    evaluate = api.post(
        "/jobs",
        json={
            "kind": "evaluate",
            "student_id": student["id"],
            "params": {"split": "validation", "max_documents": 4, "seq_len": 32},
        },
    )
    bench = api.post(
        "/jobs",
        json={
            "kind": "benchmark",
            "student_id": student["id"],
            "params": {"seq_len": 16, "new_tokens": 4, "repeats": 1},
        },
    )
    evaluate, bench = live_app.wait_job(evaluate.json()["id"]), live_app.wait_job(bench.json()["id"])
    assert evaluate["status"] == "succeeded", evaluate
    assert (
        evaluate["result"]["perplexity"]["perplexity"] > 1 and evaluate["result"]["perplexity"]["tokens"] > 0
    )
    assert bench["status"] == "succeeded", bench
    assert bench["result"]["parameter_ratio"] < 1 and bench["result"]["speedup"][0]["batch_size"] == 1

    compare = api.get(f"/compare?teacher={teacher['id']}&students={student['id']}").json()
    assert [m["kind"] for m in compare["models"]] == ["teacher", "student"]
    s = compare["models"][1]
    assert s["distill_jobs"] == [job["id"]]
    assert s["evaluations"][0]["job_id"] == evaluate["id"] and s["benchmarks"][0]["job_id"] == bench["id"]


def check_out_of_core_student(live_app, plan: dict, in_memory: dict) -> None:
    """The same plan cut tensor by tensor from the checkpoint gives the same weights."""
    from worker.engine.checkpoint_reader import CheckpointReader

    bad = live_app.api.post("/students", json={"plan_id": plan["id"], "name": "s", "out_of_core": "often"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "out_of_core"
    r = live_app.api.post("/students", json={"plan_id": plan["id"], "name": "s-ooc", "out_of_core": "always"})
    assert r.status_code == 201, r.text
    job = live_app.wait_job(r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["surgery"] == "out of core (requested)"
    student = live_app.api.get(f"/students/{r.json()['id']}").json()
    assert student["status"] == "ready" and student["spec"] == in_memory["spec"]
    root = live_app.data_dir / "artifacts"
    files = [sorted(p.name for p in (root / s["path"]).iterdir()) for s in (in_memory, student)]
    assert files[0] == files[1] and "tokenizer.json" in files[0]  # the same files, the tokenizer too
    a, b = CheckpointReader(root / in_memory["path"]), CheckpointReader(root / student["path"])
    assert sorted(a.names()) == sorted(b.names())
    assert all(a.read(n).equal(b.read(n)) for n in a.names())
