"""The job forms' tokens check (frontend/js/serverconfig.js, run in node) is the API's: the same factors
as backend/schemas.py's `size_factors` and the same words as backend/limits.job_tokens_excess, so a
memory line says what the 422 will say (PRUNESCOPE_MAX_JOB_TOKENS), down to the number formats."""

from __future__ import annotations

import json
import random
from pathlib import Path

from backend.limits import JOB_TOKENS_VARIABLE, job_tokens_excess
from backend.schemas import DistillParams, ImportanceRunCreate
from tests.ui.dashboard_js import run_dashboard_js

# The API's params of the forms that check tokens (importance: the parts size_factors reads).
PARAMS = {
    "importance": [{"samples": 64, "seq_len": 128}, {"samples": 4096, "seq_len": 131072}],
    "distill": [
        {"steps": 200, "batch_size": 8, "seq_len": 128},
        {"steps": 1000, "batch_size": 8, "seq_len": 128},
        {"tokens": 2_000_000, "batch_size": 8, "seq_len": 128},
        {"tokens": 2**53 - 1, "batch_size": 1, "seq_len": 8},  # the largest a form can hold
        {"steps": 10**7, "batch_size": 4096, "seq_len": 131072},
    ],
}
MODELS = {"importance": ImportanceRunCreate, "distill": DistillParams}


def python_factors(kind: str, params: dict) -> list[list]:
    extra = {"teacher_id": 1, "dataset_id": 1} if kind == "importance" else {}
    return [list(f) for f in MODELS[kind](**extra, **params).size_factors()]


def js(tmp_path: Path, calls: dict) -> dict:
    driver = (
        'import { SIZE_FACTORS, jobTokensExcess } from "./js/serverconfig.js";\n'
        'import { pyG } from "./js/format.js";\n'
        f"const calls = {json.dumps(calls)};\n"
        "process.stdout.write(JSON.stringify({\n"
        "  factors: calls.factors.map(([kind, p]) => SIZE_FACTORS[kind](p)),\n"
        "  excess: calls.excess.map(([f, limit]) => jobTokensExcess(f, limit, calls.variable)),\n"
        "  g: calls.g.map((x) => pyG(x)),\n"
        "}));\n"
    )
    return run_dashboard_js(tmp_path, driver)


def test_forms_count_tokens_and_word_refusals_as_the_api(tmp_path):
    factor_calls = [[kind, p] for kind, cases in PARAMS.items() for p in cases]
    factors = [python_factors(kind, p) for kind, p in factor_calls]
    rng = random.Random(0)
    limits = [10**6, 10**12, 100_000, 999_999, 1, 12_345_678_901]
    excess_calls = [[f, limit] for f in factors for limit in limits]
    excess_calls += [
        [
            [
                ["steps", rng.randint(1, 10**6)],
                ["batch_size", rng.randint(1, 512)],
                ["seq_len", rng.randint(2, 8192)],
            ],
            rng.choice(limits),
        ]
        for _ in range(40)
    ]
    floats = [0.5, 99950.0, 999.5, 1e-5, 0.000123456, 123.456, 1e12, 7.0, 1024.0, 1.5e18, 100.0]
    out = js(
        tmp_path,
        {"factors": factor_calls, "excess": excess_calls, "variable": JOB_TOKENS_VARIABLE, "g": floats},
    )

    # One shape of tokens: the dashboard's factors are the API models' own (tokens, when given, wins).
    assert out["factors"] == factors
    # One refusal: equal strings, or both none, for every case; some cases are over their limit.
    expected = [
        (hit[1] if (hit := job_tokens_excess([tuple(f) for f in f_], limit)) else None)
        for f_, limit in excess_calls
    ]
    assert out["excess"] == expected
    assert sum(e is not None for e in expected) > 20 and sum(e is None for e in expected) > 5
    assert (
        "steps 1000 x batch_size 8 x seq_len 128 = 1.02e+06 tokens"
        in expected[factor_calls.index(["distill", PARAMS["distill"][1]]) * len(limits)]
    )
    # The number format underneath: Python's ".3g".
    assert out["g"] == [f"{x:.3g}" for x in floats]
