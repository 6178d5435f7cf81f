"""`prunescope summary`, `plan-stats` and `prune` on tiny saved models (in-process `main`)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_models import VOCAB, tiny_model
from worker.cli import main
from worker.engine.adapters import arch_spec, count_parameters
from worker.engine.importance import compute_importance
from worker.engine.loading import MANIFEST_FILE, load_model
from worker.engine.plan import PrunePlan, fill_plan
from worker.engine.surgery import apply_plan

PLAN = {"drop_layers": [3], "remove_heads": {str(i): [0, 2, 4, 6] for i in range(3)}}


@pytest.fixture
def teacher(tmp_path):
    path = tmp_path / "teacher"
    tiny_model("llama").save_pretrained(path)
    return path


def write(path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_prints_the_architecture(teacher, capsys):
    code, out, _ = run(capsys, "summary", teacher, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["num_kv_heads"] == 4 and summary["head_dim"] == 8
    assert summary["params_total"] == count_parameters(tiny_model("llama"))
    code, out, _ = run(capsys, "summary", teacher)
    assert code == 0 and "params_non_embedding" in out and "num_kv_heads" in out


def test_plan_stats(teacher, tmp_path, capsys):
    code, out, _ = run(capsys, "plan-stats", teacher, "--plan", write(tmp_path / "p.json", PLAN), "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["spec"]["num_layers"] == 3 and stats["spec"]["num_heads"] == 4
    assert stats["plan"]["remove_heads"]["0"] == [0, 2, 4, 6]


def test_prune_with_an_explicit_plan_writes_a_vanilla_student(teacher, tmp_path, capsys):
    out_dir = tmp_path / "student"
    code, out, err = run(capsys, "prune", teacher, "--plan", write(tmp_path / "p.json", PLAN), "-o", out_dir)
    assert code == 0, err
    assert "[prune]" in err and "[save]" in err  # progress on stderr
    expected = apply_plan(tiny_model("llama"), PrunePlan.model_validate(PLAN))
    student = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(ids()).logits, expected(ids()).logits, atol=1e-5, rtol=0)
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    assert manifest["teacher"]["source"] == str(teacher) and len(manifest["teacher"]["weights_sha256"]) == 64
    assert manifest["plan"]["drop_layers"] == [3] and manifest["format"] == "vanilla"
    assert manifest["stats"]["params_total"] == count_parameters(student)


def test_prune_fills_targets_from_an_importance_run(teacher, tmp_path, capsys):
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    batches = [{"input_ids": ids(), "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(2)]
    result = compute_importance(model, batches, scans=("bi", "drop"))
    run_dir = tmp_path / "run"
    result.save(run_dir)
    targets = {
        "targets": {"num_layers": 3, "layer_method": "bi", "heads_per_layer": 4, "intermediate_size": 40}
    }
    plan_file = write(tmp_path / "t.json", targets)
    code, _, err = run(
        capsys, "prune", teacher, "--plan", plan_file, "--importance", run_dir, "-o", tmp_path / "s"
    )
    assert code == 0, err
    expected_plan = fill_plan(PrunePlan.model_validate(targets), arch_spec(model), result.scores())
    manifest = json.loads((tmp_path / "s" / MANIFEST_FILE).read_text())
    assert PrunePlan.model_validate(manifest["plan"]) == expected_plan
    assert manifest["plan_requested"]["targets"]["intermediate_size"] == 40
    assert manifest["importance"]["manifest"]["weights_sha256"] == manifest["teacher"]["weights_sha256"]
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["intermediate_size"]) == (
        3,
        4,
        40,
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_model", "model not found"),
        ("missing_plan", "plan file not found"),
        ("bad_json", "bad plan"),
        ("unknown_field", "remove_layers: Extra inputs are not permitted"),
        ("uneven_groups", "every group must keep the same number"),
        ("targets_without_importance", "--importance"),
        ("unsupported", "'gpt_neox' is not supported; supported: llama"),
        ("existing_output", "exists and is not empty"),
    ],
)
def test_bad_input_is_one_line_without_traceback(case, message, teacher, tmp_path, capsys):
    model, plan, out = teacher, write(tmp_path / "p.json", PLAN), tmp_path / "out"
    if case == "missing_model":
        model = tmp_path / "no-such-model"
    elif case == "missing_plan":
        plan = tmp_path / "nope.json"
    elif case == "bad_json":
        plan = write(tmp_path / "b.json", "{not json")
    elif case == "unknown_field":
        plan = write(tmp_path / "b.json", {"remove_layers": [1]})
    elif case == "uneven_groups":
        plan = write(tmp_path / "b.json", {"remove_heads": {"1": [0]}})
    elif case == "targets_without_importance":
        plan = write(tmp_path / "b.json", {"targets": {"hidden_size": 16}})
    elif case == "unsupported":
        model = tmp_path / "neox"
        model.mkdir()
        write(model / "config.json", {"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4})
    elif case == "existing_output":
        out.mkdir()
        (out / "x").write_text("x")
    code, _, err = run(capsys, "prune", model, "--plan", plan, "-o", out)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("prunescope prune: error:") and message in last
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or case == "existing_output"


def test_prune_out_of_core_writes_the_same_student(tmp_path, capsys):
    teacher = tmp_path / "sharded"
    tiny_model("llama").save_pretrained(teacher, max_shard_size="20KB")
    plan = write(tmp_path / "p.json", {**PLAN, "remove_neurons": {"0": [1, 2, 3]}})
    outputs = {}
    for flag in ("--in-memory", "--out-of-core"):
        out_dir = tmp_path / flag.strip("-")
        code, _, err = run(
            capsys, "prune", teacher, "--plan", plan, "-o", out_dir, flag, "--shard-size", "2e-5"
        )
        assert code == 0, err
        outputs[flag] = out_dir
        assert f"[surgery] {'in memory' if flag == '--in-memory' else 'out of core'} (requested)" in err
    mem, ooc = (
        json.loads((outputs[f] / MANIFEST_FILE).read_text()) for f in ("--in-memory", "--out-of-core")
    )
    assert ooc["teacher"] == mem["teacher"]  # the streamed weights hash equals the in-memory one
    assert ooc["plan"] == mem["plan"] and ooc["stats"] == mem["stats"] and ooc["format"] == mem["format"]
    assert ooc["surgery"] == "out of core (requested)" and mem["surgery"] == "in memory (requested)"
    assert len(list(outputs["--out-of-core"].glob("model-*.safetensors"))) >= 2  # 20 kB shards
    expected = load_model(outputs["--in-memory"])[0]
    student = load_model(outputs["--out-of-core"])[0]
    for name, tensor in expected.state_dict().items():
        assert torch.equal(student.state_dict()[name], tensor), name


def test_prune_goes_out_of_core_by_itself_above_the_threshold(teacher, tmp_path, capsys, monkeypatch):
    plan = write(tmp_path / "p.json", PLAN)
    code, _, err = run(capsys, "prune", teacher, "--plan", plan, "-o", tmp_path / "small")
    assert code == 0, err
    assert "[surgery] in memory (model" in err and "half the available RAM" in err
    monkeypatch.setenv("PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB", "0.00001")  # 10 kB
    code, _, err = run(capsys, "prune", teacher, "--plan", plan, "-o", tmp_path / "big")
    assert code == 0, err
    assert "[surgery] out of core (model" in err and "> the threshold 1e-05 GB (9.8 KiB)" in err
    assert json.loads((tmp_path / "big" / MANIFEST_FILE).read_text())["surgery"].startswith("out of core")


def test_out_of_core_of_a_model_that_cannot_be_cut_so_is_one_line(tmp_path, capsys):
    code, _, err = run(
        capsys,
        "prune",
        "some-org/some-model",
        "--plan",
        write(tmp_path / "p.json", PLAN),
        "-o",
        tmp_path / "o",
        "--out-of-core",
    )
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("prunescope prune: error: cannot cut some-org/some-model out of core")
    assert not (tmp_path / "o").exists()


def test_out_of_core_fills_targets_from_an_importance_run_of_the_same_weights(teacher, tmp_path, capsys):
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    batches = [{"input_ids": ids(), "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(2)]
    compute_importance(model, batches, scans=("bi",)).save(tmp_path / "run")
    plan = write(
        tmp_path / "t.json", {"targets": {"num_layers": 3, "layer_method": "bi", "intermediate_size": 40}}
    )
    manifests = []
    for flag in ("--in-memory", "--out-of-core"):
        out_dir = tmp_path / flag.strip("-")
        code, _, err = run(
            capsys, "prune", teacher, "--plan", plan, "--importance", tmp_path / "run", "-o", out_dir, flag
        )
        assert code == 0, err
        assert "different weights" not in err  # the streamed hash matches the run's
        manifests.append(json.loads((out_dir / MANIFEST_FILE).read_text()))
    assert manifests[0]["plan"] == manifests[1]["plan"] and manifests[1]["plan"]["drop_layers"]
