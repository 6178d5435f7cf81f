"""A `nodes: M` job is sized by the M workers that would run it (backend.memcheck): the M-th largest
capacity counts, so one big worker does not make a two-node job fit when the other is too small; the
409 names the field and how many workers can hold a node. Fake registry entries, as in
test_device_inventory.py (no worker runs)."""

from __future__ import annotations

from tests.platform.helpers import error_text
from tests.platform.test_memory_check import GiB, distill, student_id, with_memory  # noqa: F401
from tests.platform.test_routing import counts, fake_worker, forget_worker


def test_a_two_node_job_needs_two_workers_that_can_hold_it(client, api_env, student_id):  # noqa: F811
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    big = with_memory(fake_worker(api_env, "cuda:0", ["gpu"], pid=11), api_env, "cuda", 141 * GiB, 141 * GiB)
    small = with_memory(fake_worker(api_env, "cuda:0", ["gpu"], pid=12), api_env, "cuda", 24 * GiB, 24 * GiB)
    try:
        params = dict(batch_size=8, seq_len=2048, weights_dtype="bfloat16", device="cuda")
        before = counts(url)
        assert distill(client, student_id, validate_only=True, **params).status_code == 200  # one node: big
        r = distill(client, student_id, nodes=2, **params)
        assert r.status_code == 409, r.text
        text = error_text(r)
        assert "per device on each of 2 workers" in text and "only 1 live worker(s)" in text, text
        assert "(the smallest of the 2 largest: 22.3 GiB on gpu-box cuda:0)" in text, text
        assert counts(url) == before
        # Once the second worker has the memory too, two nodes are accepted.
        with_memory(small, api_env, "cuda", 80 * GiB, 80 * GiB)
        r = distill(client, student_id, validate_only=True, nodes=2, **params)
        assert r.status_code == 200, r.text
    finally:
        forget_worker(api_env, big)
        forget_worker(api_env, small)
