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
from worker.engine.memplan import format_bytes
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


def with_host(record: dict, api_env, total: int, free: int, spill_limit: int | None = None) -> dict:
    """The entry's host RAM (`host_memory`), and its spill disk's limit when given, as a worker writes them."""
    record["host_memory"] = {"kind": "cpu", "total_bytes": total, "free_bytes": free}
    if spill_limit is not None:
        record["spill_disk"] = {
            "path": "/spill",
            "free_bytes": spill_limit + 2 * GiB,
            "limit_bytes": spill_limit,
        }
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
    assert r.json()["detail"][0]["loc"] == ["body", "params", "gradient_checkpointing"], r.text
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


def test_a_real_presence_entry_carries_the_device_memory(api_env, tmp_path, monkeypatch):
    """...and the host's RAM, and the spill disk: its free space and the disk tier's limit a run without
    a spill limit gets (the free space less 2 GiB; the worker's PRUNESCOPE_SPILL_LIMIT_GB when set)."""
    import shutil

    from worker.engine.importance.activation_store import StoreBudget

    spill = tmp_path / "spill" / "not-yet"  # measured on its nearest existing parent, as the disk tier does
    monkeypatch.setenv("PRUNESCOPE_SPILL_DIR", str(spill))
    for limit_gb in (None, "3.5"):
        if limit_gb:
            monkeypatch.setenv("PRUNESCOPE_SPILL_LIMIT_GB", limit_gb)
        settings = settings_from(api_env)
        presence = Presence(settings, "cpu", ["cpu", "default"])
        presence.start()
        try:
            (entry,) = [w for w in fleet.live_workers(settings) if w["pid"] == presence.record["pid"]]
        finally:
            presence.stop()
        memory, host, disk = entry["memory"], entry["host_memory"], entry["spill_disk"]
        assert memory["kind"] == "cpu" and 0 < memory["free_bytes"] <= memory["total_bytes"]
        assert host["kind"] == "cpu" and 0 < host["free_bytes"] <= host["total_bytes"]
        assert disk["path"] == str(spill)
        assert abs(disk["free_bytes"] - shutil.disk_usage(tmp_path).free) < 1 << 30
        # the limit the activation stores of a run without its own spill limit get there
        budget = StoreBudget(0, 0, str(spill), None if limit_gb is None else int(float(limit_gb) * 1e9))
        assert abs(disk["limit_bytes"] - budget.disk_limit()) < 1 << 30
        if limit_gb:
            assert disk["limit_bytes"] == 3_500_000_000
        else:
            assert disk["limit_bytes"] == max(0, disk["free_bytes"] - 2 * GiB)


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
    body = streamed_body(teacher_id, dataset_id)
    before = counts(url)
    for bad in (0, -1):
        r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": bad})
        assert r.status_code == 422 and "spill_limit_gb" in r.text, r.text
    r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": 1})
    assert r.status_code == 409, r.text
    detail = error_text(r)
    # Figures in GiB (memplan.format_bytes), the limit to set in the setting's GB.
    assert (
        "stores (64.0 GiB each" in detail and "even one pass in the spill limit of 1 GB (953.7 MiB)" in detail
    ), detail
    # the stream and one loss-scan cut: 2 stores, the worker's 20 GiB holding none beside the weights
    assert "raise spill_limit_gb (or PRUNESCOPE_SPILL_LIMIT_GB) to at least 137.44" in detail, detail
    assert r.json()["detail"][0]["loc"] == ["body", "spill_limit_gb"], r.json()
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


def test_the_config_reports_the_servers_spill_limit(api_env):
    """GET /config says PRUNESCOPE_SPILL_LIMIT_GB (null when unset): the importance form predicts the
    passes of a run left without `spill_limit_gb` with it, as memcheck.spill_limit does."""
    from fastapi.testclient import TestClient

    from backend.app import create_app

    for env, want in (({}, None), ({"PRUNESCOPE_SPILL_LIMIT_GB": "2.5"}, 2.5)):
        with TestClient(create_app(settings_from({**api_env, **env})), base_url="http://127.0.0.1") as c:
            assert c.get("/api/v1/config").json()["spill_limit_gb"] == want


