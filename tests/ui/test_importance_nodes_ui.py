"""The importance form's Nodes field (frontend/js/views/teachers.js): its memory line counts the workers
a `nodes: M` run needs, and flags one the live workers cannot form (the API's 409), on the shared app
(one worker)."""

from __future__ import annotations

import pytest

from backend.schemas import GangWait
from worker.engine import memplan

pytestmark = pytest.mark.ui
IMP = "[data-testid=importance-form]"
LINE = f"{IMP} [data-testid=memory-estimate]"


def test_importance_form_nodes_field_and_memory_line(page, live_app, shared_run):
    teacher = shared_run["teacher"]
    page.goto(f"{live_app.url}/#/teachers?teacher={teacher['id']}")
    page.wait_for_function(f"document.querySelector('{LINE}')?.textContent.includes('needs')")
    assert page.locator(f"{IMP} input[name=gang_timeout_s]").is_disabled()  # one node: no gang to wait for
    page.fill(f"{IMP} input[name=nodes]", "2")
    need = memplan.importance_memory(
        memplan.spec_from_summary(teacher["spec"]),
        batch_size=8,
        seq_len=128,
        scans=("bi", "drop", "block"),
        block_size=2,
        samples=64,
        device="cpu",
    )["total"]
    want = f"needs {memplan.format_bytes(need)} per device on each of 2 workers (2 ranks)"
    page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes({want!r})")
    text = page.locator(LINE).inner_text()
    assert "only 1 live worker(s) with 1 device(s) can hold a node, 2 needed" in text, text
    assert "error-msg" in (page.locator(LINE).get_attribute("class") or "")
    # The Wait-for-nodes field goes with a run over 2 nodes as gang_timeout_s (the request as sent: the
    # API refuses 2 nodes of this one worker with a 409); left blank, no gang_timeout_s.
    wait = page.locator(f"{IMP} input[name=gang_timeout_s]")
    assert wait.is_enabled()
    # The field's bounds are the API's (5 s to 7 days).
    limits = {type(m).__name__: m for m in GangWait.model_fields["gang_timeout_s"].metadata}
    assert (float(wait.get_attribute("min")), float(wait.get_attribute("max"))) == (
        limits["Ge"].ge,
        limits["Le"].le,
    )
    for typed, sent in (("45", {"gang_timeout_s": 45}), ("", {})):
        wait.fill(typed)
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/importance-runs")) as req:
            page.click(f"{IMP} button[type=submit]")
        body = req.value.post_data_json
        assert body["nodes"] == 2 and {k: v for k, v in body.items() if k == "gang_timeout_s"} == sent, body
        # Said once, under the field the 409 names (api.showError).
        page.locator(f"{IMP} .field-error", has_text="use nodes <= 1").wait_for()
    page.fill(f"{IMP} input[name=nodes]", "1")
    page.wait_for_function(f"!document.querySelector('{LINE}').textContent.includes('workers (')")
    assert wait.is_disabled()  # one node: no gang to wait for
