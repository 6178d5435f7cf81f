"""Multi-GPU jobs in the dashboard (real Chromium, live API, a CPU worker offering two gloo ranks): the
start page lists the workers with their ranks and memory; the distill form takes GPUs and nodes with the
memory planner's per-GPU estimate (the Python planner's number) and flags a gang no live workers can
form; a running 2-rank distillation's page shows each rank's tokens/s, peak memory and step time live,
updating step by step; once finished, its world size, throughput overall and per rank, each rank's peak
memory, the teacher's placement and the worker that ran it, every number the stored one."""

from __future__ import annotations

import pytest

from tests.conftest import start_live_app, stop_live_app
from tests.platform.helpers import make_student, start_distill
from tests.platform.test_routing import fake_worker, forget_worker
from tests.ui.conftest import doc_shot, shot
from worker.engine import memplan

pytestmark = pytest.mark.ui
FORM = "[data-testid=distill-form]"
LINE = f"{FORM} [data-testid=memory-estimate]"


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    app = start_live_app(tmp_path_factory.mktemp("gpus-ui"), redis_url, PRUNESCOPE_WORKER_CPU_RANKS="2")
    yield app
    stop_live_app(app)


def queue_from_form(page, app) -> dict:
    """Submit the distill form and return the job it created, as the API stores it."""
    page.click(f"{FORM} [data-testid=queue-distill]")
    # On success the page moves to the job's page; else the form shows the API's refusal.
    page.wait_for_function(
        f"location.hash.startsWith('#/job/') || document.querySelector('{FORM} > .error-msg')?.textContent"
    )
    assert page.url.split("#")[1].startswith("/job/"), page.locator(f"{FORM} > .error-msg").inner_text()
    return app.api.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()


def assert_form_sends_gang_wait(page, app, student_id: int) -> None:
    """The Wait-for-nodes field: enabled only with nodes > 1, its seconds stored as the job's
    gang_timeout_s; left blank, none sent (stored as None: the worker's default). Two registry entries of CUDA
    workers that do not exist let the API accept a cuda job over 2 nodes: it stays queued until cancelled."""
    gpus = [fake_worker(app.env, "cuda:0", ["gpu", "default"], pid=pid) for pid in (1, 2)]
    try:
        fill_and_queue_gang_jobs(page, app, student_id)
    finally:
        for record in gpus:
            forget_worker(app.env, record)


def fill_and_queue_gang_jobs(page, app, student_id: int) -> None:
    wait = page.locator(f"{FORM} input[name=gang_timeout_s]")
    assert wait.is_disabled()  # one node: no gang to wait for
    page.select_option(f"{FORM} select[name=device]", "cuda")
    page.fill(f"{FORM} input[name=gpus]", "1")
    page.fill(f"{FORM} input[name=nodes]", "2")
    assert wait.is_enabled()
    wait.fill("90")
    shot(page, "distill-form-gang-wait")
    job = queue_from_form(page, app)
    assert job["params"]["nodes"] == 2 and job["params"]["gang_timeout_s"] == 90, job["params"]
    assert app.api.post(f"/jobs/{job['id']}/cancel").status_code == 202
    # The form comes back with the submitted settings (remember.js): nodes 2, so the field is enabled.
    page.goto(f"{app.url}/#/runs?student={student_id}")
    assert wait.input_value() == "90" and wait.is_enabled()
    wait.fill("")
    job = queue_from_form(page, app)
    # The stored params fill in every default: None, the worker's PRUNESCOPE_GANG_TIMEOUT_S.
    assert job["params"]["nodes"] == 2 and job["params"]["gang_timeout_s"] is None, job["params"]
    assert app.api.post(f"/jobs/{job['id']}/cancel").status_code == 202


