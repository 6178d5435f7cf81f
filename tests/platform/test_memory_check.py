"""A distillation that fits no live worker's memory is refused (409) with the nearest setting that fits,
and nothing is written; the registry entries are fake (as in test_routing.py), the estimate is the
memory planner's. A real worker's entry carries its device memory (refreshed with its heartbeat)."""

from __future__ import annotations

import os

import pytest

from backend import fleet
from backend.db import session_scope
from backend.models import Dataset, Plan, Student, Teacher
from tests.conftest import settings_from
from tests.platform.helpers import error_text
from tests.platform.test_routing import counts, fake_worker, forget_worker
from tests.real_shapes import llama_3_1_8b
from worker.presence import Presence

GiB = 1 << 30


@pytest.fixture
def student_id(api_env):
    """A ready 8-layer student of a Llama-3.1-8B-shaped teacher (rows only: shapes are all the API needs)."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=llama_3_1_8b().summary())
        s.add(teacher)
        s.flush()
        plan = Plan(teacher_id=teacher.id, name="p", plan={"drop_layers": list(range(8, 32))}, messages=[])
        s.add(plan)
        s.flush()
        student = Student(
            name="s",
            teacher_id=teacher.id,
            plan_id=plan.id,
            status="ready",
            spec=llama_3_1_8b(num_layers=8).summary(),
        )
        s.add(student)
        s.flush()
        student.path = f"students/{student.id}/model"
        return student.id


def with_memory(record: dict, api_env, kind: str, total: int, free: int) -> dict:
    record["memory"] = {"kind": kind, "total_bytes": total, "free_bytes": free}
    settings = settings_from(api_env)
    fleet.publish(fleet.client_for(settings), settings.redis_prefix, record, ttl_s=600)
    return record


def importance_setup(api_env, student_id: int) -> tuple[int, int, dict]:
    """(teacher id, a demo dataset's id, a fake CPU worker with 20 of 64 GiB free) for importance jobs."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher_id = s.get(Student, student_id).teacher_id
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        dataset_id = dataset.id
    cpu = with_memory(fake_worker(api_env, "cpu", ["cpu", "default"]), api_env, "cpu", 64 * GiB, 20 * GiB)
    return teacher_id, dataset_id, cpu


def distill(client, student_id, validate_only=False, **params):
    suffix = "?validate_only=true" if validate_only else ""
    body = {"kind": "distill", "student_id": student_id, "params": {"steps": 10, **params}}
    return client.post("/api/v1/jobs" + suffix, json=body)


def test_too_big_for_every_worker_is_409_with_the_nearest_fit(client, api_env, student_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    gpu = with_memory(fake_worker(api_env, "cuda:0", ["gpu", "default"]), api_env, "cuda", 80 * GiB, 80 * GiB)
    before = counts(url)
    # float32 at 8 x 2048 needs ~104 GiB (CUDA LM-head chunks of 2^28 logits included); checkpointing alone is not enough, bf16 weights are.
    for validate_only in (True, False):
        r = distill(client, student_id, validate_only, batch_size=8, seq_len=2048, device="cuda")
        assert r.status_code == 409, r.text
        detail = error_text(r)
        assert "needs 103.8 GiB per device" in detail and "'gpu' queue" in detail, detail
        assert "nearest setting that fits: weights_dtype=bfloat16 (67.0 GiB)" in detail, detail
    # Already bf16, batch 16 x 4096: checkpointing is the one change that fits.
    r = distill(client, student_id, batch_size=16, seq_len=4096, weights_dtype="bfloat16", device="cuda")
    assert r.status_code == 409
    assert "nearest setting that fits: gradient_checkpointing=true (62.3 GiB)" in error_text(r)
    assert counts(url) == before

    # The suggested setting is accepted and routed to the GPU worker.
    r = distill(client, student_id, batch_size=8, seq_len=2048, weights_dtype="bfloat16", device="cuda")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["queue"] == "gpu" and job["params"]["weights_dtype"] == "bfloat16"
    assert job["params"]["gradient_checkpointing"] is False
    forget_worker(api_env, gpu)


def test_cpu_workers_are_sized_by_their_free_memory(client, api_env, student_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    cpu = with_memory(fake_worker(api_env, "cpu", ["cpu", "default"]), api_env, "cpu", 64 * GiB, 20 * GiB)
    before = counts(url)
    r = distill(client, student_id, batch_size=8, seq_len=2048, device="cpu")
    assert r.status_code == 409
    detail = error_text(r)
    assert "(largest: 20.0 GiB on gpu-box cpu)" in detail and "no smaller setting fits either" in detail
    assert counts(url) == before
    forget_worker(api_env, cpu)


def test_importance_counts_the_streamed_layout_unless_offload_is_never(client, api_env, student_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    teacher_id, dataset_id, cpu = importance_setup(api_env, student_id)
    body = {
        "teacher_id": teacher_id,
        "dataset_id": dataset_id,
        "batch_size": 64,
        "seq_len": 2048,
        "device": "cpu",
    }
    before = counts(url)
    # In memory the 8B teacher's float32 weights alone (~30 GiB) exceed the worker: nothing helps.
    r = client.post("/api/v1/importance-runs", json={**body, "offload": "never"})
    assert r.status_code == 409 and "no smaller setting fits either" in error_text(r), r.text
    # Streamed layer by layer, a smaller batch fits.
    r = client.post("/api/v1/importance-runs", json={**body, "offload": "always"})
    assert r.status_code == 409, r.text
    assert "importance run needs" in error_text(r)
    assert "nearest setting that fits: batch_size=" in error_text(r)
    assert counts(url) == before
    r = client.post("/api/v1/importance-runs", json={**body, "batch_size": 2})  # offload auto: streamed fits
    assert r.status_code == 201, r.text
    forget_worker(api_env, cpu)


def test_benchmark_and_evaluate_are_sized_too(client, api_env, student_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    gpu = with_memory(fake_worker(api_env, "cuda:0", ["gpu", "default"]), api_env, "cuda", 80 * GiB, 80 * GiB)
    before = counts(url)
    bench = {"kind": "benchmark", "student_id": student_id}
    # Teacher + student weights (~41 GiB fp32) and a 64 x 8224-token KV cache do not fit; a smaller batch does.
    r = client.post(
        "/api/v1/jobs", json={**bench, "params": {"batch_size": 64, "seq_len": 8192, "device": "cuda"}}
    )
    assert r.status_code == 409, r.text
    assert "this benchmark needs" in error_text(r)
    assert "nearest setting that fits: batch_size=" in error_text(r)
    evaluate = {"kind": "evaluate", "student_id": student_id, "params": {"seq_len": 131072, "device": "cuda"}}
    r = client.post("/api/v1/jobs", json=evaluate)
    assert r.status_code == 409 and "this evaluation needs" in error_text(r), r.text
    assert counts(url) == before
    r = client.post(
        "/api/v1/jobs", json={**bench, "params": {"batch_size": 1, "seq_len": 128, "device": "cuda"}}
    )
    assert r.status_code == 201, r.text
    forget_worker(api_env, gpu)


def test_workers_without_memory_refuse_nothing(client, api_env, student_id):
    """An entry from a worker that reports no memory (or no worker at all): the job is queued as before."""
    old = fake_worker(api_env, "cuda:0", ["gpu", "default"])
    r = distill(client, student_id, batch_size=64, seq_len=8192, device="cuda")
    assert r.status_code == 201, r.text
    forget_worker(api_env, old)


def test_a_real_presence_entry_carries_the_device_memory(api_env):
    settings = settings_from(api_env)
    presence = Presence(settings, "cpu", ["cpu", "default"])
    presence.start()
    try:
        (entry,) = [w for w in fleet.live_workers(settings) if w["pid"] == presence.record["pid"]]
        memory = entry["memory"]
        assert memory["kind"] == "cpu" and 0 < memory["free_bytes"] <= memory["total_bytes"]
    finally:
        presence.stop()


def test_cuda_memory_is_read_without_a_cuda_context(tmp_path, monkeypatch):
    """nvidia-smi (a stand-in script here: no GPU on the test machine), with CUDA_VISIBLE_DEVICES mapped."""
    from worker.device_memory import device_memory

    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho "81000, 81559"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device_memory("cuda:1") == {"kind": "cuda", "total_bytes": 81559 << 20, "free_bytes": 81000 << 20}
    assert (tmp_path / "args").read_text().split()[-2:] == ["-i", "5"]


def test_a_spill_limit_too_small_for_one_streamed_pass_is_refused(client, api_env, student_id):
    """A streamed importance run whose activation stores (every sample's hidden states, 68.7 GB each here)
    fit neither the spill limit nor what the worker's memory leaves, even for one pass: 409 naming
    spill_limit_gb and the smallest limit that runs, nothing written; that limit is accepted (the scans
    then run in several passes). A limit that is not positive: 422 naming the field."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    teacher_id, dataset_id, cpu = importance_setup(api_env, student_id)
    body = {
        "teacher_id": teacher_id,
        "dataset_id": dataset_id,
        "batch_size": 2,
        "seq_len": 2048,
        "samples": 2048,
        "device": "cpu",
        "offload": "always",
    }
    before = counts(url)
    for bad in (0, -1):
        r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": bad})
        assert r.status_code == 422 and "spill_limit_gb" in r.text, r.text
    r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": 1})
    assert r.status_code == 409, r.text
    detail = error_text(r)
    assert "stores (68.72 GB each" in detail and "even one pass in the spill limit of 1 GB" in detail, detail
    # the stream and one loss-scan cut: 2 stores, the worker's 20 GiB holding none beside the weights
    assert "raise spill_limit_gb (or PRUNESCOPE_SPILL_LIMIT_GB) to at least 137.44" in detail, detail
    assert r.json()["detail"][0]["loc"][-1] == "spill_limit_gb", r.json()
    assert counts(url) == before
    r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": 137.44})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["spill_limit_gb"] == 137.44
    forget_worker(api_env, cpu)


def test_the_spill_limit_comes_from_the_job_else_the_setting(monkeypatch):
    from backend.memcheck import spill_limit
    from backend.settings import Settings

    assert spill_limit(Settings(), {}) is None  # the worker's spill disk's free space counts
    monkeypatch.setenv("PRUNESCOPE_SPILL_LIMIT_GB", "2.5")
    assert spill_limit(Settings(), {}) == 2_500_000_000
    assert spill_limit(Settings(), {"spill_limit_gb": 40}) == 40 * 10**9
    monkeypatch.setenv("PRUNESCOPE_SPILL_LIMIT_GB", "0")
    with pytest.raises(ValueError, match="spill_limit_gb"):
        Settings()


def test_teacher_correction_counts_training_the_teacher(client, api_env, student_id):
    """A bf16 distillation from the 8B teacher fits an 80 GiB GPU; with teacher correction the teacher
    is first trained (weights, gradients, AdamW states: ~64 GB) beside the loaded one: a 409."""
    from worker.engine.memplan import format_bytes, teacher_correction_memory

    url = api_env["PRUNESCOPE_DATABASE_URL"]
    gpu = with_memory(fake_worker(api_env, "cuda:0", ["gpu", "default"]), api_env, "cuda", 80 * GiB, 80 * GiB)
    settings = dict(batch_size=1, seq_len=128, weights_dtype="bfloat16", device="cuda")
    before = counts(url)
    r = distill(client, student_id, teacher_correction_steps=20, **settings)
    assert r.status_code == 409, r.text
    want = teacher_correction_memory(
        memplan_spec(url, student_id, "student"),
        memplan_spec(url, student_id, "teacher"),
        batch_size=1,
        seq_len=128,
        weights_dtype="bfloat16",
        device="cuda",
    )
    assert want["settings"]["phases"]["correction"] == want["total"]
    assert f"needs {format_bytes(want['total'])} per device" in error_text(r), error_text(r)
    assert counts(url) == before
    r = distill(client, student_id, **settings)  # no correction: fits
    assert r.status_code == 201, r.text
    forget_worker(api_env, gpu)


def memplan_spec(url: str, student_id: int, which: str):
    from worker.engine.memplan import spec_from_summary

    with session_scope(url) as s:
        student = s.get(Student, student_id)
        row = student if which == "student" else s.get(Teacher, student.teacher_id)
        return spec_from_summary(row.spec)


def test_a_prune_job_that_fits_only_out_of_core_names_out_of_core(client, api_env, student_id):
    """POST /students: an 8B float32 teacher (32 GB loaded, + its cut copy) on a worker with 20 GiB free
    is refused in memory (409 naming out_of_core=always, nothing written); auto is accepted (the worker
    cuts out of core, about one tensor)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    cpu = with_memory(fake_worker(api_env, "cpu", ["cpu", "default"]), api_env, "cpu", 64 * GiB, 20 * GiB)
    with session_scope(url) as s:
        plan_id = s.get(Student, student_id).plan_id
    before = counts(url)
    body = {"plan_id": plan_id, "name": "cut", "device": "cpu"}
    r = client.post("/api/v1/students", json={**body, "out_of_core": "never"})
    assert r.status_code == 409, r.text
    detail = error_text(r)
    assert "prune job needs" in detail and "nearest setting that fits: out_of_core=always" in detail, detail
    assert counts(url) == before
    r = client.post("/api/v1/students", json={**body, "out_of_core": "auto"})
    assert r.status_code == 201, r.text
    forget_worker(api_env, cpu)