def test_teacher_correction_counts_training_the_teacher(client, api_env, student_id):
    """A bf16 distillation from the 8B teacher fits an 80 GiB GPU; with teacher correction the teacher
    is first trained (weights, gradients, AdamW states: ~64 GB) beside the loaded one: a 409."""
    from worker.engine.memplan import teacher_correction_memory

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


def test_an_out_of_core_cut_is_sized_by_the_hosts_ram_on_a_gpu_worker(client, api_env, student_id):
    """An out-of-core cut reads and cuts tensor by tensor in host RAM, on a GPU worker too: its entry's
    `host_memory` counts, not the GPU's memory. The 8B float32 teacher (its plan has no stats, so its own
    spec stands in for the cut): in memory 61.8 GiB on the device, out of core 3.9 GiB (its embedding
    read and cut). "auto" runs where the worker resolves it: out of core when the teacher (32.1 GB)
    exceeds half the host's available RAM. Nothing is written on a 409."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        plan_id = s.get(Student, student_id).plan_id
    body = {"plan_id": plan_id, "name": "cut", "device": "cuda"}
    gpu = with_memory(fake_worker(api_env, "cuda:0", ["gpu", "default"]), api_env, "cuda", 4 * GiB, 4 * GiB)
    try:
        # A 4 GiB GPU (3.3 GiB usable) and 20 GiB of free RAM: out of core fits the host, in memory nothing.
        with_host(gpu, api_env, 64 * GiB, 20 * GiB)
        for mode in ("always", "auto"):  # auto: 32.1 GB > 10 GB (half the free RAM) -> out of core
            r = client.post("/api/v1/students", json={**body, "out_of_core": mode, "name": f"cut-{mode}"})
            assert r.status_code == 201, r.text
        before = counts(url)
        r = client.post("/api/v1/students", json={**body, "out_of_core": "never"})
        assert r.status_code == 409, r.text
        detail = error_text(r)
        assert (
            "needs 61.8 GiB per device (in memory)" in detail
            and "(largest: 3.3 GiB on gpu-box cuda:0)" in detail
        )
        assert (
            "nearest setting that fits: out_of_core=always (3.9 GiB of host RAM (out of core))" in detail
        ), detail
        assert r.json()["detail"][0]["loc"] == ["body", "out_of_core"], r.json()

        # Host RAM too small for the tensor: the out-of-core cut is refused, naming the host's RAM.
        with_host(gpu, api_env, 64 * GiB, 2 * GiB)
        r = client.post("/api/v1/students", json={**body, "out_of_core": "always"})
        assert r.status_code == 409, r.text
        detail = error_text(r)
        assert (
            "needs 3.9 GiB of host RAM (out of core)" in detail
            and "(largest: 2.0 GiB on gpu-box host RAM)" in detail
        )
        assert "no smaller setting fits either" in detail, (
            detail
        )  # in memory does not fit the 4 GiB GPU either
        # With an 80 GiB GPU the in-memory cut fits the device: the 409 names out_of_core=never; auto goes
        # out of core (32.1 GB > 1 GB, half the free RAM) and is refused the same way.
        with_memory(gpu, api_env, "cuda", 80 * GiB, 80 * GiB)
        for mode in ("always", "auto"):
            r = client.post("/api/v1/students", json={**body, "out_of_core": mode})
            assert r.status_code == 409, r.text
            assert (
                "nearest setting that fits: out_of_core=never (61.8 GiB per device (in memory))"
                in error_text(r)
            )
            assert r.json()["detail"][0]["loc"][-1] == "out_of_core"
        assert counts(url) == before
        r = client.post("/api/v1/students", json={**body, "out_of_core": "never", "name": "cut-never"})
        assert r.status_code == 201, r.text

        # Plenty of RAM, a 24 GiB GPU: auto cuts in memory (32.1 GB <= half of 500 GiB), on the GPU: too small.
        with_memory(gpu, api_env, "cuda", 24 * GiB, 24 * GiB)
        with_host(gpu, api_env, 512 * GiB, 500 * GiB)
        before = counts(url)
        r = client.post("/api/v1/students", json={**body, "out_of_core": "auto"})
        assert r.status_code == 409, r.text
        assert "needs 61.8 GiB per device (in memory)" in error_text(r)
        assert "nearest setting that fits: out_of_core=always" in error_text(r), error_text(r)
        assert counts(url) == before
    finally:
        forget_worker(api_env, gpu)


def test_auto_is_resolved_by_the_workers_own_threshold(client, api_env, student_id, monkeypatch):
    """The worker's PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB decides an auto cut (prune_job.run_prune reads the
    worker's settings): its entry carries it (`out_of_core_threshold_bytes`, None when unset), and the API
    resolves auto by it. A 4 GiB GPU with 500 GiB of free RAM: by half the free RAM the 32.1 GB teacher is
    cut in memory, on the GPU (refused); with the worker's threshold of 1 GB out of core, in its RAM."""
    for value, published in ((None, None), ("1", 1_000_000_000)):
        if value:
            monkeypatch.setenv("PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB", value)
        presence = Presence(settings_from(api_env), "cpu", ["cpu"])
        assert presence.record["out_of_core_threshold_bytes"] == published
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        plan_id = s.get(Student, student_id).plan_id
    body = {"plan_id": plan_id, "name": "cut", "device": "cuda", "out_of_core": "auto"}
    gpu = with_memory(fake_worker(api_env, "cuda:0", ["gpu", "default"]), api_env, "cuda", 4 * GiB, 4 * GiB)
    try:
        with_host(gpu, api_env, 512 * GiB, 500 * GiB)
        r = client.post("/api/v1/students", json=body)
        assert r.status_code == 409, r.text
        assert "needs 61.8 GiB per device (in memory)" in error_text(r), error_text(r)
        gpu["out_of_core_threshold_bytes"] = 1_000_000_000
        with_host(gpu, api_env, 512 * GiB, 500 * GiB)  # republish
        r = client.post("/api/v1/students", json=body)
        assert r.status_code == 201, r.text
    finally:
        forget_worker(api_env, gpu)


