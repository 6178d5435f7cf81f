"""The explorer on a non-uniform teacher (real Chromium, live API + Celery worker): a pruned student whose
layer 0 keeps 4 of 8 heads (one per KV group) and layer 1 40 of 48 MLP neurons is promoted and scored;
the heads map draws layer 0's padding dark and its own KV-group rules, a click on the padding marks
nothing, a click on a real head marks it; a box over layer 1's neuron padding marks only its 40 real neurons."""

from __future__ import annotations

import pytest

from tests.platform.helpers import make_dataset, make_student
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui
PLAN = {"remove_heads": {"0": [1, 3, 5, 7]}, "remove_neurons": {"1": list(range(40, 48))}}


def draft(page, rid: int) -> dict:
    return page.evaluate(f"JSON.parse(localStorage.getItem('prunescope.draft.run{rid}')) || {{}}")


def test_padding_of_narrower_layers_is_dark_and_cannot_be_marked(page, live_app):
    api = live_app.api
    student = make_student(live_app, plan=PLAN)
    teacher = api.post(f"/students/{student['id']}/promote", json={"name": "ragged"}).json()
    assert live_app.wait_job(teacher["job_id"])["status"] == "succeeded"
    dataset = make_dataset(live_app, documents=20)
    body = {"teacher_id": teacher["id"], "dataset_id": dataset["id"], "samples": 4, "seq_len": 32}
    run = api.post("/importance-runs", json={**body, "scans": ["bi"]}).json()
    assert live_app.wait_job(run["job_id"])["status"] == "succeeded"
    rid = run["id"]
    heads = api.get(f"/importance-runs/{rid}/heads").json()
    assert heads["heads"] == 8 and heads["widths"][:2] == [4, 8]

    page.goto(f"{live_app.url}/#/explore/{rid}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.evaluate("localStorage.clear()")
    page.reload()
    # Every map drawn: a map that fills in later would move the cells below it under the mouse.
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert "4 layers × 4–8 heads (4 KV groups) · MLP 40–48" in page.inner_text("[data-testid=teacher-shape]")

    box = page.locator("[data-testid=heads-map]").bounding_box()
    row = 18  # the heads map's row height for a few layers

    def head_cell(layer: int, head: int):
        return box["x"] + (head + 0.5) * box["width"] / 8, box["y"] + (layer + 0.5) * row

    # The padding cell's pixel is the dark "no value" grey, a real head's is not.
    colours = page.evaluate(
        """([x0, y0, x1, y1]) => {
            const c = document.querySelector('[data-testid=heads-map]');
            const r = c.getBoundingClientRect(), sx = c.width / r.width, sy = c.height / r.height;
            const at = (x, y) => Array.from(c.getContext('2d').getImageData((x - r.left) * sx, (y - r.top) * sy, 1, 1).data);
            return [at(x0, y0), at(x1, y1)];
        }""",
        [*head_cell(0, 6), *head_cell(0, 1)],
    )
    assert colours[0][:3] == [40, 40, 40] and colours[1][:3] != [40, 40, 40]
    # KV-group rules per layer: layer 0 has one head per group (a rule after head 0), layer 2 two.
    rule_x = box["x"] + box["width"] / 8
    rules = page.evaluate(
        """([x, y0, y2]) => {
            const c = document.querySelector('[data-testid=heads-map]');
            const r = c.getBoundingClientRect(), sx = c.width / r.width, sy = c.height / r.height;
            const at = (x, y) => Array.from(c.getContext('2d').getImageData((x - r.left) * sx, (y - r.top) * sy, 1, 1).data);
            return [at(x, y0), at(x, y2)];
        }""",
        [rule_x, head_cell(0, 0)[1], head_cell(2, 0)[1]],
    )
    assert rules[0][:3] == [14, 17, 22] and rules[1][:3] != [14, 17, 22]

    page.click("[data-testid=head-mode] button[data-value=heads]")  # single heads (GQA: groups by default)
    page.mouse.move(*head_cell(0, 6))
    page.wait_for_function("document.body.innerText.includes('has 4 heads')")
    page.mouse.click(*head_cell(0, 6))
    assert not draft(page, rid).get("remove_heads")
    page.mouse.click(*head_cell(0, 1))
    assert draft(page, rid)["remove_heads"] == {"0": [1]}

    # A box from neuron 30 to the last column of layer 1 marks its real neurons 30..39 only.
    nbox = page.locator("[data-testid=neurons-map]").bounding_box()
    page.click("[data-testid=neuron-order] >> text=natural")
    page.wait_for_timeout(300)
    nbox = page.locator("[data-testid=neurons-map]").bounding_box()
    nrow = 16  # the neurons map's row height for a few layers
    y = nbox["y"] + 1.5 * nrow
    page.mouse.move(nbox["x"] + 30.5 * nbox["width"] / 48, y)
    page.mouse.down()
    page.mouse.move(nbox["x"] + nbox["width"] - 1, y, steps=6)
    page.mouse.up()
    assert draft(page, rid)["remove_neurons"] == {"1": list(range(30, 40))}
    shot(page, "explorer-non-uniform")

    # Fill to target: the form names the narrowest layer; 36 channels are kept in every layer.
    form = "[data-testid=fill-form]"
    assert "MLP size (≤ 40, narrowest)" in page.text_content(form)
    page.fill(f"{form} [name=intermediate_size]", "36")
    page.click("[data-testid=fill]")
    page.wait_for_function(
        f"Object.keys((JSON.parse(localStorage.getItem('prunescope.draft.run{rid}')) || {{}}).remove_neurons || {{}}).length === 4"
    )
    widths = [48, 40, 48, 48]
    assert [len(draft(page, rid)["remove_neurons"][str(i)]) for i in range(4)] == [w - 36 for w in widths]
