"""Issue 13's planner ergonomics and issue 10's memory line in every form, in Chromium against the live app
(API + real worker). Each test fails without its feature: whole layer columns are click targets and the
chart has a log scale; its caption names the Gromov line only when that scan ran; rank stability follows
the aggregation and says what it measures; the preview never saves a draft without saying so; rounding
widths to hardware multiples shows its cost in parameters; the cut's out-of-core mode is a control; the
teacher form offers an existing teacher instead of registering a copy; a field's error keeps the form's
rows in line; a job page does not repeat its own result; evaluate / benchmark / preview / importance
forms show their memory estimate. One teacher, two importance runs and a student, made once."""

from __future__ import annotations

import re

import pytest

from backend import fleet
from tests.conftest import settings_from
from tests.platform.helpers import make_dataset
from tests.ui.conftest import doc_shot, shot

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def setup(live_app):
    api = live_app.api
    # A small evaluation protocol (4 documents, not 64): the preview below measures the teacher on it.
    body = {"name": "tiny", "source": str(live_app.teacher_dir), "eval_protocol": {"max_documents": 4}}
    teacher = api.post("/teachers", json=body).json()
    assert live_app.wait_job(teacher["job_id"])["status"] == "succeeded"
    data = make_dataset(live_app, documents=40)
    body = {
        "teacher_id": teacher["id"],
        "dataset_id": data["id"],
        "samples": 8,
        "seq_len": 32,
        "batch_size": 4,
    }
    plain = api.post("/importance-runs", json=body).json()
    angular = api.post("/importance-runs", json={**body, "scans": ["bi", "block", "angular"]}).json()
    for run in (plain, angular):
        assert live_app.wait_job(run["job_id"])["status"] == "succeeded"
    plan = api.post(
        "/plans", json={"teacher_id": teacher["id"], "name": "p", "plan": {"drop_layers": [3]}}
    ).json()
    student = api.post("/students", json={"plan_id": plan["id"], "name": "s"}).json()
    assert live_app.wait_job(student["job_id"])["status"] == "succeeded"
    return {
        "teacher": api.get(f"/teachers/{teacher['id']}").json(),
        "plain": plain,
        "angular": angular,
        "student": api.get(f"/students/{student['id']}").json(),
        "data": data,
    }


