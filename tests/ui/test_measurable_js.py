"""The Runs page's choice of weights to measure offers the distillations the API accepts: serverconfig.js's
MEASURABLE_DISTILLS (run in node) is backend/api/jobs.py's MEASURABLE."""

from __future__ import annotations

from backend.api.jobs import MEASURABLE
from tests.ui.dashboard_js import run_dashboard_js


def test_weights_choice_offers_the_distillations_the_api_measures(tmp_path):
    driver = (
        'import { MEASURABLE_DISTILLS } from "./js/serverconfig.js";\n'
        "process.stdout.write(JSON.stringify(MEASURABLE_DISTILLS));\n"
    )
    assert run_dashboard_js(tmp_path, driver) == list(MEASURABLE)
