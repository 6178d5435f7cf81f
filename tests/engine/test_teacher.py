"""The teacher recipe (a few steps of a tiny model) and the committed demo teacher."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker.demo import corpus_manifest, demo_teacher_path
from worker.engine.data import PackedTokens, read_documents
from worker.engine.evaluation.perplexity import block_nll
from worker.engine.teacher import CARD_FILE, CURVE_FILE, TeacherRecipe, lr_at, train_teacher

TINY = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    seq_len=32,
    batch_size=4,
    steps=12,
    warmup_steps=2,
    peak_lr=1e-2,
    min_lr=1e-3,
    eval_every=4,
    eval_blocks=8,
    checkpoint_every=4,
    test_slice_blocks=4,
)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    """A small source of its own (hash-split like any user file) keeps the runs to seconds."""
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    lines = (
        json.dumps({"text": f"def f_{i}(x):\n    return x * {i} - {i % 7}\n"}) + "\n" for i in range(600)
    )
    path.write_text("".join(lines))
    return str(path)


def test_lr_schedule_warms_up_then_decays_to_min():
    recipe = TeacherRecipe(steps=100, warmup_steps=10, peak_lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(step, recipe) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone cosine decay
    assert lrs[-1] == pytest.approx(1e-4)


def test_recipe_trains_saves_and_records_its_curve(tmp_path, small_source):
    out = tmp_path / "teacher"
    summary = train_teacher(
        out, TeacherRecipe(**TINY, data=small_source), work_dir=tmp_path / "work", log=lambda _: None
    )
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        CARD_FILE,
        CURVE_FILE,
    ):
        assert (out / name).is_file(), name
    curve = json.loads((out / CURVE_FILE).read_text())["curve"]
    assert [p["step"] for p in curve] == [4, 8, 12]
    assert curve[-1]["tokens"] == 12 * 4 * 32 == summary["tokens_seen"]
    # It learns: the loss falls well below where it started (about log(4096) = 8.3).
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] - 0.3
    assert curve[-1]["val_loss"] < curve[0]["val_loss"] - 0.3
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_key_value_heads == 2 and not model.config.tie_word_embeddings
    card = (out / CARD_FILE).read_text()
    assert f"{summary['test_slice']['ppl']:.4f}" in card and f"steps: {summary['steps']}" in card
    assert not (tmp_path / "teacher.tmp").exists()


def test_interrupted_run_resumes_exactly(tmp_path, small_source):
    recipe = TeacherRecipe(**{**TINY, "steps": 8, "data": small_source})
    straight = train_teacher(tmp_path / "a", recipe, work_dir=tmp_path / "work_a", log=lambda _: None)
    assert (
        train_teacher(tmp_path / "b", recipe, work_dir=tmp_path / "work_b", stop_after=4, log=lambda _: None)
        is None
    )
    assert not (tmp_path / "b").exists()
    resumed = train_teacher(tmp_path / "b", recipe, work_dir=tmp_path / "work_b", log=lambda _: None)
    curve_a = json.loads((tmp_path / "a" / CURVE_FILE).read_text())["curve"]
    curve_b = json.loads((tmp_path / "b" / CURVE_FILE).read_text())["curve"]
    for a, b in zip(curve_a, curve_b, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    assert straight["test"]["ppl"] == pytest.approx(resumed["test"]["ppl"], rel=1e-6)
    with pytest.raises(ValueError, match="another recipe"):
        train_teacher(
            tmp_path / "c",
            TeacherRecipe(**{**TINY, "steps": 8, "data": small_source, "seed": 1}),
            work_dir=tmp_path / "work_b",
            log=print,
        )


def test_committed_teacher_reaches_its_recorded_perplexity():
    path = demo_teacher_path()
    record = json.loads((path / CURVE_FILE).read_text())
    summary, curve = record["summary"], record["curve"]
    assert (path / "model.safetensors").stat().st_size <= 30 * 1024 * 1024
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} <= {torch.bfloat16, torch.float16}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # vanilla, no custom code
    config = model.config
    assert config.model_type == "llama" and not config.tie_word_embeddings
    assert config.num_attention_heads > config.num_key_value_heads  # GQA
    assert 8e6 <= sum(p.numel() for p in model.parameters()) <= 15e6
    assert summary["corpus_hash"] == corpus_manifest()["corpus_hash"]

    tokenizer = AutoTokenizer.from_pretrained(path)
    test = PackedTokens(tokenizer, read_documents("demo", "test"), summary["test_slice"]["seq_len"])
    nll, tokens = block_nll(model, test, limit=summary["test_slice"]["blocks"])
    assert tokens == summary["test_slice"]["tokens"]
    assert math.exp(nll) == pytest.approx(summary["test_slice"]["ppl"], rel=2e-3)
    assert f"{summary['test_slice']['ppl']:.4f}" in (path / CARD_FILE).read_text()
    # A trained model, far better than the uniform guess over the vocabulary (4096), whose curve levels
    # off: it ends at its best point and its last drops are a small fraction of its first ones.
    assert summary["test"]["ppl"] < len(tokenizer) / 20
    ppl = [p["val_ppl"] for p in curve]
    assert ppl[-1] == min(ppl)
    assert ppl[-3] - ppl[-1] < 0.1 * (ppl[0] - ppl[2])


def test_cli_rejects_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys):
    from worker.cli import main

    cases = [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--steps", "5", "--warmup", "10"], "--warmup (10) must be smaller than --steps (5)"),
        (["--steps", "5", "--warmup", "1", "--data", str(tmp_path / "missing")], "data source not found"),
    ]
    for extra, message in cases:
        argv = ["train-teacher", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
