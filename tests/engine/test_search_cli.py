"""`prunescope search` on the tiny saved teacher (demo tokenizer, in-process `main`): the --json
shape, plan files that `prune` accepts, errors that name the flag."""

from __future__ import annotations

import json

import pytest

from tests.engine.test_importance_scores import padded_batches
from worker.cli import main
from worker.engine.adapters import arch_spec
from worker.engine.importance import compute_importance
from worker.engine.loading import load_model
from worker.engine.plan import PrunePlan, plan_stats, validate_plan
from worker.engine.search.rate import MIN_CANDIDATES, MIN_SECONDS

FAST = ["--eval-samples", "4", "--eval-seq-len", "32", "--eval-batch-size", "4", "--mlp-step", "8",
        "--hidden-step", "8", "--max-width-cut", "0.5", "--max-depth-cut", "0.5"]  # fmt: skip


@pytest.fixture(scope="module")
def importance_run(tiny_teacher_dir, tmp_path_factory):
    model, _ = load_model(tiny_teacher_dir)
    _, batches = padded_batches([11, 9, 11, 10], batch_size=2, seed=1)
    run = tmp_path_factory.mktemp("importance") / "run"
    compute_importance(model, batches, scans=("bi", "drop", "block"), block_size=1).save(run)
    return run


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_lists_every_candidate_with_plan_params_loss(tiny_teacher_dir, importance_run, tmp_path, capsys):
    out_dir = tmp_path / "plans"
    code, out, err = run(
        capsys, "search", tiny_teacher_dir, "--importance", importance_run, "--budget", "params=70%",
        "--json", "-o", out_dir, "--top", "2", *FAST,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    candidates = report["candidates"]
    assert len(candidates) >= 3
    spec = arch_spec(load_model(tiny_teacher_dir)[0])
    for c in candidates:
        assert {"plan", "params", "loss", "axes", "cut", "rank", "budgets", "params_fraction"} <= set(c)
        plan = PrunePlan.model_validate(c["plan"])
        assert not [m for m in validate_plan(plan, spec) if m.level == "error"]
        assert plan_stats(plan, spec)["params_total"] == c["params"]
        assert c["params"] <= 0.70 * report["teacher"]["params"] * 1.02
    stats = report["stats"]
    # A rate only once it means something (worker/engine/search/rate.py): none from a fraction of a second.
    quick = stats["evaluated"] < MIN_CANDIDATES or stats["scoring_seconds"] < MIN_SECONDS
    assert stats["candidates_per_minute"] is None if quick else stats["candidates_per_minute"] > 0
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == sorted(
        [f"rank01-{candidates[0]['id']}.plan.json", f"rank02-{candidates[1]['id']}.plan.json", "search.json"]
    )
    written = PrunePlan.model_validate_json((out_dir / files[0]).read_text())
    assert written == PrunePlan.model_validate(candidates[0]["plan"])
    # The plan file cuts as is: plan-stats accepts it without an importance run.
    code, out, err = run(capsys, "plan-stats", tiny_teacher_dir, "--plan", out_dir / files[0], "--json")
    assert code == 0, err
    assert json.loads(out)["params_total"] == candidates[0]["params"]


def test_table_marks_the_top_candidates(tiny_teacher_dir, importance_run, capsys):
    code, out, err = run(
        capsys, "search", tiny_teacher_dir, "--importance", importance_run, "--budget", "params=70%",
        "--top", "1", *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert "candidates/min" in out and "   1* " in out and "   2  " in out


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--budget", "params=60Q"], "--budget"),
        ([], "--budget"),
        (["--budget", "params=60%", "--max-width-cut", "1.5"], "--max-width-cut"),
        (["--budget", "params=60%", "--max-cut", "depth"], "--max-cut"),
        (["--budget", "params=60%", "--layer-methods", "random"], "--layer-methods"),
        (["--budget", "params=60%", "--device", "cuda:97"], "--device"),
        # Past the model's positions (GPT-2's position table failed with a traceback, RoPE scored them).
        (["--budget", "params=60%", "--eval-seq-len", "300"], "--eval-seq-len"),  # 256 positions
        (["--budget", "latency=90%@1,100000"], "--budget"),
        (["--budget", "memory=90%@1,100000"], "--budget"),  # a KV cache of 100000 positions: none
        # A parameter budget nothing of the space meets: refused before any scoring (feasible.py).
        (["--budget", "params=5%", *FAST], "--budget"),
        # More held-out windows than the validation split holds: the flag, the split (not "calibration").
        (
            ["--budget", "params=70%", *FAST, "--eval-samples", "4000", "--eval-seq-len", "256"],
            "--eval-samples",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_flag(tiny_teacher_dir, importance_run, capsys, argv, flag):
    code, out, err = run(capsys, "search", tiny_teacher_dir, "--importance", importance_run, *argv)
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]  # a length is checked once the model's positions are read
    assert last.startswith(f"prunescope search: error: {flag}:") and "Traceback" not in err, err
    if "latency=90%@1,100000" in argv:  # the budget's own tokens are not its text: say what was counted
        assert "--budget: latency=90%@1,100000: its prompt + decoded 100" in last, last
    if "memory=90%@1,100000" in argv:
        assert "--budget: memory=90%@1,100000: its context of 100000 tokens exceed the 256 positions" in last
    if "params=5%" in argv:
        assert "no architecture of the space meets params=5%: the fewest parameters" in last, last
        assert "[search]" not in err, err  # nothing was scored
    if "4000" in argv:
        assert "--eval-samples: 4000 is too many; only " in last and " validation windows" in last, last


def test_an_empty_search_fails_with_the_note_worded_for_its_budget(tiny_teacher_dir, importance_run, capsys):
    """A measured budget no shape meets (a microsecond per token) is known only once timed: the search runs,
    lists nothing and exits non-zero with the engine's note, which speaks of decode speed (not of the
    parameter count)."""
    code, out, err = run(
        capsys, "search", tiny_teacher_dir, "--importance", importance_run, "--budget", "latency=1us@1,8",
        "--latency-cache", importance_run.parent / "latency.json", *FAST,
    )  # fmt: skip
    last = err.strip().splitlines()[-1]
    assert code == 2 and "note: no architecture" in out, (out, err)
    assert last.startswith(
        "prunescope search: error: --budget: no architecture of the space meets latency=1us@1,8"
    )
    assert "the fastest decode any architecture of the space reaches" in last, last


def test_candidates_over_the_bare_limit_are_marked_and_progress_counts_candidates(
    tiny_teacher_dir, importance_run, capsys
):
    """The tolerance lets candidates past the stated budget: --json gives each budget's `over_limit`
    (fraction past the bare limit), the table marks those rows; "[search] scored" counts candidates, the
    teacher (scored as the reference) beside them."""
    argv = ["search", tiny_teacher_dir, "--importance", importance_run, "--budget", "params=70%",
            "--tolerance", "0.2", *FAST]  # fmt: skip
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    report = json.loads(out)
    over = 0
    for c in report["candidates"]:
        b = c["budgets"]["params=70%"]
        assert b["fits"] and b["over_limit"] == round(max(b["value"] - b["limit"], 0) / b["limit"], 6)
        over += b["over_limit"] > 0
    assert over, "the frontier of a 20% tolerance holds candidates past the bare limit"
    n = len(report["candidates"])
    assert f"[search] scored {n}/{n} candidates (+ the teacher)" in err, err
    code, out, err = run(capsys, *argv)
    rows = [line for line in out.splitlines() if "over params=70%, within tolerance)" in line]
    assert code == 0 and len(rows) == over, out


def test_missing_importance_run_names_the_flag(tiny_teacher_dir, tmp_path, capsys):
    code, _, err = run(
        capsys, "search", tiny_teacher_dir, "--importance", tmp_path / "no", "--budget", "params=60%"
    )
    assert code == 2 and "--importance: importance run not found" in err


def test_a_bfloat16_teachers_own_importance_run_is_not_called_other_weights(
    tiny_teacher_dir, tmp_path, capsys
):
    """The README's pipeline: `importance` reads a bfloat16 checkpoint as it is, `search` scores in
    float32; the weights check compared the float32 hash and warned of "different weights"."""
    import torch

    from worker.engine.loading import save_model

    model, tokenizer = load_model(tiny_teacher_dir)
    teacher = tmp_path / "bf16-teacher"
    save_model(model.to(torch.bfloat16), tokenizer, teacher, {"kind": "test"})
    imp = tmp_path / "imp"
    assert main(["importance", str(teacher), "--samples", "4", "--seq-len", "16", "--batch-size", "2",
                 "--block-size", "1", "-o", str(imp)]) == 0  # fmt: skip
    assert json.loads((imp / "manifest.json").read_text())["dtype"] == "bfloat16"
    search = ["search", teacher, "--importance", imp, "--budget", "params=70%", "--top", "1", *FAST]
    code, _, err = run(capsys, *search)
    assert code == 0, err
    assert "different weights" not in err
    other = tmp_path / "other"  # other weights in the same dtype are still told apart
    save_model(load_model(tiny_teacher_dir)[0].to(torch.bfloat16).apply(_nudge), tokenizer, other, {})
    code, _, err = run(capsys, "search", other, *search[2:])
    assert code == 0 and "warning: the importance run was measured on different weights" in err


def _nudge(module):
    import torch

    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.add_(0.5)


def test_memory_is_priced_in_the_checkpoints_dtype_and_the_table_says_what_each_figure_is_in(
    tiny_teacher_dir, importance_run, tmp_path, capsys
):
    """A bfloat16 checkpoint scored in float32 (the default --dtype): memory at 2 bytes a parameter, as its
    students are saved (audit 3: at 4, `memory=20MB` found nothing for an 18 MiB bf16 teacher); the table
    names each figure's dtype and FLOPs' context, and gives each rank's distance from #1 in standard errors."""
    import torch

    from worker.engine.loading import save_model

    model, tokenizer = load_model(tiny_teacher_dir)
    teacher = tmp_path / "bf16-teacher"
    save_model(model.to(torch.bfloat16), tokenizer, teacher, {"kind": "test"})
    spec = arch_spec(model)
    bf16_bytes = spec.param_count()["total"] * 2 + 32 * spec.kv_cache_bytes_per_token(bytes_per_value=2)
    search = [
        "search",
        teacher,
        "--importance",
        importance_run,
        "--budget",
        f"memory={bf16_bytes}@1,32",
        "--all",
        *FAST,
    ]
    code, out, err = run(capsys, *search, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["teacher"]["budgets"][f"memory={bf16_bytes}@1,32"] == bf16_bytes
    assert report["basis"] == {
        "memory_dtype": "bfloat16",
        "kv_cache_dtype": "bfloat16",
        "loss_dtype": "float32",
        "latency_dtype": "float32",
        "flops_context": spec.max_positions,
    }
    for c in report["candidates"]:
        assert c["memory_bytes"] == c["params"] * 2 + 32 * c["kv_cache_bytes_per_token"]
    code, out, err = run(capsys, *search)
    assert code == 0, err
    assert "memory and KV cache in bfloat16" in out and "loss and latency in float32" in out
    assert f"FLOPs/token at {spec.max_positions} tokens of context" in out
    second = report["candidates"][1]
    assert f"{second['loss_diff_vs_best']:+.4f} ± {second['loss_diff_se']:.4f}" in out
    # plan-stats says the context its FLOPs/token are at: the teacher's positions, not 2048 past them.
    plan = tmp_path / "second.plan.json"
    plan.write_text(json.dumps(second["plan"]))
    code, out, err = run(capsys, "plan-stats", teacher, "--plan", plan)
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert lines["flops_context"].strip() == str(spec.max_positions)
    assert lines["flops_per_token"].strip().replace(",", "") == str(second["flops_per_token"])


def test_the_feasibility_check_prices_memory_as_the_search_does(
    tiny_teacher_dir, importance_run, tmp_path, capsys
):
    """A memory budget the smallest shape meets in its bfloat16 checkpoint's bytes (but not at float32's,
    the dtype it is scored in) is searched, not refused before the scoring as if priced at 4 bytes."""
    import torch

    from worker.cli import build_parser
    from worker.cli.search_commands import settings_from_args
    from worker.engine.loading import save_model
    from worker.engine.search.budgets import parse_budget
    from worker.engine.search.feasible import nothing_fits_computed, shapes
    from worker.engine.search.space import ComputedCosts

    model, tokenizer = load_model(tiny_teacher_dir)
    teacher = tmp_path / "bf16-teacher"
    save_model(model.to(torch.bfloat16), tokenizer, teacher, {"kind": "test"})

    def argv(budget):
        return ["search", str(teacher), "--importance", str(importance_run), "--budget", budget, *FAST]

    spec = arch_spec(model).model_copy(update={"dtype": "bfloat16"})
    space = shapes(spec, settings_from_args(build_parser().parse_args(argv("params=100%"))))
    smallest = int(min(ComputedCosts(spec)(parse_budget("memory=1@1,32", 1, 32), a) for a in space))
    budget = f"memory={smallest}@1,32"
    settings = settings_from_args(build_parser().parse_args(argv(budget)))
    assert nothing_fits_computed(spec, settings) is None  # bfloat16: the smallest shape meets it
    assert nothing_fits_computed(spec.model_copy(update={"dtype": "float32"}), settings) is not None
    code, out, err = run(capsys, *argv(budget), "--json")
    assert code == 0, err
    assert json.loads(out)["candidates"], out