def open_explorer(page, live_app, run_id: int, query: str = ""):
    page.goto(f"{live_app.url}/#/explore/{run_id}{query}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.wait_for_selector("[data-testid=layers-plot] .main-svg")


def empty_point_of_column(page, index: int) -> dict:
    """A point in column `index` of the layer chart as far as possible from its bar (whose span runs
    from 0 to its value): the click lands on the column, not on the bar."""
    return page.evaluate(
        """(i) => {
          const el = document.querySelector("[data-testid=layers-plot]");
          const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis;
          const box = el.getBoundingClientRect();
          const v = el.data[0].y[i];
          const ends = [ya.l2p(0), ya.l2p(v)];
          const [lo, hi] = [Math.max(0, Math.min(...ends)), Math.min(ya._length, Math.max(...ends))];
          const candidates = [4, ya._length - 4];
          const gap = (y) => (y < lo ? lo - y : y > hi ? y - hi : 0);
          const y = candidates.reduce((a, b) => (gap(b) > gap(a) ? b : a));
          return { x: box.left + xa._offset + xa.l2p(i), y: box.top + ya._offset + y, gap: gap(y) };
        }""",
        index,
    )


def test_layer_columns_are_click_targets_with_a_log_scale_and_an_honest_caption(page, live_app, setup):
    open_explorer(page, live_app, setup["plain"]["id"])
    caption = page.inner_text("[data-testid=layers-caption]")
    assert "click anywhere in a column" in caption and "Gromov" not in caption  # this run has no angular scan
    # The shortest block-scan bar: a click in the empty part of its column drops its block.
    y = page.evaluate("document.querySelector('[data-testid=layers-plot]').data[0].y")
    shortest = min(range(len(y)), key=lambda i: abs(y[i]))
    point = empty_point_of_column(page, shortest)
    assert point["gap"] > 40  # really outside the bar
    page.mouse.move(point["x"], point["y"])
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function("document.querySelector('[data-testid=shape] .value').innerText.startsWith('2L')")

    page.click("[data-testid=layer-scale] button:has-text('log')")
    page.wait_for_function(
        "document.querySelector('[data-testid=layers-plot]')._fullLayout.yaxis.type === 'log'"
    )
    assert "lscale=log" in page.evaluate("location.hash")
    page.click("[data-testid=layer-metric] button:has-text('Block Importance')")  # positive scores
    page.wait_for_function(
        "document.querySelector('[data-testid=layers-plot]')._fullLayout.title.text.startsWith('Block Importance')"
    )
    doc_shot(page, "explorer-layers")

    open_explorer(page, live_app, setup["angular"]["id"])
    assert "angular distance (Gromov)" in page.inner_text("[data-testid=layers-caption]")


def test_rank_stability_follows_the_aggregation_and_explains_itself(page, live_app, setup):
    run = setup["plain"]["id"]
    open_explorer(page, live_app, run)
    help_ = page.locator("[data-testid=stability-help]")
    assert help_.get_attribute("data-agg") == "l2/mean"
    title = help_.get_attribute("title")
    assert "Spearman" in title and "two halves" in title and "aggregation" in title
    depth_help = page.get_attribute("[data-testid=depth-stability-help]", "title")
    # What it says is what the scores do: BI follows the aggregation (it said no depth ρ moved), drop does not.
    assert "BI and angular" in depth_help and "follows the aggregation" in depth_help
    assert "drop and block k are loss increases" in depth_help and "does not move" in depth_help
    l2, var = (
        live_app.api.get(f"/importance-runs/{run}/stability", params={"batch": b, "seq": "mean"}).json()
        for b in ("l2", "var")
    )
    assert l2["drop_loss"] == var["drop_loss"]
    with page.expect_request(lambda r: "/stability" in r.url and "batch=var" in r.url):
        page.click("[data-testid=agg-batch] button:has-text('var')")
    page.wait_for_selector("[data-testid=stability-help][data-agg='var/mean']")
    want = live_app.api.get(
        f"/importance-runs/{run}/stability", params={"batch": "var", "seq": "mean"}
    ).json()
    assert page.inner_text("[data-testid=stability-heads]").startswith(f"heads ρ={want['heads']:.2f}")


def plan_names(live_app, teacher_id: int) -> set[str]:
    plans = live_app.api.get("/plans", params={"teacher_id": teacher_id, "limit": 1000}).json()
    return {p["name"] for p in plans}


def test_preview_says_it_saves_a_draft_and_shows_its_memory(page, live_app, setup):
    teacher, run = setup["teacher"], setup["plain"]["id"]
    # The default name `plan-<run>` is taken: the label names the numbered one the save will use.
    if f"plan-{run}" not in plan_names(live_app, teacher["id"]):
        body = {"teacher_id": teacher["id"], "name": f"plan-{run}", "plan": {"drop_layers": [3]}}
        assert live_app.api.post("/plans", json=body).status_code == 201
    taken = plan_names(live_app, teacher["id"])
    numbered = next(f"plan-{run} ({n})" for n in range(2, 100) if f"plan-{run} ({n})" not in taken)
    open_explorer(page, live_app, run)
    assert page.inner_text("[data-testid=preview-memory]").startswith("needs ")
    page.click("[data-testid=layers-plot]")  # drop a block of layers: an unsaved draft
    page.wait_for_function("document.querySelector('[data-testid=shape] .value').innerText.startsWith('2L')")
    button = page.locator("[data-testid=preview-btn]")
    assert button.inner_text() == "Save & preview" and "saves the draft" in button.get_attribute("title")
    page.wait_for_function(  # the teacher's plan names arrive after the first paint
        "([el, want]) => el.title.includes(want)", arg=[button.element_handle(), f'a new plan "{numbered}"']
    )
    before = len(live_app.api.get("/plans", params={"teacher_id": teacher["id"]}).json())
    button.click()
    page.wait_for_function("location.hash.includes('plan=')")
    plans = live_app.api.get("/plans", params={"teacher_id": teacher["id"]}).json()
    assert len(plans) == before + 1
    assert max(plans, key=lambda p: p["id"])["name"] == numbered  # the name the label announced
    assert "to preview it" in page.inner_text("[data-testid=planner]")
    page.wait_for_function(
        "document.querySelector('[data-testid=preview-btn]').innerText === 'Preview perplexity'"
    )
    version = max(plans, key=lambda p: p["id"])["version"]
    button.click()  # a saved plan: previewed as it is, nothing written
    page.wait_for_timeout(500)
    after = live_app.api.get("/plans", params={"teacher_id": teacher["id"]}).json()
    assert len(after) == before + 1 and max(after, key=lambda p: p["id"])["version"] == version


def test_a_quick_preview_reads_a_small_sample_not_the_protocol(page, live_app, setup):
    """On the teacher's protocol a preview reads every window of its documents (the audit waited 15 min
    on the demo teacher); the quick choice sends 16 blocks of 128 tokens and says what it measured."""
    teacher, run = setup["teacher"], setup["plain"]["id"]
    body = {"teacher_id": teacher["id"], "name": "quick-look", "plan": {"drop_layers": [2]}}
    plan = live_app.api.post("/plans", json=body).json()
    open_explorer(page, live_app, run, f"?plan={plan['id']}")
    page.wait_for_function(
        "document.querySelector('[data-testid=preview-btn]').innerText === 'Preview perplexity'"
    )
    assert "on the teacher's protocol (4 docs)" in page.inner_text("[data-testid=preview-on]")
    page.select_option("[data-testid=preview-on]", "quick")
    with page.expect_request(lambda r: r.url.endswith(f"/plans/{plan['id']}/preview")) as sent:
        page.click("[data-testid=preview-btn]")
    assert sent.value.post_data_json == {"samples": 16, "seq_len": 128}
    page.wait_for_selector("[data-testid=ppl-masked]", timeout=120_000)
    job = max(live_app.api.get("/jobs", params={"kind": "preview"}).json(), key=lambda j: j["id"])
    assert job["plan_id"] == plan["id"] and job["status"] == "succeeded"
    assert (job["params"]["samples"], job["params"]["seq_len"]) == (16, 128) and "protocol" not in job[
        "params"
    ]


def test_rounding_widths_to_hardware_multiples_shows_its_cost(page, live_app, setup):
    teacher, run = setup["teacher"], setup["plain"]["id"]
    open_explorer(page, live_app, run)
    page.fill("[data-testid=fill-form] [name=intermediate_size]", "30")
    page.select_option("[data-testid=fill-form] [name=round_to]", "8")
    page.click("[data-testid=fill]")
    page.wait_for_function("document.querySelector('[data-testid=shape]').innerText.includes('MLP 32/48')")
    cost = page.locator("[data-testid=rounding-cost]")
    assert "MLP 30 → 32" in cost.inner_text()

    def params(width: int) -> int:
        filled = live_app.api.post(
            "/plans/fill",
            json={
                "teacher_id": teacher["id"],
                "importance_run_id": run,
                "targets": {"intermediate_size": width},
            },
        ).json()["plan"]
        check = live_app.api.post("/plans/validate", json={"teacher_id": teacher["id"], "plan": filled})
        return check.json()["stats"]["params_total"]

    delta = params(32) - params(30)
    assert delta == 4 * 2 * 3 * teacher["spec"]["hidden_size"]  # 2 more gated neurons in each of 4 layers
    assert int(cost.get_attribute("data-delta")) == delta
    assert f"+{delta:,} parameters" in cost.inner_text()
    doc_shot(page, "planner-rounding")


def test_a_fill_to_extreme_or_unaligned_widths_warns_under_the_form(page, live_app, setup):
    """Outside UI audit 15: an MLP of 1 neuron was filled without a word. The server's fill warnings
    (plan.fill_warnings) show under the form; a width rounded to multiples of 8 has none."""
    teacher, run = setup["teacher"], setup["plain"]["id"]
    body = {"teacher_id": teacher["id"], "importance_run_id": run, "targets": {"intermediate_size": 1}}
    answer = live_app.api.post("/plans/fill", json=body).json()
    assert [m["level"] for m in answer["messages"] if m["field"] == "targets.intermediate_size"] == [
        "warning"
    ]
    open_explorer(page, live_app, run)
    form, warnings = "[data-testid=fill-form]", "[data-testid=fill-warnings]"

    def fill(width: str, round_to: str = "") -> str:
        page.fill(f"{form} [name=intermediate_size]", width)
        page.select_option(f"{form} [name=round_to]", round_to)
        page.click("[data-testid=fill]")
        want = f"MLP {int(width) if not round_to else -(-int(width) // 8) * 8}/48"
        page.wait_for_function(f"document.querySelector('[data-testid=shape]').innerText.includes({want!r})")
        return page.inner_text(warnings)

    text = fill("1")
    assert (
        "targets.intermediate_size" in text
        and "MLP width 1 of the teacher's 48" in text
        and "degenerate" in text
    )
    assert page.locator(f"{warnings} li.warning").count() == 1
    text = fill("30")
    assert "MLP width 30 in every kept layer is not a multiple of 8" in text and "degenerate" not in text
    assert fill("30", "8") == ""  # rounded to 32: nothing to say
    shot(page, "planner-fill-warnings")


def test_a_bakeoff_filled_on_the_server_keeps_and_shows_its_fill_warnings(page, live_app, setup):
    """A bake-off candidate given as targets is filled by the server (backend/api/workflows.py): its plan
    keeps the fill's warnings as POST /plans/fill says them, and the bake-off's page shows them under the
    candidate (they were dropped: an MLP of 30 went to distillation without a word)."""
    teacher, run, data = setup["teacher"], setup["plain"]["id"], setup["data"]
    body = {
        "teacher_id": teacher["id"],
        "importance_run_id": run,
        "candidates": [{"targets": {"intermediate_size": 30}}, {"targets": {"intermediate_size": 32}}],
        "distill": {"steps": 2, "batch_size": 2, "seq_len": 32, "val_every": 0, "dataset_id": data["id"]},
        "evaluate": {"max_documents": 2, "seq_len": 32, "dataset_id": data["id"]},
        "benchmark": None,
    }
    created = live_app.api.post("/workflows", json=body)
    assert created.status_code == 201, created.text
    wf = created.json()
    assert live_app.api.post(f"/workflows/{wf['id']}/cancel").status_code in (200, 202)
    fill = live_app.api.post(
        "/plans/fill",
        json={"teacher_id": teacher["id"], "importance_run_id": run, "targets": {"intermediate_size": 30}},
    ).json()
    said = [(m["field"], m["text"]) for m in fill["messages"] if m["level"] == "warning"]
    assert said and "MLP width 30 in every kept layer is not a multiple of 8" in said[0][1], said
    odd, even = (b for b in wf["branches"] if b["role"] == "candidate")
    kept = live_app.api.get(f"/plans/{odd['plan_id']}").json()["messages"]
    assert [(m["field"], m["text"]) for m in kept if m["level"] == "warning"] == said
    assert not [
        m for m in live_app.api.get(f"/plans/{even['plan_id']}").json()["messages"] if m["level"] == "warning"
    ]

    page.goto(f"{live_app.url}/#/bakeoff/{wf['id']}")
    row = page.locator(f"tr[data-branch='{odd['name']}'] [data-testid=fill-warning]")
    row.wait_for()
    assert row.inner_text() == said[0][1]
    assert page.locator(f"tr[data-branch='{even['name']}'] [data-testid=fill-warning]").count() == 0


def test_the_servers_check_replaces_the_local_one_and_the_local_one_stays_when_it_fails(
    page, live_app, setup
):
    """The planner's instant local checks (costmodel.localMessages) are replaced by the server's
    (validate_plan) once it answers, so a problem is said once, in the server's words with its valid
    range (both were shown, worded apart); when the server cannot check, the local ones stay."""
    run = setup["plain"]["id"]
    messages = "[data-testid=plan-messages]"
    all_dropped = '{"drop_layers": [0, 1, 2, 3]}'
    open_explorer(page, live_app, run)
    page.evaluate(f"localStorage.setItem('prunescope.draft.run{run}', {all_dropped!r})")
    page.reload()
    page.wait_for_function(f"document.querySelector('{messages}')?.dataset.state === 'done'")
    text = page.inner_text(messages)
    assert "cannot drop all 4 layers; keep at least one (drop at most 3)" in text, text
    assert "every layer is dropped" not in text, text
    assert page.locator(f"{messages} li.error").count() == 1

    page.route("**/plans/validate", lambda route: route.abort())
    page.reload()
    page.wait_for_function(f"document.querySelector('{messages}')?.dataset.state === 'done'")
    text = page.inner_text(messages)
    assert "every layer is dropped" in text and "could not validate on the server" in text, text
    page.unroute("**/plans/validate")
    page.evaluate("localStorage.clear()")


def test_the_cut_can_be_asked_out_of_core(page, live_app, setup):
    open_explorer(page, live_app, setup["plain"]["id"])
    page.click("[data-testid=layers-plot]")  # any edit
    # The prune job's memory line follows the mode: the teacher + its cut copy in memory (on the device),
    # about one tensor out of core (in the host's RAM): jobmemory.pruneFit, what memcheck.check_prune
    # refuses by.
    line = page.locator("[data-testid=student-memory]")
    # The headline's mode is said once, and the other mode's need after it.
    needs = re.compile(
        r"needs ([\d.]+ [MG]iB) (per device \(in memory\)|of host RAM \(out of core\));.* · (.*)$"
    )
    page.select_option("[data-testid=out-of-core]", "never")
    never = needs.search(line.inner_text())
    assert never and never[2] == "per device (in memory)", line.inner_text()
    assert line.inner_text().count("in memory") == 1, line.inner_text()
    page.select_option("[data-testid=out-of-core]", "always")
    always = needs.search(line.inner_text())
    assert always and always[2] == "of host RAM (out of core)", line.inner_text()
    assert line.inner_text().count("out of core") == 1, line.inner_text()
    assert never[3] == f"out of core: {always[1]}" and always[3] == f"in memory: {never[1]}"
    assert always[1] != never[1]
    page.fill("[data-testid=student-name]", "ooc")
    page.click("[data-testid=create-student]")
    page.wait_for_selector("[data-testid=student-link]")
    student = next(s for s in live_app.api.get("/students").json() if s["name"] == "ooc")
    job = live_app.wait_job(student["job_id"])
    assert job["params"]["out_of_core"] == "always"
    assert job["status"] == "succeeded" and "out of core" in job["result"]["surgery"], job


def test_the_cut_out_of_core_fits_by_host_ram_on_a_gpu_worker(page, live_app, setup):
    """A fake GPU worker entry (a GPU too small for anything, 8 GiB of free RAM) is the gpu queue's only
    worker: the "Create student" line sizes an out-of-core cut by its host RAM and says it fits there; in
    memory it fits no worker, and the line names out_of_core=always as the API's 409 does; auto goes in
    memory (the tiny teacher is under half the free RAM) unless the worker's own threshold is lower."""
    settings = settings_from(live_app.env)
    client = fleet.client_for(settings)
    worker = {
        "hostname": "gpu-fake",
        "device": "cuda:0",
        "queues": ["gpu"],
        "pid": 77002,
        "started_at": "2026-01-01T00:00:00Z",
        "device_count": 1,
        "memory": {"kind": "cuda", "total_bytes": 100 << 20, "free_bytes": 100 << 20},  # usable: 0
        "host_memory": {"kind": "cpu", "total_bytes": 16 << 30, "free_bytes": 8 << 30},
        "out_of_core_threshold_bytes": None,
    }
    fleet.publish(client, settings.redis_prefix, worker, ttl_s=600)
    try:
        open_explorer(page, live_app, setup["plain"]["id"])
        page.click("[data-testid=layers-plot]")  # any edit
        line = page.locator("[data-testid=student-memory]")
        page.wait_for_function(
            "document.querySelector('[data-testid=student-memory]')?.textContent.includes('gpu-fake')"
        )

        def shown(mode: str) -> tuple[str, str]:
            page.select_option("[data-testid=out-of-core]", mode)
            text = line.inner_text()
            found = re.search(r"needs ([\d.]+ [MG]iB) of host RAM|out of core: ([\d.]+ [MG]iB)$", text)
            return text, found[1] or found[2]

        text, ooc = shown("always")
        assert (
            f"needs {ooc} of host RAM (out of core); fits 1 x gpu-fake host RAM (8.0 GiB) · in memory: "
            in text
        ), text
        assert "error-msg" not in (line.get_attribute("class") or "")
        nearest = f"nearest setting that fits: out_of_core=always ({ooc} of host RAM (out of core))"
        for mode in ("never", "auto"):  # auto: in memory, as the worker would (tiny teacher <= 4 GiB)
            text, _ = shown(mode)
            assert "per device (in memory); fits no live worker (largest: 0 B on gpu-fake cuda:0)" in text, (
                text
            )
            assert nearest in text, text
            assert "error-msg" in (line.get_attribute("class") or "")
        body = {"plan_id": setup["student"]["plan_id"], "name": "x", "device": "cuda", "out_of_core": "never"}
        r = live_app.api.post("/students", json=body)
        assert r.status_code == 409 and "nearest setting that fits: out_of_core=always" in r.text, r.text
        # the worker's own threshold under the teacher: auto cuts out of core there, in its RAM
        fleet.publish(client, settings.redis_prefix, {**worker, "out_of_core_threshold_bytes": 1}, ttl_s=600)
        page.reload()
        page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
        page.click("[data-testid=layers-plot]")
        page.wait_for_function(
            "document.querySelector('[data-testid=student-memory]')?.textContent.includes('gpu-fake')"
        )
        text, ooc = shown("auto")
        assert (
            f"needs {ooc} of host RAM (out of core); fits 1 x gpu-fake host RAM (8.0 GiB) · in memory: "
            in text
        ), text
    finally:
        fleet.remove(client, settings.redis_prefix, worker)


def test_the_teacher_form_offers_the_existing_teacher_and_errors_keep_rows_in_line(page, live_app, setup):
    teacher = setup["teacher"]
    page.goto(f"{live_app.url}/#/")
    page.wait_for_selector("[data-testid=teacher-list] tr")
    count = len(live_app.api.get("/teachers").json())
    page.fill("[data-testid=teacher-form] [name=name]", "again")
    page.fill("[data-testid=teacher-form] [name=source]", str(live_app.teacher_dir) + "/")
    page.click("[data-testid=teacher-form] button[type=submit]")
    note = page.locator("[data-testid=teacher-duplicate]")
    note.wait_for()
    same = [t for t in live_app.api.get("/teachers").json() if t["source"] == teacher["source"]]
    assert any(f'teacher #{t["id"]} "{t["name"]}"' in note.inner_text() for t in same), note.inner_text()
    page.wait_for_timeout(300)
    assert len(live_app.api.get("/teachers").json()) == count  # one click registered nothing
    page.click("[data-testid=open-existing-teacher]")
    page.wait_for_selector("[data-testid=arch-summary]")
    assert "teacher=" in page.evaluate("location.hash")

    # A field's error sits in a strip every field of the grid reserves: each row stays in line, the
    # message covers no label and no input.
    form = "[data-testid=importance-form]"
    page.wait_for_selector(f"{form} [name=samples]")
    inputs = page.locator(f"{form} .form-grid input, {form} .form-grid select")

    def rows() -> list[list[float]]:
        """The inputs' top edges, grouped by row (the rows as laid out before the error)."""
        ys = [inputs.nth(i).bounding_box()["y"] for i in range(inputs.count())]
        return [[y for y, r in zip(ys, layout, strict=True) if r == row] for row in sorted(set(layout))]

    layout = [round(inputs.nth(i).bounding_box()["y"]) for i in range(inputs.count())]
    page.fill(f"{form} [name=samples]", "200000")  # above the API's limit: its 422 names the field
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(f"{form} label.field:has([name=samples]) > .field-error")
    assert "invalid" in page.get_attribute(f"{form} [name=samples]", "class")
    assert all(max(row) - min(row) < 1 for row in rows())  # every row in line
    note = page.locator(f"{form} label.field:has([name=samples]) > .field-error").bounding_box()
    others = page.locator(
        f"{form} .form-grid label.field > span, {form} .form-grid input, {form} .form-grid select"
    )
    for i in range(others.count()):
        box = others.nth(i).bounding_box()
        overlap = not (
            note["x"] + note["width"] <= box["x"]
            or box["x"] + box["width"] <= note["x"]
            or note["y"] + note["height"] <= box["y"]
            or box["y"] + box["height"] <= note["y"]
        )
        assert not overlap, (i, note, box)
    doc_shot(page, "teachers-field-error")

    page.fill("[data-testid=teacher-form] [name=source]", str(live_app.teacher_dir))
    page.click("[data-testid=teacher-form] button[type=submit]")
    page.click("[data-testid=register-copy]")  # a second deliberate click: a copy on purpose
    page.wait_for_function(
        f"document.querySelectorAll('[data-testid=teacher-list] tbody tr').length === {count + 1}"
    )


def test_importance_form_estimates_the_streamed_layout_with_its_samples(page, live_app, setup):
    page.goto(f"{live_app.url}/#/?teacher={setup['teacher']['id']}")
    form = "[data-testid=importance-form]"
    page.wait_for_selector(f"{form} [data-testid=memory-estimate]:not(:empty)")
    line = page.locator(f"{form} [data-testid=memory-estimate]")
    assert "streamed" not in line.inner_text()
    page.select_option(f"{form} [name=offload]", "always")
    page.wait_for_function(
        f"document.querySelector('{form} [data-testid=memory-estimate]').textContent.includes('streamed layer by layer')"
    )
    small = line.inner_text()
    page.fill(f"{form} [name=samples]", "4096")
    page.wait_for_function(
        f"document.querySelector('{form} [data-testid=memory-estimate]').textContent.includes('4096 samples')"
    )
    stores = lambda text: re.search(r"([\d.]+ [MG]iB) of activation stores", text).group(1)  # noqa: E731
    assert stores(line.inner_text()) != stores(small)


def test_job_page_lists_other_measurements_and_runs_show_the_memory_of_evaluate_and_benchmark(
    page, live_app, setup
):
    student = setup["student"]
    page.goto(f"{live_app.url}/#/runs?student={student['id']}")
    mem = page.locator("[data-testid=student-detail] [data-testid=measure-memory]")
    page.wait_for_function(
        "document.querySelector('[data-testid=student-detail] [data-testid=measure-memory]')?.textContent.includes('benchmark')"
    )
    assert re.match(
        r"evaluate needs [\d.]+ [MG]iB per device.* · benchmark \(with the teacher\) needs", mem.inner_text()
    )

    def evaluate() -> int:
        r = live_app.api.post(
            "/jobs", json={"kind": "evaluate", "student_id": student["id"], "params": {"max_documents": 2}}
        )
        assert r.status_code == 201, r.text
        assert live_app.wait_job(r.json()["id"])["status"] == "succeeded"
        return r.json()["id"]

    first = evaluate()
    page.goto(f"{live_app.url}/#/job/{first}")
    panel = page.locator("[data-testid=student-benchmarks]")
    panel.locator(".empty, a").first.wait_for()
    assert "Other measurements of this student" in panel.inner_text()
    assert f"evaluate #{first}" not in panel.inner_text()  # its own result is under Result, once
    second = evaluate()
    page.reload()
    panel.locator(f"a:has-text('evaluate #{second}')").wait_for()
    assert f"evaluate #{first}" not in panel.inner_text()
    # The log panel of an evaluation: its phases and the worker's own Python log lines.
    log = page.locator("[data-testid=job-log]").inner_text()
    assert "worker.engine.loading: loaded " in log and "perplexity: 0 of 2 documents" in log
    doc_shot(page, "job-evaluate-log")


def test_the_study_wizard_shows_what_its_largest_step_needs(page, live_app, setup):
    page.goto(f"{live_app.url}/#/compare")
    wizard = "[data-testid=wizard]"
    page.wait_for_selector(f"{wizard} [name=budget_pct]")
    page.fill(
        f"{wizard} [name=budget_pct]", "90"
    )  # both a depth and a width student fit 90% of the tiny teacher
    line = page.locator(f"{wizard} [data-testid=study-memory]")
    page.wait_for_function(
        f"document.querySelector('{wizard} [data-testid=study-memory]')?.textContent.includes('2 students')"
    )
    text = line.inner_text()
    assert re.match(
        r"largest step \(distilling the bigger of the 2 students\) needs [\d.]+ [MG]iB per device", text
    )

    def size(t: str) -> float:
        value, unit = re.search(r"needs ([\d.]+) ([MG])iB", t).groups()
        return float(value) * (1024 if unit == "G" else 1)

    page.click(f"{wizard} details > summary")  # the distillation settings
    page.fill(f"{wizard} [name=batch_size]", "64")  # live: a bigger distillation batch needs more
    page.wait_for_function(
        f"(before) => document.querySelector('{wizard} [data-testid=study-memory]').textContent !== before",
        arg=text,
    )
    assert size(line.inner_text()) > size(text)
