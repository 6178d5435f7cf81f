"""The dashboard's number formats (frontend/js/format.js), run in node: FLOPs use SI prefixes (a Llama-8B
token is 16 GFLOP, not the "B" of parameter counts)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ui.dashboard_js import run_dashboard_js


def js_format(tmp_path: Path, calls: list[tuple[str, float]]) -> list[str]:
    driver = (
        'import * as f from "./js/format.js";\n'
        f"const calls = {json.dumps(calls)};\n"
        "process.stdout.write(JSON.stringify(calls.map(([fn, x]) => f[fn](x))));\n"
    )
    return run_dashboard_js(tmp_path, driver)


def test_flops_use_si_prefixes(tmp_path):
    calls = [("flops", 3.15e7), ("flops", 1.606e10), ("flops", 2e12), ("flops", 512), ("compact", 8.03e9)]
    assert js_format(tmp_path, calls) == ["31.5 MFLOP", "16.1 GFLOP", "2.00 TFLOP", "512 FLOP", "8.03B"]


def test_rates_milliseconds_and_ratios_carry_their_units(tmp_path):
    calls = [
        ("rate", 8.393e6),
        ("rate", 512.4),
        ("ms", 0.000412),
        ("ms", 0.01234),
        ("ms", 1.2344),
        ("times", 1.8666),
        ("times", None),
    ]
    expected = ["8.39M tok/s", "512 tok/s", "0.412 ms", "12.3 ms", "1234 ms", "1.87×", "–"]
    assert js_format(tmp_path, calls) == expected
    # The same numbers as Python reads them: 3 significant digits, ratio to 2 decimals.
    assert f"{8.393e6 / 1e6:.3g}M tok/s" == expected[0]
    assert f"{1.8666:.2f}×" == expected[5]


def test_memory_figures_are_binary_units_written_as_python_writes_them(tmp_path):
    """format.js `bytes` is the dashboard's one memory format, the mirror of memplan.format_bytes (the
    API's 409s, the worker's logs): the same text for the same bytes, in B / KiB / MiB / GiB / TiB."""
    from worker.engine.memplan import format_bytes

    values = [
        0,
        384,
        1023,
        1024,
        1536,
        157_600_000,
        1 << 29,
        17.5 * 2**30,
        141 * 2**30,
        12_345_678_901,
        3 * 2**40,
        # exact ties at one decimal: Python rounds them half to even (toFixed would round 1.25 up)
        1.25 * 2**30,
        1.75 * 2**30,
        2.25 * 2**20,
        -0.75 * 2**30,
    ]
    shown = js_format(tmp_path, [("bytes", v) for v in values])
    assert shown == [format_bytes(v) for v in values]
    assert shown == [
        "0 B",
        "384 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "150.3 MiB",
        "512.0 MiB",
        "17.5 GiB",
        "141.0 GiB",
        "11.5 GiB",
        "3.0 TiB",
        "1.2 GiB",
        "1.8 GiB",
        "2.2 MiB",
        "-768.0 MiB",
    ]


def test_a_loss_column_has_one_precision_that_shows_its_differences(tmp_path):
    """Audit finding 18: the bake-off ranking printed "4.35" beside "4.3495" and "4.331" above "4.3689"
    (significant digits, trailing zeros dropped). A column of losses now has one number of decimals, at
    least 3 and as many as it takes to tell its numbers apart."""
    driver = (
        'import * as f from "./js/format.js";\n'
        "const cols = [[4.35, 4.3495, 4.331, 4.3689], [4.5707, 4.6597], [2, 2], [4.12345, 4.12346], [null, 3.1], [4.3, 4.3004]];\n"
        "process.stdout.write(JSON.stringify(cols.map((c) => { const d = f.columnDecimals(c);"
        " return c.map((x) => f.fixed(x, d)); })));\n"
    )
    assert run_dashboard_js(tmp_path, driver) == [
        ["4.350", "4.349", "4.331", "4.369"],
        ["4.571", "4.660"],
        ["2.000", "2.000"],
        ["4.12345", "4.12346"],
        ["–", "3.100"],
        ["4.3000", "4.3004"],
    ]
