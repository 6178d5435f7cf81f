"""Job statuses and results in a real Chromium against the live app (API + real worker): a cancelled
job reads as stopped, not as an error; evaluate and benchmark results are cards with units, numbers
equal to the stored result. The tests share one student (made once, module scope)."""

from __future__ import annotations

import time

import pytest

from tests.platform.helpers import make_dataset, make_student
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def student(live_app):
    return make_student(live_app)


def badge_colour(page, selector: str) -> str:
    return page.eval_on_selector(selector, "el => getComputedStyle(el).color")


def failed_badge_colour(page) -> str:
    """The colour the dashboard gives a failed status, from its own badge widget."""
    return page.evaluate(
        """async () => {
          const { statusBadge } = await import(new URL("js/components/widgets.js", document.baseURI));
          const el = document.body.appendChild(statusBadge("failed"));
          const colour = getComputedStyle(el).color;
          el.remove();
          return colour;
        }"""
    )


def test_a_cancelled_job_is_neutral_not_error_red(page, live_app, student):
    live_app.worker.pause_when_idle()  # hold the job in the queue so the cancel finds it queued
    try:
        body = {"kind": "benchmark", "student_id": student["id"], "params": {"repeats": 1, "seq_len": 8}}
        job = live_app.api.post("/jobs", json=body).json()
        assert live_app.api.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    finally:
        live_app.worker.pause(False)

    page.goto(f"{live_app.url}/#/job/{job['id']}")
    badge = "h1 ~ .badge[data-status=cancelled]"
    page.wait_for_selector(badge)
    failed = failed_badge_colour(page)
    err = page.evaluate("getComputedStyle(document.body).getPropertyValue('--err').trim()")
    assert failed == "rgb(255, 107, 107)" == _rgb(err)  # the probe itself sees the error red
    assert badge_colour(page, badge) != failed
    # The reason under the progress bar is a neutral note, not the red error box.
    reason = page.locator("[data-testid=job-error]")
    assert reason.inner_text() == "Stopped: cancelled by the user"
    assert "error-msg" not in reason.get_attribute("class")
    assert page.eval_on_selector("[data-testid=job-error]", "el => getComputedStyle(el).color") != failed

    shot(page, "job-cancelled")

    page.goto(f"{live_app.url}/#/runs")
    row = f"tr[data-job-id='{job['id']}']"
    page.wait_for_selector(f"{row} .badge[data-status=cancelled]")
    assert badge_colour(page, f"{row} .badge") != failed
    assert page.eval_on_selector(f"{row} .field-note", "el => getComputedStyle(el).color") != failed
    assert page.locator(f"{row} .field-error").count() == 0
    shot(page, "runs-cancelled")


def _rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


def card_values(page, root: str) -> dict[str, tuple[str, str]]:
    """{data-testid: (stored value, shown text)} of every number under `root`."""
    return page.eval_on_selector_all(
        f"{root} [data-testid][data-value]",
        "els => Object.fromEntries(els.map(e => [e.dataset.testid, [e.dataset.value, e.textContent]]))",
    )


def shown(text: str, unit: str) -> float:
    """'8.39M tok/s' -> 8.39e6 (the number as the page shows it, in base units)."""
    assert text.endswith(unit), (text, unit)
    number = text[: -len(unit)].strip()
    scale = {"k": 1e3, "M": 1e6, "B": 1e9}.get(number[-1], 1)
    return float(number.rstrip("kMB")) * scale


