"""A model's shape in one line: the dashboard's `shapeLabel` (frontend/js/searchmath.js, run in node) is
the server's `worker.engine.spec.shape_label` (the name of a bake-off's candidates and students), the
same text for the same specs: uniform and non-uniform cuts, whole KV groups cut, experts, no teacher."""

from __future__ import annotations

import json
from pathlib import Path

from tests.real_shapes import llama_3_1_8b, qwen3_30b_a3b
from tests.ui.dashboard_js import run_dashboard_js
from worker.engine.spec import LayerShape, shape_label


def js_labels(tmp_path: Path, cases: list[tuple]) -> list[str | None]:
    driver = (
        'import { shapeLabel } from "./js/searchmath.js";\n'
        f"const cases = {json.dumps(cases)};\n"
        "process.stdout.write(JSON.stringify(cases.map(([spec, teacher]) => shapeLabel(spec, teacher))));\n"
    )
    return run_dashboard_js(tmp_path, driver)


def test_the_dashboard_s_shape_label_is_the_server_s(tmp_path):
    teacher = llama_3_1_8b()
    moe = qwen3_30b_a3b()
    layers = [
        LayerShape(
            num_heads=32 - 8 * (i % 2), num_kv_heads=8 - 2 * (i % 2), intermediate_size=14336 - 1024 * i
        )
        for i in range(4)
    ]
    uneven = llama_3_1_8b(num_layers=4, layers=layers)
    cases = [
        (teacher.summary(), teacher.model_dump()),  # the teacher itself (summary lists uniform layers)
        (
            llama_3_1_8b(num_layers=24, hidden_size=3072, intermediate_size=9216).summary(),
            teacher.model_dump(),
        ),
        (llama_3_1_8b(num_heads=16, num_kv_heads=4).model_dump(), teacher.model_dump()),  # whole groups
        (llama_3_1_8b(num_heads=16, num_kv_heads=4).model_dump(), None),  # no teacher: no KV part
        (uneven.model_dump(), teacher.model_dump()),  # widths differing between layers read min–max
        (uneven.summary(), None),
        (moe.summary(), moe.model_dump()),
        (None, teacher.model_dump()),
    ]
    python = [shape_label(spec, t) for spec, t in cases]
    assert python[:4] == [
        "32 layers · h 4096 · ffn 14336 · 32 heads",
        "24 layers · h 3072 · ffn 9216 · 32 heads",
        "32 layers · h 4096 · ffn 14336 · 16 heads · 4 KV",
        "32 layers · h 4096 · ffn 14336 · 16 heads",
    ]
    assert python[4] == "4 layers · h 4096 · ffn 11264–14336 · 24–32 heads · 6–8 KV"
    assert python[6].endswith(" experts") and python[7] is None
    assert js_labels(tmp_path, cases) == python


def test_shape_label_takes_arch_specs_as_well_as_their_json():
    teacher = llama_3_1_8b()
    cut = llama_3_1_8b(num_layers=20, num_heads=16, num_kv_heads=4)
    assert shape_label(cut, teacher) == shape_label(cut.summary(), teacher.model_dump())
    assert shape_label(cut, teacher) == "20 layers · h 4096 · ffn 14336 · 16 heads · 4 KV"
