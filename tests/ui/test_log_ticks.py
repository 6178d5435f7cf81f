"""Log y axes (frontend/js/plots.js logTicks), run in node: a series spanning under a decade gets a few
round ticks inside its range, not a label at every digit (outside UI audit 23: a short validation
series and the learning rate were a stack of "1e-4 9e-5 8e-5 …")."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.ui.dashboard_js import run_dashboard_js


def log_ticks(tmp_path: Path, series: list[list[float]]) -> list[dict]:
    driver = (
        'import { logTicks } from "./js/plots.js";\n'
        f"const series = {json.dumps(series)};\n"
        "process.stdout.write(JSON.stringify(series.map((s) => logTicks(s))));\n"
    )
    return run_dashboard_js(tmp_path, driver)


def test_under_a_decade_a_few_round_ticks_inside_the_range(tmp_path):
    series = [[4145.1, 4146.6, 4148.3, 4149.6], [8.3297, 8.3301, 8.3308], [2.1, 3.4, 9.7], [0.0027, 0.003]]
    for values, ticks in zip(series, log_ticks(tmp_path, series), strict=True):
        assert ticks["tickmode"] == "array", (values, ticks)
        vals = ticks["tickvals"]
        assert 2 <= len(vals) <= 6, (values, vals)
        assert min(values) <= vals[0] and vals[-1] <= max(values), (values, vals)
        steps = {round(b - a, 12) for a, b in zip(vals, vals[1:])}
        assert len(steps) == 1, (values, vals)  # evenly spaced
        (step,) = steps
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1, 2, 5), (values, vals)  # round values: 1, 2 or 5 x 10^k apart


def test_over_a_decade_one_two_five_and_over_three_decades_plotly_s_own(tmp_path):
    lr = [5e-6, 2e-5, 6e-5, 1e-4]  # a warm-up and decay: 1.3 decades
    wide = [1.0, 50.0, 4000.0]
    flat = [7.0, 7.0]
    assert log_ticks(tmp_path, [lr, wide, flat, [], [0.0, -1.0]]) == [
        {"dtick": "D2"},
        {},
        {"tickmode": "array", "tickvals": [7.0]},
        {},
        {},
    ]
