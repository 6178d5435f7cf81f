"""What a worker offers a multi-rank job (worker.device_inventory, in its registry entry) and how the API
sizes a `gpus: N` job by it (backend.memcheck): by device count first, then by memory, counting only
workers with enough devices. Registry entries are fake here (as in test_memory_check.py); the live
2-rank run is tests/platform/test_multi_rank_jobs.py."""

from __future__ import annotations

import os

from tests.platform.helpers import error_text
from tests.platform.test_memory_check import GiB, distill, student_id, with_memory  # noqa: F401
from tests.platform.test_routing import counts, fake_worker, forget_worker
from worker.device_inventory import device_inventory


def test_gpus_are_listed_from_nvidia_smi_in_visible_order(tmp_path, monkeypatch):
    """A stand-in nvidia-smi (no GPU here) with 4 GPUs, of which CUDA_VISIBLE_DEVICES shows 3 then 1."""
    fake = tmp_path / "nvidia-smi"
    rows = "\n".join(f"{i}, NVIDIA H100 80GB HBM3, 81559, {80000 - i}" for i in range(4))
    fake.write_text(f'#!/bin/sh\ncat <<"END"\n{rows}\nEND\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    inventory = device_inventory("cuda:0")
    assert inventory["device_count"] == 2
    assert inventory["gpus"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_bytes": 81559 << 20, "free_bytes": 79997 << 20},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "total_bytes": 81559 << 20, "free_bytes": 79999 << 20},
    ]


def test_cpu_workers_offer_the_configured_gloo_ranks():
    assert device_inventory("cpu", cpu_ranks=3) == {"device_count": 3, "gpus": []}
    assert device_inventory("cpu")["device_count"] == os.cpu_count()  # default: one rank per core


def test_a_gpus_job_is_sized_by_the_workers_with_that_many_devices(client, api_env, student_id):  # noqa: F811
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    big_one = with_memory(
        fake_worker(api_env, "cuda:0", ["gpu"], pid=1), api_env, "cuda", 141 * GiB, 141 * GiB
    )
    eight = fake_worker(api_env, "cuda:0", ["gpu"], pid=2)
    eight["device_count"] = 8
    eight = with_memory(eight, api_env, "cuda", 24 * GiB, 24 * GiB)  # republished with its devices
    before = counts(url)

    r = distill(client, student_id, gpus=16, batch_size=16, seq_len=256, device="cuda")
    assert r.status_code == 409
    assert "asks for 16 devices" in error_text(r) and "largest: 8 on gpu-box cuda:0" in error_text(r)
    # 8 ranks: only the 8-GPU worker counts, and its 24 GiB per device is too small at this size, though
    # the one-GPU worker's 141 GiB would hold it.
    r = distill(client, student_id, gpus=8, batch_size=8, seq_len=2048, device="cuda")
    assert r.status_code == 409
    assert "(largest: 22.3 GiB on gpu-box cuda:0)" in error_text(r)  # usable share of 24 GiB
    assert counts(url) == before
    r = distill(
        client, student_id, gpus=1, batch_size=8, seq_len=2048, weights_dtype="bfloat16", device="cuda"
    )
    assert r.status_code == 201, r.text
    forget_worker(api_env, big_one)
    forget_worker(api_env, eight)
