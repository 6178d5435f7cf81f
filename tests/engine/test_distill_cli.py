"""`prunescope distill / evaluate / benchmark` end to end on tiny saved models and a small data file."""

import json

import pytest

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama
from worker.cli import main
from worker.engine.loading import MANIFEST_FILE, load_model, save_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = demo_tokenizer()
    save_model(tiny_llama(seed=1, layers=3), tok, root / "teacher", {"kind": "test-teacher"})
    save_model(tiny_llama(seed=2, layers=2), tok, root / "student", {"kind": "test-student"})
    # Many short documents so every hash split gets some.
    lines = [ln for doc in demo_documents("train", 6) for ln in doc.split("\n") if len(ln.strip()) > 20]
    docs = ["\n".join(lines[i : i + 6]) for i in range(0, min(len(lines), 1800), 6)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root, data


def _distill_args(root, data, out, *extra):
    return [
        "distill",
        str(root / "student"),
        "--teacher",
        str(root / "teacher"),
        "--data",
        str(data),
        "-o",
        str(out),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--lr",
        "1e-3",
        "--warmup",
        "1",
        "--val-every",
        "2",
        "--val-batches",
        "1",
        "--checkpoint-every",
        "2",
        *extra,
    ]


def test_distill_stop_resume_and_save(setup, capsys):
    root, data = setup
    out = root / "distilled"
    stop = root / "STOP"
    stop.touch()
    assert main(_distill_args(root, data, out, "--stop-file", str(stop))) == 3
    assert (root / "distilled.work" / "checkpoint.pt").is_file() and not out.exists()
    stop.unlink()
    assert main(_distill_args(root, data, out, "--resume")) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 4 and printed["val_loss"] > 0
    model, tok = load_model(out)
    assert tok is not None and model.config.num_hidden_layers == 2
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "distilled-student" and manifest["distill"]["steps"] == 4
    result = json.loads((out / "distill_result.json").read_text())
    assert [m["step"] for m in result["result"]["history"]] == [1, 2, 3, 4]
    assert set(result["manifest"]["model_hashes"]) == {"student", "teacher"}


def test_ce_baseline_evaluate_and_benchmark(setup, capsys):
    root, data = setup
    out = root / "baseline"
    assert main(_distill_args(root, data, out, "--mode", "ce")) == 0
    capsys.readouterr()
    report = root / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--data",
                str(data),
                "--split",
                "test",
                "--tasks",
                "none",
                "--max-documents",
                "3",
                "--context",
                "64",
                "-o",
                str(report),
            ]
        )
        == 0
    )
    saved = json.loads(report.read_text())
    assert saved["result"]["perplexity"]["documents"] == 3 and saved["result"]["perplexity"]["perplexity"] > 1
    assert saved["manifest"]["data"] == {"source": str(data), "split": "test"}
    bench = root / "bench.json"
    assert (
        main(
            [
                "benchmark",
                "--teacher",
                str(root / "teacher"),
                "--student",
                str(out),
                "--batch-sizes",
                "1,2",
                "--prompt-len",
                "8",
                "--new-tokens",
                "2",
                "--repeats",
                "1",
                "-o",
                str(bench),
            ]
        )
        == 0
    )
    speed = json.loads(bench.read_text())["result"]["speedup"]
    assert [s["batch_size"] for s in speed] == [1, 2] and all(s["decode"] > 0 for s in speed)


def test_bad_input_is_one_line_and_writes_nothing(setup, capsys):
    root, data = setup
    out = root / "never"
    assert main(_distill_args(root, data, out, "--temperature", "0")) == 2
    assert "--temperature" in capsys.readouterr().err
    assert main(_distill_args(root, data, out, "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(_distill_args(root, data, out, "--intermediate-weight", "1")) == 2
    assert "plan" in capsys.readouterr().err
    assert not out.exists()


def test_memory_options_from_the_command_line(setup, capsys):
    root, data = setup
    out = root / "bf16-ckpt"
    args = _distill_args(root, data, out, "--gradient-checkpointing", "--weights-dtype", "bfloat16")
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 4 and printed["val_loss"] > 0
    saved = json.loads((out / MANIFEST_FILE).read_text())["distill"]
    assert saved["gradient_checkpointing"] is True and saved["weights_dtype"] == "bfloat16"
    model, _ = load_model(out)
    assert not model.model.gradient_checkpointing  # a training-only setting, not saved with the student
    with pytest.raises(SystemExit) as exc:  # argparse: a one-line usage error, exit status 2
        main(_distill_args(root, data, root / "bad", "--weights-dtype", "float16"))
    assert exc.value.code == 2 and not (root / "bad").exists()
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_the_distilled_student_keeps_the_dtype_it_was_pruned_in(setup, tmp_path, capsys):
    """--weights-dtype is the training precision; the saved student is in its pruned dtype again: a
    bfloat16 teacher's bfloat16 student trained with float32 weights was saved in float32, twice its
    size, and benchmarked against its bfloat16 teacher in another dtype (the dashboard showed "bfloat16"
    beside "float32"). A float32 student trained in bfloat16 is saved in float32."""
    import torch

    root, data = setup
    student, _ = load_model(root / "student")
    save_model(student.to(torch.bfloat16), demo_tokenizer(), tmp_path / "bf16", {"kind": "test-student"})
    args = _distill_args(root, data, tmp_path / "out", "--checkpoint-every", "0")
    args[1] = str(tmp_path / "bf16")
    assert main(args) == 0
    saved, _ = load_model(tmp_path / "out")
    assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}
    assert json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["distill"]["weights_dtype"] == "float32"
    args = _distill_args(
        root, data, tmp_path / "out32", "--weights-dtype", "bfloat16", "--checkpoint-every", "0"
    )
    assert main(args) == 0
    assert {p.dtype for p in load_model(tmp_path / "out32")[0].parameters()} == {torch.float32}
    capsys.readouterr()