def test_workers_gpus_form_and_ranks_result(page, app):
    page.goto(f"{app.url}/#/teachers")
    rows = page.locator("[data-testid=workers-table] tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1
    assert rows.first.locator("[data-testid=device-count]").inner_text() == "2"
    assert "free of" in rows.first.inner_text()
    page.locator("[data-testid=workers-panel]").scroll_into_view_if_needed()
    doc_shot(page, "teachers-workers")

    student = make_student(app)
    teacher = app.api.get(f"/teachers/{student['teacher_id']}").json()
    steps = 30
    job = start_distill(app, student["id"], gpus=2, steps=steps, batch_size=2, checkpoint_every=0, warmup=1)
    # While the ranks train, the job page shows each rank's figures of the latest step, updating live.
    page.goto(f"{app.url}/#/job/{job['id']}")
    live = page.locator("[data-testid=live-ranks]")
    live.wait_for(timeout=120_000)
    first = int(live.get_attribute("data-step"))
    assert first < steps, first  # drawn before the last step: the job was running
    page.wait_for_function(
        f"Number(document.querySelector('[data-testid=live-ranks]')?.dataset.step) > {first}", timeout=120_000
    )
    assert live.locator("[data-testid=live-world-size]").get_attribute("data-value") == "2"
    for rank in (0, 1):
        assert (
            float(live.locator(f"[data-testid=live-rank-tokens-per-s-{rank}]").get_attribute("data-value"))
            > 0
        )
        assert (
            int(live.locator(f"[data-testid=live-rank-peak-memory-{rank}]").get_attribute("data-value"))
            > 2**20
        )
    done = app.wait_job(job["id"], timeout=180)
    assert done["status"] == "succeeded", done.get("error")
    r = done["result"]

    page.goto(f"{app.url}/#/runs?student={student['id']}")
    page.wait_for_function(f"document.querySelector('{LINE}')?.textContent.includes('fits')")
    page.fill(f"{FORM} input[name=gpus]", "2")
    sharded = memplan.distill_memory(
        memplan.spec_from_summary(student["spec"]),
        memplan.spec_from_summary(teacher["spec"]),
        batch_size=8,
        seq_len=128,
        device="cpu",
        num_gpus=2,
    )["total"]
    # Two CPU ranks on one host: both shards in its memory.
    want = f"needs {memplan.format_bytes(2 * sharded)} per worker, 2 ranks (2 CPU ranks x 1 node)"
    page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes({want!r})")
    assert "teacher replicated:" in page.locator(LINE).inner_text()
    page.fill(f"{FORM} input[name=nodes]", "2")
    page.wait_for_function(
        f"document.querySelector('{LINE}').textContent.includes('only 1 live worker(s) with 2 device(s) for 2 node(s)')"
    )
    assert "error-msg" in (page.locator(LINE).get_attribute("class") or "")
    page.fill(f"{FORM} input[name=nodes]", "1")
    page.locator(FORM).scroll_into_view_if_needed()
    doc_shot(page, "runs-distill-gpus")
    assert_form_sends_gang_wait(page, app, student["id"])

    # The importance form: 2 data-parallel ranks on this CPU host hold two whole teachers.
    page.goto(f"{app.url}/#/teachers?teacher={teacher['id']}")
    imp = "[data-testid=importance-form] [data-testid=memory-estimate]"
    page.wait_for_function(f"document.querySelector('{imp}')?.textContent.includes('needs')")
    page.fill("[data-testid=importance-form] input[name=gpus]", "2")
    one = memplan.importance_memory(
        memplan.spec_from_summary(teacher["spec"]),
        batch_size=8,
        seq_len=128,
        scans=("bi", "drop", "block"),
        block_size=2,
        samples=64,
        device="cpu",
    )["total"]
    want = f"needs {memplan.format_bytes(2 * one)} for 2 ranks on one host (a whole teacher each)"
    page.wait_for_function(f"document.querySelector('{imp}').textContent.includes({want!r})")

    page.goto(f"{app.url}/#/job/{job['id']}")
    ranks = page.locator("[data-testid=ranks-result]")
    ranks.wait_for()

    def value(testid: str) -> float:
        return float(ranks.locator(f"[data-testid={testid}]").get_attribute("data-value"))

    assert value("world-size") == 2 == r["world_size"]
    assert value("tokens-per-s") == pytest.approx(r["tokens_per_s"])
    assert value("tokens-per-s-per-rank") == pytest.approx(r["tokens_per_s"] / 2)
    # A CPU worker's gloo ranks are ranks, not GPUs, as in the live panel.
    cards = ranks.locator(".cards").inner_text()
    assert done["device"] == "cpu" and "2 CPU ranks x 1 node" in cards
    assert " per rank (median step)" in cards and "GPU" not in cards
    assert value("peak-memory") == max(r["peak_memory_per_rank"])
    assert "rank 1:" in ranks.inner_text()
    # The live panel stays at the last step, every number the stored one.
    live.wait_for()
    assert live.get_attribute("data-step") == str(steps)
    names = ",".join(f"rank{i}_{k}" for i in (0, 1) for k in ("tokens_per_s", "peak_memory_bytes", "step_s"))
    stored = app.api.get(f"/jobs/{job['id']}/metrics?names={names}").json()["series"]
    for i in (0, 1):
        for key, testid in (
            ("tokens_per_s", "tokens-per-s"),
            ("peak_memory_bytes", "peak-memory"),
            ("step_s", "step-s"),
        ):
            shown = float(live.locator(f"[data-testid=live-rank-{testid}-{i}]").get_attribute("data-value"))
            assert shown == pytest.approx(stored[f"rank{i}_{key}"][-1]["value"]), (i, key)
    assert "teacher replicated on every rank — memory planner:" in ranks.inner_text()
    assert r["workers"][0] in ranks.locator("[data-testid=rank-workers]").inner_text()
    assert (
        f"({r['workers'][0]})" in page.locator("[data-testid=job-where]").inner_text()
    )  # the job row's worker
    doc_shot(page, "job-ranks")