def test_evaluate_and_benchmark_results_are_cards_with_units(page, live_app, student):
    dataset = make_dataset(live_app)
    params = {"dataset_id": dataset["id"], "split": "validation", "max_documents": 4, "seq_len": 32}
    ev = {}
    for who, key in (("teacher", "teacher_id"), ("student", "student_id")):
        subject = student["teacher_id"] if who == "teacher" else student["id"]
        p = {**params, "tasks": ["prunescope_cloze"], "limit": 4} if who == "student" else params
        r = live_app.api.post("/jobs", json={"kind": "evaluate", key: subject, "params": p})
        assert r.status_code == 201, r.text
        ev[who] = r.json()["id"]
    body = {
        "kind": "benchmark",
        "student_id": student["id"],
        "params": {"repeats": 1, "seq_len": 8, "new_tokens": 2},
    }
    bench_id = live_app.api.post("/jobs", json=body).json()["id"]
    done = {k: live_app.wait_job(v, timeout=300) for k, v in {**ev, "bench": bench_id}.items()}
    assert all(j["status"] == "succeeded" for j in done.values()), done

    # A newer evaluation of the teacher at another stride (another protocol, same data, split, documents
    # and window): the figure beside the student's stays the one on the student's protocol (audit 9).
    stride = done["teacher"]["params"]["stride"]
    r = live_app.api.post(
        "/jobs",
        json={
            "kind": "evaluate",
            "teacher_id": student["teacher_id"],
            "params": {**params, "stride": stride // 2},
        },
    )
    assert r.status_code == 201, r.text
    other = live_app.wait_job(r.json()["id"], timeout=300)
    assert other["status"] == "succeeded" and other["protocol"]["id"] != done["student"]["protocol"]["id"]
    assert done["teacher"]["protocol"]["id"] == done["student"]["protocol"]["id"]
    assert (
        other["result"]["perplexity"]["perplexity"] != done["teacher"]["result"]["perplexity"]["perplexity"]
    )

    # Evaluate: perplexity beside the teacher's, tokens, lm-eval tasks with stderr; no flattened keys.
    result, teacher_result = done["student"]["result"], done["teacher"]["result"]
    page.goto(f"{live_app.url}/#/job/{ev['student']}")
    page.wait_for_selector("[data-testid=evaluate-result] [data-testid=teacher-ppl]")
    cards = card_values(page, "[data-testid=job-result]")
    assert float(cards["ppl"][0]) == result["perplexity"]["perplexity"]
    assert float(cards["ppl"][1]) == pytest.approx(result["perplexity"]["perplexity"], rel=1e-3)
    assert float(cards["teacher-ppl"][0]) == teacher_result["perplexity"]["perplexity"]
    assert cards["tokens"][1] == f"{result['perplexity']['tokens']:,}"
    # A late status event can redraw the result between reads: wait until the rows are all there.
    rows = "[data-testid=job-result] [data-testid=lm-eval-tasks] tbody tr"
    assert len(result["tasks"]) >= 1
    page.wait_for_function(f"document.querySelectorAll({rows!r}).length === {len(result['tasks'])}")
    task_rows = page.locator(rows)
    first = result["tasks"][0]
    cells = task_rows.nth(0).locator("td")
    assert cells.nth(0).inner_text() == first["task"]
    assert float(cells.nth(2).locator("[data-value]").get_attribute("data-value")) == first["value"]
    assert float(cells.nth(3).locator("[data-value]").get_attribute("data-value")) == first["stderr"]
    text = page.locator("[data-testid=job-result]").inner_text()
    assert "perplexity.perplexity" not in text and "records no curves" not in page.content()
    assert page.locator("[data-testid=plot-kd_loss]").count() == 0  # no empty chart area
    shot(page, "job-evaluate")

    # Benchmark: teacher | student | speedup per metric, with units, equal to the stored numbers.
    result = done["bench"]["result"]
    page.goto(f"{live_app.url}/#/job/{bench_id}")
    # The page may redraw its result (a late status event) between a wait and a read: read until the
    # card is there in the same read.
    deadline = time.monotonic() + 30
    while "student-decode_tokens_per_s-0" not in (cards := card_values(page, "[data-testid=job-result]")):
        assert time.monotonic() < deadline, cards
        time.sleep(0.2)
    for who in ("teacher", "student"):
        run = result[who]["runs"][0]
        for key, unit in (
            ("prefill_tokens_per_s", "tok/s"),
            ("decode_tokens_per_s", "tok/s"),
            ("latency_per_token_s", "ms"),
        ):
            stored, text = cards.get(f"{who}-{key}-0") or pytest.fail(str(cards))
            assert float(stored) == run[key]
            want = run[key] * (1000 if unit == "ms" else 1)
            assert shown(text, unit) == pytest.approx(want, rel=5e-3), (key, text)
        stored, text = cards[f"{who}-peak_memory_bytes-0"]
        assert int(stored) == run["peak_memory_bytes"] and text.endswith(("KiB", "MiB", "GiB"))
    for key in ("prefill", "decode", "latency", "memory"):
        stored, text = cards[f"speedup-{key}-0"]
        assert float(stored) == result["speedup"][0][key]
        assert text == f"{result['speedup'][0][key]:.2f}×"
    assert float(cards["parameter-ratio"][0]) == result["parameter_ratio"]
    text = page.locator("[data-testid=job-result]").inner_text()
    assert "runs[0]" not in text and "prefill_tokens_per_s" not in text
    shot(page, "job-benchmark")


def test_compare_table_and_log_follow_the_live_events(page, live_app, student):
    """The compare table updates when a job finishes (no reload); the job log shows each line once
    (the event stream replays the lines the page already fetched)."""
    page.goto(f"{live_app.url}/#/compare?students={student['id']}")
    page.wait_for_selector("[data-testid=bench-table]")
    page.wait_for_timeout(1000)  # the teacher stream is open (it starts at "now")
    dataset_id = make_dataset(live_app)["id"]
    params = {"dataset_id": dataset_id, "split": "validation", "max_documents": 2, "seq_len": 16}
    r = live_app.api.post("/jobs", json={"kind": "evaluate", "student_id": student["id"], "params": params})
    job = live_app.wait_job(r.json()["id"])
    assert job["status"] == "succeeded"
    page.wait_for_selector(f"[data-testid=bench-table] td[title^='evaluate job {job['id']}']", timeout=15_000)

    page.goto(f"{live_app.url}/#/job/{job['id']}")
    logs = [line["msg"] for line in live_app.api.get(f"/jobs/{job['id']}/logs").json()]
    assert (
        "loading model" in logs and "running in process" in logs[0]
    )  # the worker's phases, not only its pid
    page.wait_for_selector("[data-testid=job-log] div")
    page.wait_for_timeout(1500)  # the stream has replayed every event by now
    shown = page.locator("[data-testid=job-log] > div").all_inner_texts()
    assert len(shown) == len(logs), shown
    for msg in logs:
        assert sum(text.endswith(msg) for text in shown) == logs.count(msg), (msg, shown)


def test_a_distill_result_is_cards_not_flattened_keys(page, live_app, student):
    from tests.platform.helpers import start_distill

    job = start_distill(live_app, student["id"], steps=4, val_every=4, checkpoint_every=0)
    final = live_app.wait_job(job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    v = final["result"]["final_validation"]
    # Every state the page shows, from its first paint: the stream replays the job's queued and running
    # events first, and a finished job must not flick back through them (nor its result to a placeholder).
    page.add_init_script("""
        window.__shown = [];
        new MutationObserver(() => {
          const badge = document.querySelector('.page-head .badge[data-status]');
          if (!badge) return;
          const state = `${badge.dataset.status}:${!!document.querySelector('[data-testid=distill-result]')}`;
          if (window.__shown.at(-1) !== state) window.__shown.push(state);
        }).observe(document, { subtree: true, childList: true, attributes: true });
    """)
    page.goto(f"{live_app.url}/#/job/{job['id']}")
    page.wait_for_selector("[data-testid=job-result] [data-testid=distill-result]")
    page.wait_for_function("document.querySelectorAll('[data-testid=job-log] div').length > 1")  # replayed
    page.wait_for_timeout(500)
    shown = page.evaluate("window.__shown")
    assert shown in (["succeeded:true"], ["succeeded:false", "succeeded:true"]), shown  # result, then cards
    cards = card_values(page, "[data-testid=job-result]")
    assert float(cards["val-ppl"][0]) == v["val_ppl"] and float(cards["val-loss"][0]) == v["val_loss"]
    assert cards["steps"][1] == str(final["result"]["steps"])
    assert "final_validation." not in page.inner_text("[data-testid=job-result]")
