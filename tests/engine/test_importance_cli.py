"""`prunescope importance`: end to end on a tiny model + the demo corpus, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXConfig, LlamaConfig

from tests.tiny_models import COMMON, HEAD_DIM
from worker.cli import main
from worker.demo import demo_tokenizer_path
from worker.engine.data import calibration_batches, read_documents
from worker.engine.importance import ImportanceResult, compute_importance
from worker.engine.loading import load_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama with the demo tokenizer's vocabulary, saved like a real checkpoint."""
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_path())
    config = LlamaConfig(
        **{**COMMON, "vocab_size": len(tokenizer)}, head_dim=HEAD_DIM, tie_word_embeddings=True
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


ARGS = ["--data", "demo", "--samples", "6", "--seq-len", "24", "--batch-size", "4", "--seed", "3"]


def test_importance_command_writes_a_loadable_artifact(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["importance", str(model_dir), *ARGS, "--block-size", "3", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "importance" in captured.err and "6/6" in captured.err  # the progress bar, on stderr
    assert f"importance run written to {out}" in captured.out and "rank stability" in captured.out
    assert "drop scan: 12 layer forwards (naive, one full pass per cut: 32)" in captured.out

    result = ImportanceResult.load(out)
    m = result.manifest
    assert (m["model"], m["data"], m["seed"], m["samples"], m["block_size"]) == (
        str(model_dir),
        "demo",
        3,
        6,
        3,
    )
    assert m["scans"] == ["bi", "drop", "block"]
    scores = result.scores()
    assert scores.heads.shape == (4, 8) and scores.neurons.shape == (4, 48) and scores.hidden.shape == (32,)
    assert set(scores.layers) == {"block_importance", "drop_loss", "block_loss_k3"}

    # The CLI is a thin shell: the same seed gives exactly the library's result.
    model, tokenizer = load_model(model_dir)
    batches = calibration_batches(
        tokenizer, read_documents("demo", "calibration"), seq_len=24, num_samples=6, batch_size=4, seed=3
    )
    direct = compute_importance(model, batches, block_size=3)
    for name, array in direct.arrays.items():
        np.testing.assert_allclose(result.arrays[name], array, rtol=1e-6, err_msg=name)


def test_angular_scan_alone_runs_no_loss_scan(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["importance", str(model_dir), *ARGS, "--scans", "angular", "-o", str(out)]) == 0
    assert "block_angular_k2" in capsys.readouterr().out  # its rank stability is reported
    result = ImportanceResult.load(out)
    assert (
        result.manifest["scans"] == ["angular"]
        and result.manifest["evaluations"]["layer_forwards_scans"] == 0
    )
    assert set(result.scores().layers) == {"block_angular_k2"} and "loss_base" not in result.arrays


@pytest.fixture
def unsupported_dir(tmp_path):
    path = tmp_path / "neox"
    GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nope", *ARGS], "model not found"),
        (["{neox}", *ARGS], "architecture 'gpt_neox' is not supported; supported: llama"),
        (["{model}", "--data", "{tmp}/missing.jsonl"], "missing.jsonl"),
        (["{model}", *ARGS, "--samples", "0"], "--samples must be at least 1, got 0"),
        (["{model}", *ARGS, "--seq-len", "1"], "--seq-len must be at least 2"),
        (
            ["{model}", *ARGS, "--scans", "bi,magic"],
            "--scans: unknown scan 'magic'; choose from bi, drop, block, angular",
        ),
        (["{model}", *ARGS, "--block-size", "4"], "block size must be between 1 and 3"),
        (["{model}", *ARGS, "--scans", "angular", "--block-size", "4"], "block size must be between 1 and 3"),
        (["{model}", *ARGS, "--device", "tpu9"], "--device"),
        (["{model}", "--data", "demo", "--samples", "100000", "--seq-len", "24"], "ask for at most"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(
    argv, message, model_dir, unsupported_dir, tmp_path, capsys
):
    argv = [a.format(tmp=tmp_path, model=model_dir, neox=unsupported_dir) for a in argv]
    out = tmp_path / "run"
    assert main(["importance", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("prunescope importance: error:") and message in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neox"]  # no temp dirs either


def test_refuses_to_overwrite_a_foreign_directory(model_dir, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    assert main(["importance", str(model_dir), *ARGS, "-o", str(out)]) == 2
    assert "is not an importance run directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_console_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "importance", str(tmp_path / "nope"), "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "model not found" in proc.stderr
