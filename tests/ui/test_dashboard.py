"""The dashboard in a real Chromium against the live app (API subprocess + real Celery worker):
register a teacher and data, run importance, click heatmap cells and check the plan summary against
plan_stats, box-select, undo/redo, fill to target, save and reload, preview, cut a student, distill it
and watch the curve grow from SSE events, then compare. Screenshots go to test-artifacts/.

The tests of this module build on each other in order (one teacher, one run, one student)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_tree
from tests.platform.helpers import make_dataset
from tests.ui.conftest import shot
from worker.engine.importance.result import ImportanceResult
from worker.engine.importance.stats import SQ_L2, SQ_MEAN, SUM_L2, SUM_MEAN
from worker.engine.plan import PlanTargets, PrunePlan, fill_plan, plan_stats
from worker.engine.spec import ArchSpec

pytestmark = pytest.mark.ui

STATE: dict = {}


def spec_of(teacher: dict) -> ArchSpec:
    fields = set(ArchSpec.model_fields) - {"layers"}
    return ArchSpec(**{k: v for k, v in teacher["spec"].items() if k in fields})


def expected_params(teacher: dict, plan: dict) -> int:
    return plan_stats(PrunePlan(**plan), spec_of(teacher))["params_total"]


def summary_params(page) -> int:
    return int(page.get_attribute("[data-testid=params-total]", "data-value"))


def head_cell(page, layer: int, head: int, heads: int = 8, row_height: int = 18):
    box = page.locator("[data-testid=heads-map]").bounding_box()
    return box["x"] + (head + 0.5) * box["width"] / heads, box["y"] + (layer + 0.5) * row_height


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# ---- 1. teachers & data ------------------------------------------------------------------------------


def test_register_teacher_dataset_and_run_importance(page, live_app):
    teachers_before = {t["id"] for t in live_app.api.get("/teachers").json()}  # the app is shared
    page.goto(f"{live_app.url}/#/")
    page.wait_for_selector("[data-testid=teacher-form]")
    # The live fleet from the worker registry: live_app runs one CPU worker.
    page.wait_for_function("document.querySelector('[data-testid=workers]').textContent === 'workers: 1 cpu'")

    # A bad path: the API's reason appears under the field, outlined; nothing is created.
    page.fill("[data-testid=teacher-form] [name=name]", "ghost")
    page.fill("[data-testid=teacher-form] [name=source]", "/definitely/not/here")
    page.click("[data-testid=teacher-form] button[type=submit]")
    err = page.locator("[data-testid=teacher-form] .field-error[data-field=source]")
    err.wait_for()
    assert "allowed roots" in err.inner_text()
    assert "invalid" in page.get_attribute("[data-testid=teacher-form] [name=source]", "class")
    assert {t["id"] for t in live_app.api.get("/teachers").json()} == teachers_before

    # A directory no other module registered: the form offers an already registered one instead of
    # registering it again (tests/ui/test_planner_ergonomics.py), and the app is shared.
    source = live_app.teacher_dir.parent / "tiny-llama-dashboard"
    if not source.exists():
        copy_tree(live_app.teacher_dir, source)
    page.fill("[data-testid=teacher-form] [name=name]", "tiny")
    page.fill("[data-testid=teacher-form] [name=source]", str(source))
    page.click("[data-testid=teacher-form] button[type=submit]")
    page.fill("[data-testid=dataset-form] [name=name]", "demo")
    page.fill("[data-testid=dataset-form] [name=source]", "demo")
    page.click("[data-testid=dataset-form] button[type=submit]")

    # The inspect job fills the architecture summary (of this teacher: other modules' teachers share the
    # app, and one of theirs may be the ready one shown first).
    deadline = time.monotonic() + 120
    while True:
        new = [t for t in live_app.api.get("/teachers").json() if t["id"] not in teachers_before]
        if new and new[0]["status"] == "ready":
            break
        assert time.monotonic() < deadline, new
        time.sleep(0.5)
    (teacher,) = new
    params = f"{teacher['spec']['params_total']:,}"
    page.wait_for_selector("[data-testid=arch-summary] [data-status=ready]", timeout=120_000)
    page.wait_for_function(
        "t => document.querySelector('[data-testid=arch-summary]').textContent.includes(t)", arg=params
    )
    summary = page.inner_text("[data-testid=arch-summary]")
    assert "8 / 4" in summary and "48 (gated)" in summary and params in summary
    # A small evaluation protocol (4 documents; the default 64 is ~6,500 windows per perplexity): the
    # preview and the study's evaluations below check the numbers their jobs stored, whatever they are.
    r = live_app.api.patch(f"/teachers/{teacher['id']}", json={"eval_protocol": {"max_documents": 4}})
    assert r.status_code == 200, r.text
    teacher = r.json()

    form = "[data-testid=importance-form]"
    page.select_option(f"{form} [name=dataset_id]", label="demo")
    page.fill(f"{form} [name=samples]", "8")
    page.fill(f"{form} [name=seq_len]", "32")
    page.fill(f"{form} [name=batch_size]", "4")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("[data-testid=importance-runs] tr[data-run-id]")
    link = page.locator("[data-testid=importance-runs] a:has-text('Open explorer')")
    link.wait_for(timeout=180_000)
    shot(page, "teachers")
    (run,) = live_app.api.get("/importance-runs", params={"teacher_id": teacher["id"]}).json()
    assert run["status"] == "succeeded"
    STATE.update(teacher=teacher, run=run)


# ---- 2. explorer & planner -------------------------------------------------------------------------------


def open_explorer(page, live_app, query: str = ""):
    page.goto(f"{live_app.url}/#/explore/{STATE['run']['id']}{query}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")


def test_clicks_mark_units_and_the_summary_counts_them(page, live_app):
    teacher = STATE["teacher"]
    open_explorer(page, live_app)
    page.evaluate("localStorage.clear()")
    open_explorer(page, live_app)
    print(f"explorer first paint: {page.evaluate('window.__prunescopeFirstPaintMs'):.0f} ms")
    assert summary_params(page) == teacher["spec"]["params_total"]
    assert page.locator("[data-testid=stability-heads]").inner_text().startswith("heads ρ=")

    # A GQA teacher (2 query heads per KV group): a click marks the whole group by default, a plan the
    # server accepts (a single head off one group is refused: groups must stay even).
    page.mouse.click(*head_cell(page, 0, 0))
    assert summary_params(page) == expected_params(teacher, {"remove_kv_groups": {0: [0]}})
    page.wait_for_function("document.querySelector('[data-testid=plan-messages]').dataset.state === 'done'")
    assert page.locator("[data-testid=plan-messages] li.error").count() == 0
    page.mouse.click(*head_cell(page, 0, 0))  # unmarked again
    assert summary_params(page) == teacher["spec"]["params_total"]
    page.click("[data-testid=head-mode] button[data-value=heads]")  # single heads, by choice

    # One head: the local count equals plan_stats of the same plan.
    page.mouse.click(*head_cell(page, 0, 0))
    assert summary_params(page) == expected_params(teacher, {"remove_heads": {0: [0]}})
    print(f"summary update after a click: {page.get_attribute('[data-testid=planner]', 'data-update-ms')} ms")
    # The server's GQA advice arrives (debounced): one head out of one group leaves groups uneven.
    page.wait_for_function("document.querySelector('[data-testid=plan-messages]').dataset.state === 'done'")
    assert "same number" in page.inner_text("[data-testid=plan-messages]")
    # Clicking again unmarks it.
    page.mouse.click(*head_cell(page, 0, 0))
    assert summary_params(page) == teacher["spec"]["params_total"]

    # Box select: heads 0-3 of layers 1 and 2 (two whole KV groups per layer).
    x0, y0 = head_cell(page, 1, 0)
    x1, y1 = head_cell(page, 2, 3)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=6)
    page.mouse.up()
    boxed = {"remove_heads": {1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}}
    assert summary_params(page) == expected_params(teacher, boxed)
    page.wait_for_function("document.querySelector('[data-testid=plan-messages]').dataset.state === 'done'")
    assert "same number" not in page.inner_text("[data-testid=plan-messages]")

    # A layer label drops the layer; marked rows are drawn hatched.
    page.click("[data-testid=heads-panel] .hm-rowlabels span[data-row='3']")
    dropped = {**boxed, "drop_layers": [3]}
    assert summary_params(page) == expected_params(teacher, dropped)
    assert "3L" in page.inner_text("[data-testid=shape]")
    assert page.locator("[data-testid=heads-panel] .hm-rowlabels span.dropped").inner_text() == "L3"

    # Keyboard undo / redo.
    page.locator("h1").click()
    page.keyboard.press("Control+z")
    assert summary_params(page) == expected_params(teacher, boxed)
    page.keyboard.press("Control+z")
    assert summary_params(page) == teacher["spec"]["params_total"]
    page.keyboard.press("Control+Shift+z")
    page.keyboard.press("Control+Shift+z")
    assert summary_params(page) == expected_params(teacher, dropped)
    shot(page, "explorer-marked")

    # Zoom: in "zooms" mode a drag over the neuron map fetches the chosen range at finer resolution.
    page.click("[data-testid=neuron-tool] button[data-value=zoom]")
    box = page.locator("[data-testid=neurons-map]").bounding_box()
    page.mouse.move(box["x"] + 1, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 4, box["y"] + 5, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "document.querySelector('[data-testid=neurons-panel]').innerText.includes('zoomed to 0–')"
    )
    assert summary_params(page) == expected_params(teacher, dropped)  # zooming marks nothing
    page.click("[data-testid=zoom-reset]")
    page.wait_for_function(
        "document.querySelector('[data-testid=neurons-panel]').innerText.includes('all 48 per layer')"
    )

    # The draft survives a reload.
    page.reload()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert summary_params(page) == expected_params(teacher, dropped)
    page.click("text=Clear")
    assert summary_params(page) == teacher["spec"]["params_total"]

    # A block-scan bar of the layer chart toggles its whole block (k = 2 here: layers 0 and 1).
    page.wait_for_selector("[data-testid=layers-plot] .bars path")
    bar = page.locator("[data-testid=layers-plot] .bars path").nth(0).bounding_box()
    page.mouse.click(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] / 2)
    assert summary_params(page) == expected_params(teacher, {"drop_layers": [0, 1]})
    page.click("text=Clear")


def test_fill_to_target_adjust_save_reload_preview_and_student(page, live_app):
    teacher = STATE["teacher"]
    open_explorer(page, live_app)
    page.click("text=Clear")

    # A bad target is explained next to the fill form.
    page.fill("[data-testid=fill-form] [name=heads_per_layer]", "3")
    page.click("[data-testid=fill]")
    page.locator("[data-testid=fill-form] .field-error[data-field=heads_per_layer]").wait_for()
    assert "nearby valid: 4, 8" in page.inner_text("[data-testid=fill-form] .field-error")
    assert "invalid" in page.get_attribute("[data-testid=fill-form] [name=heads_per_layer]", "class")
    assert summary_params(page) == teacher["spec"]["params_total"]  # nothing changed

    page.fill("[data-testid=fill-form] [name=heads_per_layer]", "")
    page.fill("[data-testid=fill-form] [name=intermediate_size]", "32")
    page.click("[data-testid=fill]")
    page.wait_for_function("document.querySelector('[data-testid=shape]').innerText.includes('MLP 32/48')")
    filled = {"remove_neurons": {i: list(range(16)) for i in range(4)}}
    assert summary_params(page) == expected_params(teacher, filled)
    # The filled neurons are the least important ones: in sorted order they sit at the right end.
    api_plan = live_app.api.post(
        "/plans/fill",
        json={
            "teacher_id": teacher["id"],
            "importance_run_id": STATE["run"]["id"],
            "targets": {"intermediate_size": 32},
        },
    ).json()["plan"]

    # Adjust by hand: one more neuron bin of layer 0 (48 neurons -> one neuron per column here).
    box = page.locator("[data-testid=neurons-map]").bounding_box()
    page.mouse.click(box["x"] + 2, box["y"] + 4)
    page.wait_for_function("document.querySelector('[data-testid=shape]').innerText.includes('MLP 31–32/48')")
    adjusted_params = summary_params(page)
    assert adjusted_params == expected_params(teacher, filled) - 3 * 32

    page.fill("[data-testid=plan-name]", "mlp32")
    page.click("[data-testid=save-plan]")
    page.wait_for_function("location.hash.includes('plan=')")
    plan_id = int(re.search(r"plan=(\d+)", page.evaluate("location.hash")).group(1))
    saved = live_app.api.get(f"/plans/{plan_id}").json()
    assert saved["stats"]["params_total"] == adjusted_params
    removed_l0 = set(saved["plan"]["remove_neurons"]["0"])
    assert set(api_plan["remove_neurons"]["0"]) < removed_l0 and len(removed_l0) == 17

    # A shared link opens the saved plan (not the local draft).
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert summary_params(page) == adjusted_params
    shot(page, "explorer-filled")

    # Preview: masked perplexity next to the teacher's, computed by the worker.
    page.click("[data-testid=preview-btn]")
    page.wait_for_selector("[data-testid=ppl-masked]", timeout=120_000)
    ppl_teacher = float(page.inner_text("[data-testid=ppl-teacher]"))
    ppl_masked = float(page.inner_text("[data-testid=ppl-masked]").split()[0])
    preview = next(
        j for j in live_app.api.get("/jobs", params={"kind": "preview"}).json() if j["plan_id"] == plan_id
    )
    assert preview["status"] == "succeeded"
    assert ppl_teacher == pytest.approx(preview["result"]["ppl_teacher"], rel=1e-3)
    assert ppl_masked == pytest.approx(preview["result"]["ppl_masked"], rel=1e-3)
    # Previewing again measures the plan's half only: the teacher's is the first preview's, linked.
    page.click("[data-testid=preview-btn]")
    reused = page.wait_for_selector("[data-testid=ppl-teacher-from]", timeout=120_000)
    assert reused.inner_text() == f"from job #{preview['id']}"
    assert reused.get_attribute("href").endswith(f"/{preview['id']}")
    assert float(page.inner_text("[data-testid=ppl-teacher]")) == ppl_teacher
    # The box says which plan and job it shows, and that it is of an earlier plan once the plan is edited
    # (it kept showing a previous plan's preview as if it were the current one's).
    second = max(j["id"] for j in live_app.api.get("/jobs", params={"kind": "preview"}).json())
    of = page.locator("[data-testid=preview-of]")
    assert of.inner_text().startswith(f'preview of "mlp32" v1 · job #{second}'), of.inner_text()
    assert not page.locator("[data-testid=preview] .stale-note").is_visible()
    # Measured again: the page scrolled since (the plan panel's actions no longer scroll it into view).
    box = page.locator("[data-testid=neurons-map]").bounding_box()
    page.mouse.click(box["x"] + 2, box["y"] + 4)  # unmark the neuron bin marked above
    page.wait_for_selector("[data-testid=preview][data-stale='1'] .stale-note", state="visible")
    assert "the plan has changed since" in of.inner_text()
    page.click("[data-testid=undo]")
    page.wait_for_selector("[data-testid=preview][data-stale=''] .stale-note", state="hidden")

    page.fill("[data-testid=student-name]", "tiny-mlp32")
    page.click("[data-testid=create-student]")
    page.wait_for_selector("[data-testid=student-link]")
    student = next(s for s in live_app.api.get("/students").json() if s["name"] == "tiny-mlp32")
    assert student["plan_id"] == plan_id
    # "is being cut" follows the cut's live status: it says "is cut" once the prune job finished.
    live_app.wait_job(student["job_id"])
    info = page.locator("[data-testid=student-info][data-status=succeeded]")
    info.wait_for(timeout=15_000)
    assert "is cut" in info.inner_text() and "being cut" not in info.inner_text()
    STATE["student"] = student

    # The preview's job page names the plan it measured, linked to it in the explorer.
    page.goto(f"{live_app.url}/#/job/{second}")
    named = page.wait_for_selector("[data-testid=job-plan]")
    assert named.inner_text() == f"plan mlp32 #{plan_id} v1", named.inner_text()
    link = named.query_selector("a").get_attribute("href")
    assert f"explore/{STATE['run']['id']}" in link and f"plan={plan_id}" in link, link
    # Its result reads as two perplexities and their ratio, not a list of keys.
    result = live_app.api.get(f"/jobs/{second}").json()["result"]
    shown = page.wait_for_selector("[data-testid=preview-result]")
    for testid, key in (("preview-teacher-ppl", "ppl_teacher"), ("preview-masked-ppl", "ppl_masked")):
        assert float(page.get_attribute(f"[data-testid={testid}]", "data-value")) == result[key]
    assert f"{result['ratio']:.2f}× the teacher's" in shown.inner_text(), shown.inner_text()
    # A succeeded job offers neither Cancel nor Resume (both showed, greyed).
    assert page.locator("[data-testid=cancel]").count() == page.locator("[data-testid=resume]").count() == 0
    shot(page, "job-preview")


def near_tie_neurons(artifact: Path, level: float = 5.5546, seed: int = 0) -> ImportanceResult:
    """Rewrite a run's neuron sums so every neuron of a layer scores level x (1 + k * 1e-6), k < F/2.

    All scores then read 5.555 at the payload's 4 digits, while the exact ones hold near-ties (k
    differs by one) and exact ties (equal k): only the server's exact ranking can order them. Every
    neuron gets neuron 0's sums scaled by f (its squares by f^2), which scales every aggregation alike.
    """
    res = ImportanceResult.load(artifact)
    sums = res.arrays["neurons"].astype(np.float64)  # [2 halves, 4 sums, L, F]
    _, _, L, F = sums.shape
    score0 = np.sqrt(sums[:, SQ_MEAN, :, 0].sum(axis=0))  # default aggregation: batch L2 of seq means
    k = np.random.default_rng(seed).integers(0, F // 2, size=(L, F))
    f = (level / score0)[:, None] * (1 + 1e-6 * k)  # [L, F]
    out = np.empty_like(sums)
    for s in (SUM_MEAN, SUM_L2):
        out[:, s] = sums[:, s, :, :1] * f
    for q in (SQ_MEAN, SQ_L2):
        out[:, q] = sums[:, q, :, :1] * f**2
    res.arrays["neurons"] = out.astype(np.float32)
    res.save(artifact)
    return ImportanceResult.load(artifact)


def browser_style_removal(z_rounded: list[float], n: int) -> set[int]:
    """What ranking the rounded payload in the browser picks: the last n of a descending sort by value,
    lower index first on ties (the old client code). Used to prove the near-ties really matter."""
    order = sorted(range(len(z_rounded)), key=lambda i: (-z_rounded[i], i))
    return set(order[len(order) - n :])


def test_sorted_neuron_marks_equal_fill_plan_on_near_ties(page, live_app):
    teacher = STATE["teacher"]
    api = live_app.api
    dataset = api.get("/datasets").json()[0]
    body = {"teacher_id": teacher["id"], "dataset_id": dataset["id"], "samples": 8, "seq_len": 32}
    created = api.post("/importance-runs", json={**body, "batch_size": 4, "scans": []}).json()
    assert live_app.wait_job(created["job_id"])["status"] == "succeeded"
    rid = created["id"]
    result = near_tie_neurons(live_app.data_dir / "artifacts" / "importance" / str(rid))

    cut = 10  # mark the 10 least important neurons of every layer: 48 -> 38
    F = teacher["spec"]["intermediate_size"]
    scores = result.scores()
    filled = fill_plan(PrunePlan(targets=PlanTargets(intermediate_size=F - cut)), spec_of(teacher), scores)
    expected = {str(layer): idx for layer, idx in filled.remove_neurons.items()}
    payload = api.get(f"/importance-runs/{rid}/neurons", params={"order": "natural", "bins": F}).json()
    assert {v for row in payload["z"] for v in row} == {5.555}  # all tied at the payload's 4 digits
    assert len(np.unique(scores.neurons[0])) < F  # exact ties too, not only near ones
    # Ranking the rounded values (what the browser did) picks other neurons: the test has teeth.
    assert any(
        browser_style_removal(payload["z"][layer], cut) != set(filled.remove_neurons[layer])
        for layer in range(len(payload["z"]))
    )
    server = api.post(
        "/plans/fill",
        json={
            "teacher_id": teacher["id"],
            "importance_run_id": rid,
            "targets": {"intermediate_size": F - cut},
        },
    ).json()["plan"]
    assert server["remove_neurons"] == expected

    page.goto(f"{live_app.url}/#/explore/{rid}?order=sorted")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.evaluate("localStorage.clear()")
    # Box-select the right-most `cut` columns (one neuron per column here) of every layer in sorted order.
    box = page.locator("[data-testid=neurons-map]").bounding_box()
    col = box["width"] / F
    page.mouse.move(box["x"] + (F - cut + 0.5) * col, box["y"] + 4)
    page.mouse.down()
    page.mouse.move(box["x"] + (F - 0.5) * col, box["y"] + box["height"] - 4, steps=6)
    page.mouse.up()
    page.wait_for_function(
        f"document.querySelector('[data-testid=shape]').innerText.includes('MLP {F - cut}/{F}')"
    )
    draft = page.evaluate(f"JSON.parse(localStorage.getItem('prunescope.draft.run{rid}'))")
    assert draft["remove_neurons"] == expected
    # The map shows the marks where they were made: the last `cut` rank positions, and nothing before.
    for column, marked in ((F - 1, True), (F - cut, True), (F - cut - 1, False)):
        page.mouse.move(box["x"] + (column + 0.5) * col, box["y"] + 8)
        tip = page.inner_text(".tooltip")
        assert (f"rank {column + 1} of {F}" in tip) and (("100% marked" in tip) == marked), tip


# ---- 3. runs: distill and watch the curve grow ------------------------------------------------------------


def plot_trace(page, testid: str, name: str) -> dict:
    return page.evaluate(
        """([testid, name]) => {
            const el = document.querySelector(`[data-testid=${testid}]`);
            const t = (el.data || []).find((d) => d.name === name);
            return t ? { x: Array.from(t.x), y: Array.from(t.y) } : null;
        }""",
        [testid, name],
    )


def test_distill_from_the_dashboard_curves_grow_live(page, live_app):
    student = STATE["student"]
    data = make_dataset(live_app)  # small and local: the demo corpus (the default) is 6 MB to tokenize
    page.goto(f"{live_app.url}/#/runs?student={student['id']}")
    page.wait_for_selector("[data-testid=student-detail] [data-status=ready]", timeout=120_000)
    form = "[data-testid=distill-form]"
    for name, value in {
        "budget": "40",
        "val_every": "10",
        "checkpoint_every": "20",
        "batch_size": "2",
        "seq_len": "32",
        "warmup": "5",
    }.items():
        page.fill(f"{form} [name={name}]", value)
    page.select_option(f"{form} [name=device]", "cpu")
    page.select_option(f"{form} [name=dataset_id]", str(data["id"]))
    page.click("[data-testid=queue-distill]")
    page.wait_for_function("location.hash.startsWith('#/job/')")
    job_id = int(re.search(r"#/job/(\d+)", page.evaluate("location.hash")).group(1))
    job = live_app.api.get(f"/jobs/{job_id}").json()
    assert job["params"]["device"] == "cpu" and job["queue"] == "cpu"
    assert job["params"]["dataset_id"] == data["id"]

    # Sample the step count shown while the job runs: it must take several increasing values.
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        steps = int(page.get_attribute("[data-testid=point-count]", "data-steps") or 0)
        if not seen or steps != seen[-1]:
            seen.append(steps)
        if page.locator(".page-head [data-status=succeeded]").count() and steps >= 40:
            break
        if page.locator(".page-head [data-status=failed]").count():
            raise AssertionError(page.inner_text("[data-testid=job-progress]"))
        time.sleep(0.05)
    assert seen[-1] == 40, seen
    growing = [s for s in seen if 0 < s < 40]
    assert len(growing) >= 2, f"the curve did not grow live: {seen}"
    print(f"step counts seen while distilling: {seen}")

    # Plot = the stored metrics exactly once per step (snapshot + replayed SSE deduplicated).
    metrics = live_app.api.get(f"/jobs/{job_id}/metrics", params={"names": "kd_loss"}).json()["series"][
        "kd_loss"
    ]
    page.evaluate(
        "(() => { const s = document.querySelector('[data-testid=smoothing]'); s.value = 0; s.dispatchEvent(new Event('input')); })()"
    )
    page.wait_for_timeout(400)
    raw = plot_trace(page, "plot-kd_loss", "kd_loss")
    assert raw["x"] == [p["step"] for p in metrics]
    assert raw["y"] == pytest.approx([p["value"] for p in metrics])

    # TensorBoard's debiased EMA: the first point is the raw first value, later ones are smoothed.
    page.evaluate(
        "(() => { const s = document.querySelector('[data-testid=smoothing]'); s.value = 0.9; s.dispatchEvent(new Event('input')); })()"
    )
    page.wait_for_timeout(400)
    smooth = plot_trace(page, "plot-kd_loss", "kd_loss")
    ys = [p["value"] for p in metrics]
    assert smooth["y"][0] == pytest.approx(ys[0])
    ema, expected = 0.0, []
    for i, v in enumerate(ys, start=1):
        ema = 0.9 * ema + 0.1 * v
        expected.append(ema / (1 - 0.9**i))
    assert smooth["y"] == pytest.approx(expected)

    page.click("[data-testid=x-axis] button[data-value=tokens]")
    page.wait_for_timeout(400)
    assert plot_trace(page, "plot-kd_loss", "kd_loss")["x"] == [p["tokens"] for p in metrics]
    page.click("[data-testid=logy]")
    page.wait_for_timeout(400)
    assert page.evaluate("document.querySelector('[data-testid=plot-kd_loss]').layout.yaxis.type") == "log"
    assert "x=tokens" in page.evaluate("location.hash") and "logy=1" in page.evaluate("location.hash")
    val = plot_trace(page, "plot-val_ppl", "val_ppl")
    assert val and len(val["x"]) >= 2
    shot(page, "job-live")
    STATE["job_id"] = job_id


def test_compare_shows_architecture_diff_and_curves(page, live_app):
    student, teacher = STATE["student"], STATE["teacher"]
    page.goto(f"{live_app.url}/#/compare?students={student['id']}&teacher={teacher['id']}")
    page.wait_for_selector("[data-testid=arch-diff]")
    table = page.inner_text("[data-testid=arch-diff]").lower()
    assert "tiny-mlp32" in table and "teacher" in table
    mlp_row = page.locator("[data-testid=arch-diff] tr:has(th:text-is('MLP'))")
    assert mlp_row.locator("td.diff").inner_text() == "31–32"
    page.wait_for_function("document.querySelector('[data-testid=compare-curves]').data !== undefined")
    names = page.evaluate("document.querySelector('[data-testid=compare-curves]').data.map((d) => d.name)")
    assert any(f"job {STATE['job_id']}" in n for n in names)
    shot(page, "compare")


def everything(live_app) -> dict:
    """Ids of every plan, student and job, and the student / checkpoint directories on disk."""
    api = live_app.api
    artifacts = live_app.data_dir / "artifacts"
    return {
        "plans": {p["id"] for p in api.get("/plans", params={"limit": 1000}).json()},
        "students": {s["id"] for s in api.get("/students", params={"limit": 1000}).json()},
        "jobs": {j["id"] for j in api.get("/jobs", params={"limit": 1000}).json()},
        "dirs": {
            str(p.relative_to(artifacts))
            for sub in ("students", "checkpoints", "jobs")
            for p in (artifacts / sub).glob("*")
        },
    }


def run_wizard(page, **fields: str) -> None:
    """Fill the open wizard (the distillation settings too) and start it."""
    wizard = "[data-testid=wizard]"
    page.evaluate("document.querySelector('[data-testid=wizard] details').open = true")
    for name, value in fields.items():
        page.fill(f"{wizard} [name={name}]", value)
    page.click("[data-testid=wizard-go]")


def wizard_error(page) -> str:
    page.wait_for_function(
        "document.querySelector('[data-testid=wizard] .error-msg').textContent", timeout=240_000
    )
    return page.inner_text("[data-testid=wizard] .error-msg")


def test_a_failed_study_wizard_run_leaves_nothing_behind(page, live_app):
    before = everything(live_app)
    page.goto(f"{live_app.url}/#/compare")
    page.wait_for_selector(
        f"[data-testid=wizard] select[name=importance_run_id] option[value='{STATE['run']['id']}']",
        state="attached",
    )
    page.select_option("[data-testid=wizard] select[name=importance_run_id]", str(STATE["run"]["id"]))
    small = {"val_every": "2", "batch_size": "2", "seq_len": "32"}

    # A budget no student fits: refused before anything is created, next to the budget field.
    run_wizard(page, budget_pct="1")
    page.wait_for_selector("[data-testid=wizard] .field-error[data-field=budget_pct]")
    assert "too small" in page.inner_text("[data-testid=wizard] .field-error[data-field=budget_pct]")
    assert "invalid" in page.get_attribute("[data-testid=wizard] [name=budget_pct]", "class")
    assert everything(live_app) == before

    # Settings the server refuses (min_lr > lr): the study is one request (POST /workflows) that the
    # server refuses whole, so no plan, student or job is ever created; the field is marked.
    built = []
    page.on(
        "request",
        lambda r: (
            built.append(r.url)
            if r.method == "POST" and re.search(r"/(plans|students|jobs)(/fill)?$", r.url)
            else None
        ),
    )
    run_wizard(page, budget_pct="95", budget="4", lr="0.000001", **small)
    text = wizard_error(page)
    assert "not started" in text and "nothing was created" in text, text
    # The reason once, under the setting it names (not again in the sentence above).
    assert "min_lr must not exceed lr" in page.inner_text(
        "[data-testid=wizard] .field-error[data-field=min_lr]"
    )
    assert "min_lr" not in text
    assert "invalid" in page.get_attribute("[data-testid=wizard] [name=min_lr]", "class")
    assert page.is_enabled("[data-testid=wizard-go]")
    # The settings stay as typed, to be corrected.
    assert page.input_value("[data-testid=wizard] [name=lr]") == "0.000001"
    assert built == [] and everything(live_app) == before
    assert live_app.api.get("/workflows", params={"teacher_id": STATE["teacher"]["id"]}).json() == []


def test_depth_vs_width_wizard_builds_and_distills_both(page, live_app):
    teacher = STATE["teacher"]
    # The distillations read a small local dataset picked in the wizard's Data field: the demo corpus
    # (its default) is 6 MB of text, tokenized by each distillation for its 4 steps.
    data = make_dataset(live_app)
    page.goto(f"{live_app.url}/#/compare")
    wizard = "[data-testid=wizard]"
    page.wait_for_selector(
        f"{wizard} select[name=importance_run_id] option[value='{STATE['run']['id']}']", state="attached"
    )
    page.select_option(f"{wizard} select[name=importance_run_id]", str(STATE["run"]["id"]))
    page.fill(f"{wizard} [name=budget_pct]", "95")
    # Budgeted in total params (embeddings are most of this tiny teacher), depth keeps 2 of 4 layers
    # (50% of the non-embedding params) against width's 74.3%: the wizard warns that they are not one size.
    page.select_option(f"{wizard} [name=budget_count]", "total")
    assert "depth: keeps 2 of 4 layers, drops 2" in page.inner_text(
        f"{wizard} [data-testid=study-depth-size]"
    )
    gap = page.inner_text(f"{wizard} [data-testid=study-size-gap]")
    assert "the depth student has 24.3 percentage points fewer non-embedding parameters" in gap
    assert "75.1% (3 layers)" in gap  # the budget that puts depth on whole layers (rounded up)
    # The default: non-embedding params, as the reference study holds equal. Each student's shares in
    # both counts and its FLOPs/token; 75.0% and 74.3% of the non-embedding params: no warning.
    page.select_option(f"{wizard} [name=budget_count]", "non_embedding")
    depth_size = page.inner_text(f"{wizard} [data-testid=study-depth-size]")
    width_size = page.inner_text(f"{wizard} [data-testid=study-width-size]")
    assert "depth: keeps 3 of 4 layers, drops 1" in depth_size and "non-emb. = 75.0%" in depth_size
    assert "non-emb. = 74.3%" in width_size and "total = 74.9%" in width_size
    assert "FLOP/token" in depth_size and "FLOP/token" in width_size
    assert page.locator(f"{wizard} [data-testid=study-size-gap]").count() == 0
    page.click(f"{wizard} summary")
    page.fill(f"{wizard} [name=budget]", "4")
    page.fill(f"{wizard} [name=val_every]", "2")
    page.fill(f"{wizard} [name=batch_size]", "2")
    page.fill(f"{wizard} [name=seq_len]", "32")
    page.select_option(f"{wizard} [name=dataset_id]", str(data["id"]))
    page.click("[data-testid=wizard-go]")
    # The server runs the study; the page shows it live, and the comparison names both students once cut
    # (or the wizard shows why the study was not started).
    page.wait_for_function(
        "decodeURIComponent(location.hash).match(/students=\\d+,\\d+/)"
        " || document.querySelector('[data-testid=wizard] .error-msg').textContent",
        timeout=240_000,
    )
    assert page.inner_text(f"{wizard} .error-msg") == ""
    (study,) = live_app.api.get("/workflows", params={"teacher_id": teacher["id"]}).json()
    page.wait_for_selector(f"{wizard} [data-testid=study][data-id='{study['id']}']")
    # The settings stay in the form after the launch.
    assert page.input_value(f"{wizard} [name=budget]") == "4"
    assert page.input_value(f"{wizard} [name=budget_pct]") == "95"
    ids = [
        int(x)
        for x in re.search(r"students=([\d,]+)", page.evaluate("decodeURIComponent(location.hash)"))
        .group(1)
        .split(",")
    ]
    budget = 0.95 * teacher["spec"]["params_non_embedding"]
    depth, width = (live_app.api.get(f"/students/{i}").json() for i in ids)
    assert depth["spec"]["num_layers"] == 3 and depth["spec"]["hidden_size"] == 32
    assert width["spec"]["num_layers"] == 4 and width["spec"]["hidden_size"] < 32
    assert depth["spec"]["params_non_embedding"] <= budget and width["spec"]["params_non_embedding"] <= budget
    assert study["name"] == "depth vs width at 95% of non-embedding params"
    page.wait_for_selector("[data-testid=arch-diff]")
    header = page.inner_text("[data-testid=arch-diff] thead").lower()
    assert depth["name"].lower() in header and width["name"].lower() in header
    # Close the tab mid-study: the server goes on (the workers advance the study, not the page).
    url = page.url
    page.goto("about:blank")
    deadline = time.monotonic() + 400
    while (study := live_app.api.get(f"/workflows/{study['id']}").json())["status"] == "running":
        assert time.monotonic() < deadline, study
        time.sleep(0.2)
    assert study["status"] == "succeeded", study["error"]
    page.goto(url)
    jobs = [j for j in live_app.api.get("/jobs", params={"kind": "distill"}).json() if j["student_id"] in ids]
    assert len(jobs) == 2 and jobs[0]["params"] == jobs[1]["params"] and jobs[0]["params"]["steps"] == 4
    assert jobs[0]["params"]["dataset_id"] == data["id"]
    # Evaluations and benchmarks of the teacher and both students ran after the distillations.
    queued = live_app.api.get("/jobs", params={"limit": 50, "teacher_id": teacher["id"]}).json()
    for kind in ("evaluate", "benchmark"):
        assert {j["student_id"] for j in queued if j["kind"] == kind} >= {None, *ids}
    for job in jobs:
        assert live_app.wait_job(job["id"], timeout=240)["status"] == "succeeded"
    # The reopened page shows the finished study: every step of both students and the teacher done.
    page.wait_for_selector(f"{wizard} [data-testid=study][data-id='{study['id']}']")
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=wizard] [data-testid=study] li.done').length === 12"
    )
    shot(page, "compare-study")
    # The open comparison picks the finished curves up by itself (it polls while shown).
    page.wait_for_function(
        "(document.querySelector('[data-testid=compare-curves]').data || []).length === 2", timeout=30_000
    )
    shot(page, "compare-depth-vs-width")

    # The students' evaluations and benchmarks measure the distilled weights (each waited for its
    # distillation), and the table says so.
    distill_of = {j["student_id"]: j["id"] for j in jobs}
    measuring = [
        j
        for j in queued
        if j["kind"] in ("evaluate", "benchmark")
        and j["student_id"] in ids
        and j["params"].get("weights") != "pruned"
    ]
    assert len(measuring) == 4
    for job in measuring:
        assert job["params"]["distill_job_id"] == distill_of[job["student_id"]]
        assert live_app.wait_job(job["id"], timeout=240)["status"] == "succeeded"
    # Each student's pruned weights were evaluated too (queued as soon as it was cut), with the same
    # evaluation settings: the perplexity before distillation.
    pruned = [j for j in queued if j["student_id"] in ids and j["params"].get("weights") == "pruned"]
    assert sorted(j["student_id"] for j in pruned) == sorted(ids) and all(
        j["kind"] == "evaluate" for j in pruned
    )
    after = {j["student_id"]: j for j in measuring if j["kind"] == "evaluate"}
    for job in pruned:
        assert job["params"]["distill_job_id"] is None
        assert {**job["params"], "weights": None, "distill_job_id": None} == {
            **after[job["student_id"]]["params"],
            "weights": None,
            "distill_job_id": None,
        }
        assert live_app.wait_job(job["id"], timeout=240)["status"] == "succeeded"
    page.reload()
    page.wait_for_selector("[data-testid=bench-table]")
    labels = page.locator("[data-testid=bench-table] [data-testid=measured-weights]").all_inner_texts()
    assert sorted(labels[1:]) == sorted(f"student · distilled (job {distill_of[i]})" for i in ids), labels

    # "perplexity" is each student's distilled evaluation, "ppl pruned" its pruned one, as the table
    # formats numbers; the teacher has no pruned evaluation (blank).
    results = {
        r["job_id"]: r["perplexity"]["perplexity"]
        for m in live_app.api.get(f"/compare?students={ids[0]},{ids[1]}").json()["models"]
        for r in m["evaluations"]
    }
    table = page.evaluate(
        """() => {
          const t = document.querySelector('[data-testid=bench-table]');
          return {
            head: [...t.querySelectorAll('thead th')].map((th) => [th.textContent, th.title]),
            rows: [...t.querySelectorAll('tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent)),
            tips: [...t.querySelectorAll('tbody tr')].map((tr) => [...tr.children].map((td) => td.title)),
          };
        }"""
    )
    head = [text for text, _ in table["head"]]
    ppl, before = head.index("perplexity"), head.index("ppl pruned")
    assert before == ppl + 1 and "before distillation" in table["head"][before][1]
    assert "distilled" in table["head"][ppl][1]

    def shown(values: list[float]) -> list[str]:
        # The table's own number format (frontend/js/format.js), run in the page.
        return page.evaluate(
            "async (xs) => { const f = await import('/js/format.js');"
            " return xs.map((v) => (v >= 1e5 ? f.compact(v) : f.sig(v))); }",
            values,
        )

    pruned_of = {j["student_id"]: j["id"] for j in pruned}
    rows = table["rows"][1:]  # the teacher first, then the students in the URL's order
    assert [r[before] for r in rows] == shown([results[pruned_of[i]] for i in ids])
    assert [r[ppl] for r in rows] == shown([results[after[i]["id"]] for i in ids])
    assert table["rows"][0][before] == "–"
    # Each cell names the evaluation it shows (4 distillation steps may not move 4 significant digits).
    # (The protocol it was measured on sits between the two: " on demo · test · 4 docs · ...".)
    tips = table["tips"][1:]
    for i, tip in zip(ids, tips, strict=True):
        job = pruned_of[i]
        assert tip[before].startswith(f"evaluate job {job} (pruned weights)"), tip[before]
        assert tip[before].endswith(f": {results[job]}"), tip[before]
        job = after[i]["id"]
        assert tip[ppl].startswith(f"evaluate job {job} (distilled weights)"), tip[ppl]
        assert tip[ppl].endswith(f": {results[job]}"), tip[ppl]
