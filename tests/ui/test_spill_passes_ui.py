"""The importance form predicts a streamed run's passes over the checkpoint from the worker's own spill
disk (its registry entry's `spill_disk`), as the API's check does (backend/memcheck.check_importance):
real Chromium on the shared app, with a fake GPU worker entry (a small GPU, no spare RAM, a spill disk
with room for two activation stores) beside the real CPU worker. The form shows the exact number of
passes the API computes and the run is accepted; a spill limit too small for one pass is flagged in the
form and refused by the API (409 naming spill_limit_gb, shown on that field)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest

from backend import fleet, memcheck
from tests.conftest import settings_from
from tests.ui.conftest import shot
from worker.engine import memplan

pytestmark = pytest.mark.ui
IMP = "[data-testid=importance-form]"
LINE = f"{IMP} [data-testid=memory-estimate]"
GiB = 1 << 30
# The form's defaults (teachers.js importancePanel), streamed layer by layer
PARAMS = {
    "batch_size": 8,
    "seq_len": 128,
    "samples": 64,
    "block_size": 2,
    "scans": ["bi", "drop", "block"],
    "offload": "always",
}


def fake_gpu_worker(spec: memplan.ArchSpec) -> dict:
    """A GPU whose memory leaves room for one activation store beside the streamed pass, host RAM
    under the pinned tier's 2 GiB reserve (no store there) and a spill disk holding two stores: the
    tiers hold 3 stores at once, fewer than the scans need."""
    opts = memplan.importance_options(PARAMS, "cuda")
    layered = memplan.importance_memory(spec, **opts, streamed=True, device_budget=0)
    store = layered["settings"]["store_bytes"]
    usable = layered["total"] + store + store // 2
    # memplan.usable_bytes inverted (total less 5% and 512 MiB)
    total = math.ceil((usable + memplan.CUDA_RESERVE_BYTES) / (1 - memplan.CUDA_RESERVE_FRACTION))
    room = memplan.usable_bytes({"kind": "cuda", "total_bytes": total}) - layered["total"]
    assert store <= room < 2 * store
    return {
        "hostname": "gpu-fake",
        "device": "cuda:0",
        "queues": ["gpu"],
        "pid": 77001,
        "started_at": "2026-01-01T00:00:00Z",
        "device_count": 1,
        "memory": {"kind": "cuda", "total_bytes": total, "free_bytes": total},
        "host_memory": {"kind": "cpu", "total_bytes": 4 * GiB, "free_bytes": GiB},
        "spill_disk": {
            "path": "/spill",
            "free_bytes": 2 * GiB + 2 * store + 10,
            "limit_bytes": 2 * store + 10,
        },
    }


@contextmanager
def teacher_beside_a_gpu_worker(live_app):
    """A tiny teacher and the demo corpus on the shared app, and `fake_gpu_worker` in its registry while
    the block runs: (teacher, the worker's entry, settings)."""
    teacher = live_app.tiny_teacher_and_demo("spill")
    worker = fake_gpu_worker(memplan.spec_from_summary(teacher["spec"]))
    settings = settings_from(live_app.env)
    client = fleet.client_for(settings)
    fleet.publish(client, settings.redis_prefix, worker, ttl_s=600)
    try:
        yield teacher, worker, settings
    finally:
        fleet.remove(client, settings.redis_prefix, worker)


def test_the_form_predicts_the_passes_from_the_workers_spill_disk(page, live_app):
    api = live_app.api
    with teacher_beside_a_gpu_worker(live_app) as (teacher, worker, settings):
        spec = memplan.spec_from_summary(teacher["spec"])
        # What the API predicts for this run on that worker: several passes, from the disk it reports.
        layout = memcheck.check_importance(settings, teacher["spec"], PARAMS, "gpu")
        passes = layout["passes"]
        assert passes == memplan.streamed_passes(spec.num_layers, PARAMS["scans"], 2, capacity=3) > 1
        page.goto(f"{live_app.url}/#/teachers?teacher={teacher['id']}")
        page.wait_for_function(f"document.querySelector('{LINE}')?.textContent.includes('needs')")
        page.select_option(f"{IMP} select[name=offload]", "always")
        want = f"· {passes} passes over the checkpoint (the spill disk of gpu-fake holds "
        page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes({want!r})")
        shot(page, "importance-spill-passes")
        text = page.locator(LINE).inner_text()
        assert f"{memplan.format_bytes(worker['spill_disk']['limit_bytes'])})" in text, text
        assert "error-msg" not in (page.locator(LINE).get_attribute("class") or "")

        # Submitted: the API accepts it (routed to the GPU worker's queue).
        before = {r["id"] for r in api.get("/importance-runs", params={"teacher_id": teacher["id"]}).json()}
        page.click(f"{IMP} button[type=submit]")
        page.wait_for_function(
            f"document.querySelectorAll('[data-testid=importance-runs] tbody tr').length > {len(before)}"
        )
        (run,) = [
            r
            for r in api.get("/importance-runs", params={"teacher_id": teacher["id"]}).json()
            if r["id"] not in before
        ]
        job = api.get(f"/jobs/{run['job_id']}").json()
        assert (
            job["queue"] == "gpu"
            and run["params"]["offload"] == "always"
            and run["params"].get("spill_limit_gb") is None
        )
        assert api.post(f"/jobs/{run['job_id']}/cancel").status_code == 202
        # the panel redraws (a new form, its defaults) once the run shows cancelled
        row = f"[data-testid=importance-runs] tr[data-run-id='{run['id']}']"
        page.wait_for_function(f"document.querySelector(\"{row}\")?.textContent.includes('cancelled')")

        # A spill limit smaller than one store: the tiers hold the GPU's one store, the first pass needs
        # two: flagged in the form, and the API refuses it naming the field.
        page.select_option(f"{IMP} select[name=offload]", "always")  # the panel was redrawn with its runs
        page.fill(f"{IMP} input[name=spill_limit_gb]", "0.000001")
        page.wait_for_function(
            f"document.querySelector('{LINE}').textContent.includes('do not fit even one pass')"
        )
        assert "error-msg" in (page.locator(LINE).get_attribute("class") or "")
        assert "the spill limit holds 1000 B; raise it" in page.locator(LINE).inner_text()
        page.click(f"{IMP} button[type=submit]")
        note = page.locator(f"{IMP} .field-error[data-field=spill_limit_gb]")
        note.wait_for()
        assert "raise spill_limit_gb" in note.inner_text(), note.inner_text()
        runs = api.get("/importance-runs", params={"teacher_id": teacher["id"]}).json()
        assert len(runs) == len(before) + 1  # nothing written by the refusal


def test_the_form_uses_the_servers_spill_limit_when_the_field_is_blank(page, live_app):
    """The API's PRUNESCOPE_SPILL_LIMIT_GB (GET /config, tested in test_memory_check against a real app)
    holds a run whose spill limit is left blank: the form predicts with it, says whose limit it is, and a
    limit typed in the form wins. The shared app has no such setting, so its /config answer is amended
    here in the browser: the disk tier of a 1 kB server limit holds no store."""

    def with_server_limit(route):
        config = route.fetch().json()
        route.fulfill(json={**config, "spill_limit_gb": 1e-6})

    page.route("**/api/v1/config", with_server_limit)
    with teacher_beside_a_gpu_worker(live_app) as (teacher, worker, _):
        page.goto(f"{live_app.url}/#/teachers?teacher={teacher['id']}")
        page.wait_for_function(f"document.querySelector('{LINE}')?.textContent.includes('needs')")
        assert page.get_attribute(f"{IMP} input[name=spill_limit_gb]", "placeholder") == "0.000001 (server)"
        page.select_option(f"{IMP} select[name=offload]", "always")
        want = (
            "the server's spill limit holds 1000 B; raise PRUNESCOPE_SPILL_LIMIT_GB or set a spill limit here"
        )
        page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes({want!r})")
        assert "error-msg" in (page.locator(LINE).get_attribute("class") or "")
        # A limit typed here wins over the server's: the worker's disk tier again, several passes.
        page.fill(f"{IMP} input[name=spill_limit_gb]", str(worker["spill_disk"]["limit_bytes"] / 1e9))
        page.wait_for_function(
            f"document.querySelector('{LINE}').textContent.includes('passes over the checkpoint (the spill limit holds')"
        )
        assert "error-msg" not in (page.locator(LINE).get_attribute("class") or "")