def streamed_body(teacher_id: int, dataset_id: int, **extra) -> dict:
    """A streamed importance run of the 8B teacher whose activation stores are 68.72 GB each (2048
    samples x 2048 tokens x 4096 x 4 bytes); bi, drop and block scans at k=2: 1 + 32 + 31 stores."""
    return {
        "teacher_id": teacher_id,
        "dataset_id": dataset_id,
        "batch_size": 2,
        "seq_len": 2048,
        "samples": 2048,
        "device": "cpu",
        "offload": "always",
        **extra,
    }


def test_passes_are_predicted_from_the_workers_spill_disk(client, api_env, student_id):
    """Without spill_limit_gb (nor PRUNESCOPE_SPILL_LIMIT_GB) the disk tier is the one the worker
    reports (its spill disk's free space less 2 GiB): a small disk means several passes over the
    checkpoint, one too small for even one pass a 409 naming spill_limit_gb; the job's limit overrides
    it below the disk's free space (less the 2 GiB reserve) and is capped there above it, as the worker
    caps its disk tier."""
    from backend.memcheck import check_importance
    from worker.engine.memplan import streamed_passes

    url = api_env["PRUNESCOPE_DATABASE_URL"]
    teacher_id, dataset_id, cpu = importance_setup(api_env, student_id)
    settings = settings_from(api_env)
    assert settings.spill_limit_gb is None
    with session_scope(url) as s:
        spec = s.get(Teacher, teacher_id).spec
    store = 2048 * 2048 * 4096 * 4
    try:
        # 700 GB of disk: 10 stores (the 20 GiB of RAM hold none beside the pass), 64 needed
        with_host(cpu, api_env, 64 * GiB, 20 * GiB, spill_limit=700 * 10**9)
        body = streamed_body(teacher_id, dataset_id)
        want = streamed_passes(32, ("bi", "drop", "block"), 2, 700 * 10**9 // store)
        assert want == 7
        layout = check_importance(
            settings, spec, {**body, "scans": ["bi", "drop", "block"], "block_size": 2}, "cpu"
        )
        assert layout["streamed"] and layout["passes"] == want, layout
        r = client.post("/api/v1/importance-runs", json=body)
        assert r.status_code == 201, r.text

        # 100 GB: one store, the first pass needs 2: refused, naming spill_limit_gb and the smallest disk.
        with_host(cpu, api_env, 64 * GiB, 20 * GiB, spill_limit=100 * 10**9)
        before = counts(url)
        r = client.post("/api/v1/importance-runs", json=body)
        assert r.status_code == 409, r.text
        detail = error_text(r)
        assert "do not fit even one pass in the 93.1 GiB its spill disk has free" in detail, detail
        assert f"free at least {format_bytes(137.44e9)} on the worker's spill disk" in detail, detail
        assert r.json()["detail"][0]["loc"][-1] == "spill_limit_gb", r.json()
        assert counts(url) == before
        # A job's limit beyond that free disk is capped there, as the worker caps it (StoreBudget.disk_tier):
        # still refused, naming the free disk, not spill_limit_gb's value.
        r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": 137.44})
        assert r.status_code == 409, r.text
        assert "do not fit even one pass in the 93.1 GiB its spill disk has free" in error_text(r), (
            error_text(r)
        )
        assert counts(url) == before
        # On the 700 GB disk a job's smaller limit holds (passes from it), a larger one is capped at 700 GB.
        with_host(cpu, api_env, 64 * GiB, 20 * GiB, spill_limit=700 * 10**9)
        scans = {"scans": ["bi", "drop", "block"], "block_size": 2}
        for gb, stores in ((300, 300 * 10**9 // store), (5000, 700 * 10**9 // store)):
            layout = check_importance(settings, spec, {**body, **scans, "spill_limit_gb": gb}, "cpu")
            assert layout["passes"] == streamed_passes(32, ("bi", "drop", "block"), 2, stores), (gb, layout)
        r = client.post("/api/v1/importance-runs", json={**body, "spill_limit_gb": 137.44})
        assert r.status_code == 201, r.text
        # Entries from before the field: one pass assumed, nothing refused.
        cpu.pop("spill_disk")
        with_host(cpu, api_env, 64 * GiB, 20 * GiB)
        assert (
            check_importance(settings, spec, {**body, "scans": ["bi", "drop", "block"]}, "cpu")["passes"] == 1
        )
    finally:
        forget_worker(api_env, cpu)


def test_a_cuda_workers_pinned_ram_holds_activation_stores(client, api_env, student_id):
    """On a CUDA worker the stores the GPU cannot hold go to pinned host RAM before the disk: its
    published `host_memory` (less a 2 GiB reserve) counts, so fewer passes; without it, only the disk."""
    from backend.memcheck import check_importance
    from worker.engine.memplan import streamed_passes

    teacher_id, dataset_id, cpu = importance_setup(api_env, student_id)
    forget_worker(api_env, cpu)
    settings = settings_from(api_env)
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        spec = s.get(Teacher, teacher_id).spec
    store = 2048 * 2048 * 4096 * 4
    gpu = with_memory(fake_worker(api_env, "cuda:0", ["gpu", "default"]), api_env, "cuda", 24 * GiB, 24 * GiB)
    try:
        body = {**streamed_body(teacher_id, dataset_id, device="cuda"), "scans": ["bi", "drop", "block"]}
        with_host(gpu, api_env, 64 * GiB, 20 * GiB, spill_limit=300 * 10**9)  # RAM: no store; disk: 4
        assert (
            check_importance(settings, spec, body, "gpu")["passes"] == streamed_passes(32, capacity=4) == 21
        )
        with_host(gpu, api_env, 512 * GiB, 500 * GiB, spill_limit=300 * 10**9)  # + 7 in pinned RAM
        pinned = (500 * GiB - 2 * GiB) // store
        assert pinned == 7
        assert (
            check_importance(settings, spec, body, "gpu")["passes"] == streamed_passes(32, capacity=11) == 7
        )
        r = client.post("/api/v1/importance-runs", json=body)
        assert r.status_code == 201, r.text
    finally:
        forget_worker(api_env, gpu)
