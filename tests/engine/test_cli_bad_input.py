"""What a researcher gets wrong at the `prunescope` command line: damaged checkpoints and configs, binary
data, numbers out of range, a device that is not there. Each is one `prunescope CMD: error: ...` line
naming the file or flag (exit 2, no traceback) before anything is written."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama
from worker.cli import main
from worker.engine.importance.artifact import SCORES_FILE, write_artifact
from worker.engine.loading import save_model

SMALL = ["--samples", "4", "--seq-len", "16", "--batch-size", "2"]  # importance
DISTILL = ["--mode", "ce", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--val-every", "2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny Llama with the demo tokenizer, the same model sharded, and a small JSONL corpus."""
    root = tmp_path_factory.mktemp("bad_input")
    model = tiny_llama(seed=1)
    save_model(model, demo_tokenizer(), root / "model", {"kind": "test"})
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    lines = [ln for doc in demo_documents("train", 6) for ln in doc.split("\n") if len(ln.strip()) > 20]
    docs = ["\n".join(lines[i : i + 6]) for i in range(0, min(len(lines), 600), 6)]
    (root / "data.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (root / "plan.json").write_text(json.dumps({"drop_layers": [1]}))
    return root


def error_line(capsys, *argv) -> str:
    """Run the command; it must fail with exit 2 and one error line (returned) and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"prunescope {argv[0]}: error: "), last
    return last


def copy_model(root, tmp_path, name="model"):
    return shutil.copytree(root / name, tmp_path / f"copy_{name}")


# ---- damaged model directories ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "header_claims_exabytes"])
def test_damaged_weights_name_the_model_in_and_out_of_core(damage, root, tmp_path, capsys):
    model = copy_model(root, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":  # an interrupted copy
        weights.write_bytes(data[: len(data) // 2])
    else:  # the first 8 bytes (the header length) overwritten: read as is, a MemoryError
        weights.write_bytes((1 << 62).to_bytes(8, "little") + data[8:])
    assert f"cannot read the weights of {model}" in error_line(capsys, "summary", model)
    out = tmp_path / "out"
    assert f"{weights}" in error_line(
        capsys, "prune", model, "--plan", root / "plan.json", "-o", out, "--out-of-core"
    )
    assert f"{model}" in error_line(capsys, "prune", model, "--plan", root / "plan.json", "-o", out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["copy_model"]


def test_damaged_shard_index_is_named(root, tmp_path, capsys):
    model = copy_model(root, tmp_path, "sharded")
    (model / "model.safetensors.index.json").write_text('{"weight_map": ')
    line = error_line(capsys, "summary", model)
    assert "model.safetensors.index.json is not a safetensors index" in line


@pytest.mark.parametrize("damage", ["wrong_shard", "missing_key", "missing_shard"])
def test_a_damaged_shard_index_or_a_missing_shard_is_one_line_when_read_tensor_by_tensor(
    damage, root, tmp_path, capsys
):
    """Streamed importance and the out-of-core cut read the index's shards tensor by tensor: an index
    naming the wrong shard or missing a tensor was a KeyError traceback, and a missing shard read as
    "not a safetensors checkpoint: download a hub model first" (outside big-teacher audit 2, 3)."""
    model = copy_model(root, tmp_path, "sharded")
    index_file = model / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    names = sorted(index["weight_map"])
    victim = next(n for n in names if "layers.1.mlp.down_proj" in n)
    shard = index["weight_map"][victim]
    if damage == "wrong_shard":
        index["weight_map"][victim] = next(f for f in sorted(set(index["weight_map"].values())) if f != shard)
        want = f"the index puts {victim} in"
    elif damage == "missing_key":
        del index["weight_map"][victim]
        want = f"has no tensor {victim}"
    else:
        (model / shard).unlink()
        want = shard
    index_file.write_text(json.dumps(index))
    out = tmp_path / "out"
    streamed = [
        "importance",
        model,
        *SMALL,
        "--scans",
        "bi,drop",
        "--tokenizer",
        root / "model",
        "--offload",
        "always",
    ]
    streamed += ["-o", out]
    line = error_line(capsys, *streamed)
    assert want in line and "download" not in line, line
    assert want in error_line(
        capsys, "prune", model, "--plan", root / "plan.json", "-o", out, "--out-of-core"
    )
    assert not out.exists()


@pytest.mark.parametrize("mode", ["--in-memory", "--out-of-core"])
def test_a_bad_plan_is_refused_before_the_teacher_is_read(mode, root, tmp_path, capsys):
    """The plan is checked on the config's shapes first: a layer out of range took a whole hash (out
    of core) or load (in memory) of the teacher before it was said, minutes on a 70B one."""
    (tmp_path / "bad.json").write_text(json.dumps({"drop_layers": [40]}))
    code = main(
        [
            "prune",
            str(root / "sharded"),
            "--plan",
            str(tmp_path / "bad.json"),
            "-o",
            str(tmp_path / "o"),
            mode,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "layer 40 out of range" in err.strip().splitlines()[-1], err
    assert "[hash]" not in err and "[load]" not in err, err


def test_mistyped_config_field_is_named(root, tmp_path, capsys):
    model = copy_model(root, tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "two"}))
    line = error_line(capsys, "summary", model)
    assert "cannot read the config" in line and "'num_hidden_layers' expected int" in line


def test_a_layers_file_that_disagrees_with_the_weights_is_named(root, tmp_path, capsys):
    """A non-uniform student whose prunescope_layers.json was edited: summary, prune (in memory and out
    of core), evaluate and distill ended in a torch traceback (size mismatch / invalid reshape); every
    loader now says it in the same words."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"remove_neurons": {"0": list(range(8))}}))
    student = tmp_path / "student"
    assert main(["prune", str(root / "model"), "--plan", str(plan), "-o", str(student)]) == 0
    layers = json.loads((student / "prunescope_layers.json").read_text())
    layers["layers"][0]["intermediate_size"] = 48  # the weights hold 40
    (student / "prunescope_layers.json").write_text(json.dumps(layers))
    capsys.readouterr()
    wrong = "model.layers.0.mlp.gate_proj.weight is [40, 32] in the weights but [48, 32] by prunescope_layers.json"
    out = tmp_path / "out"
    for argv in (
        ["summary", student],
        ["prune", student, "--plan", root / "plan.json", "-o", out],
        ["prune", student, "--plan", root / "plan.json", "--out-of-core", "-o", out],
        ["evaluate", student, "--tasks", "none", "--max-documents", "2"],
        ["importance", student, *SMALL, "--offload", "always", "--block-size", "1", "-o", out],
        [*_distill_into(root, out)[:1], student, *_distill_into(root, out)[2:]],
    ):
        line = error_line(capsys, *argv)
        assert f"{student}: the weights do not match prunescope_layers.json ({wrong})" in line, argv
    assert not out.exists()


# ---- numbers out of range ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["inf", "1e300", "1e-12"])
def test_shard_size_out_of_range_is_refused(size, root, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:  # an argparse type: refused while parsing
        main(
            ["prune", str(root / "model"), "--plan", str(root / "plan.json"), "-o", str(out)]
            + ["--out-of-core", "--shard-size", size]
        )
    assert exit_.value.code == 2
    assert f"argument --shard-size: must be a number of GB from 1e-9 to 1e+09, got '{size}'" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_importance_longer_than_the_model_is_refused(root, tmp_path, capsys):
    """--seq-len past the model's positions was accepted and then scored positions it never saw."""
    out = tmp_path / "run"
    line = error_line(capsys, "importance", root / "model", *SMALL, "--seq-len", "513", "-o", out)
    assert line.endswith(
        f"error: --seq-len: 513 tokens exceed the 512 positions of {root / 'model'}; at most 512"
    )
    assert not out.exists()


def test_infinite_spill_limit_is_refused(root, tmp_path, capsys):
    out = tmp_path / "run"
    line = error_line(
        capsys,
        "importance",
        root / "model",
        *SMALL,
        "--offload",
        "always",
        "--spill-limit-gb",
        "inf",
        "-o",
        out,
    )
    assert "--spill-limit-gb must be a positive number of GB, got inf" in line and not out.exists()


def test_spill_dir_under_a_file_is_refused_before_the_run(root, tmp_path, capsys):
    """The spill directory is used only once activations outgrow RAM, maybe hours into a streamed run;
    a file in its way failed there with a bare OS error."""
    blocker, out = tmp_path / "notes.txt", tmp_path / "run"
    blocker.write_text("x")
    args = ["importance", root / "model", *SMALL, "--offload", "always", "--spill-dir", blocker / "spill"]
    line = error_line(capsys, *args, "-o", out)
    assert line.endswith(f"error: --spill-dir: {blocker} is a file, not a directory") and not out.exists()


@pytest.mark.parametrize(("flag", "value"), [("--lr", "inf"), ("--temperature", "inf"), ("--seed", "-1")])
def test_distill_refuses_numbers_that_cannot_train(flag, value, root, tmp_path, capsys):
    """--lr inf used to train a student of NaNs to the end and save it; --seed -1 failed inside numpy."""
    out = tmp_path / "out"
    args = [*_distill_into(root, out), flag, value]
    assert error_line(capsys, *args).startswith(f"prunescope distill: error: {flag}: ")
    assert not out.exists()


def _distill_into(root, out) -> list:
    """`prunescope distill` of the test model on its data into `out` (options are appended)."""
    return ["distill", root / "model", "--data", root / "data.jsonl", *DISTILL, "-o", out]


def test_distill_longer_than_the_model_is_refused(root, tmp_path, capsys):
    """--seq-len past the student's (and teacher's) positions: refused before any step, nothing written."""
    out, work = tmp_path / "out", tmp_path / "work"
    line = error_line(capsys, *_distill_into(root, out), "--seq-len", "513", "--work-dir", work)
    assert line.endswith(
        f"error: --seq-len: 513 tokens exceed the 512 positions of {root / 'model'}; at most 512"
    )
    assert not out.exists() and not any(work.glob("checkpoint*"))


def test_a_rule_between_fields_reads_without_a_made_up_flag(root, tmp_path, capsys):
    line = error_line(
        capsys,
        *_distill_into(root, tmp_path / "o"),
        "--lr",
        "1e-4",
        "--min-lr",
        "1e-3",
    )
    assert line == "prunescope distill: error: min_lr must not exceed lr"


@pytest.mark.parametrize("command", ["importance", "search"])
def test_negative_seed_names_the_flag(command, root, tmp_path, capsys):
    if command == "importance":
        args = ["importance", root / "model", *SMALL, "--seed", "-1", "-o", tmp_path / "run"]
    else:
        args = ["search", root / "model", "--importance", tmp_path, "--budget", "params=50%", "--seed", "-1"]
    assert "--seed" in error_line(capsys, *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-documents", "0"], "--max-documents must be at least 1, got 0"),  # 0 read as "all"
        (["--context", "0"], "--context must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--limit", "-1"], "--limit must be at least 1, got -1"),
        (["--context", "100000"], "--context: 100000 tokens exceed the 512 positions of"),
    ],
)
def test_evaluate_numbers_out_of_range(args, message, root, capsys):
    line = error_line(capsys, "evaluate", root / "model", "--tasks", "none", "--max-documents", "2", *args)
    assert message in line


def test_an_unknown_lm_eval_task_is_refused_before_the_model_is_read(root, capsys):
    """It failed after the whole perplexity pass; the model named here does not even exist, so the
    task names are the first thing checked (lm-eval's registry is read: a name it holds would pass)."""
    line = error_line(capsys, "evaluate", root / "absent", "--tasks", "prunescope_cloze,nonexistent_task")
    assert "--tasks: unknown lm-eval task(s): nonexistent_task (local tasks: prunescope_cloze" in line


def test_benchmark_longer_than_the_model_is_refused(root, capsys):
    """A typo such as --prompt-len 100000 ran attention over 100k tokens (tens of GB) on a 512-position model."""
    line = error_line(
        capsys,
        "benchmark",
        "--teacher",
        root / "model",
        "--student",
        root / "model",
        "--batch-sizes",
        "1",
        "--prompt-len",
        "100000",
        "--new-tokens",
        "2",
        "--repeats",
        "1",
    )
    assert "--prompt-len + --new-tokens: 100002 tokens exceed the 512 positions of" in line


@pytest.mark.parametrize("command", ["evaluate", "benchmark"])
def test_result_path_that_is_a_directory_is_refused_before_the_run(command, root, tmp_path, capsys):
    if command == "evaluate":
        args = ["evaluate", root / "model", "--tasks", "none", "--max-documents", "2"]
    else:
        args = ["benchmark", "--teacher", root / "model", "--student", root / "model", "--batch-sizes", "1"]
    assert f"-o: {tmp_path} is a directory" in error_line(capsys, *args, "-o", tmp_path)


@pytest.mark.parametrize("command", ["distill", "evaluate", "benchmark"])
def test_missing_device_is_a_one_line_error(command, root, tmp_path, capsys):
    """cuda:99: not there whether or not this machine has CUDA (a CPU torch raised an AssertionError)."""
    if command == "distill":
        args = ["distill", root / "model", "--data", root / "data.jsonl", *DISTILL, "-o", tmp_path / "o"]
    elif command == "evaluate":
        args = ["evaluate", root / "model", "--tasks", "none"]
    else:
        args = ["benchmark", "--teacher", root / "model", "--student", root / "model"]
    assert "--device: device cuda:99 requested" in error_line(capsys, *args, "--device", "cuda:99")
    assert not (tmp_path / "o").exists()


# ---- damaged checkpoints and artifacts --------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "not_torch", "empty"])
def test_resume_from_a_damaged_checkpoint_names_it(damage, root, tmp_path, capsys):
    work = tmp_path / "out.work"
    work.mkdir()
    checkpoint = work / "checkpoint.pt"
    torch.save({"step": 1, "weights": torch.zeros(4096)}, checkpoint)
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    elif damage == "not_torch":
        checkpoint.write_bytes(bytes(range(256)) * 8)
    else:
        checkpoint.write_bytes(b"")
    line = error_line(
        capsys,
        *_distill_into(root, tmp_path / "out"),
        "--resume",
    )
    assert f"cannot resume: {checkpoint} is damaged or not a checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_damaged_importance_scores_are_named(root, tmp_path, capsys):
    run = write_artifact(tmp_path / "run", {"heads": np.zeros((2, 4), np.float32)}, {"model": "x"})
    scores = run / SCORES_FILE
    scores.write_bytes(scores.read_bytes()[:40])
    plan = tmp_path / "targets.json"
    plan.write_text(json.dumps({"targets": {"num_layers": 1, "layer_method": "bi"}}))
    line = error_line(
        capsys, "prune", root / "model", "--plan", plan, "--importance", run, "-o", tmp_path / "o"
    )
    assert f"importance artifact {run}: {SCORES_FILE} is damaged" in line
    assert not (tmp_path / "o").exists()


# ---- binary files where text belongs ----------------------------------------------------------------

BINARY = bytes([0x80, 0xFF, 0x00, 0xFE]) * 64  # invalid UTF-8 from the first byte


def _importance_on(root, data, stream: bool, out) -> list:
    """`prunescope importance` arguments reading `data` (streamed or not) into `out`."""
    return [
        "importance",
        root / "model",
        *SMALL,
        "--data",
        data,
        *(["--stream"] if stream else []),
        "-o",
        out,
    ]


@pytest.mark.parametrize(
    ("name", "stream", "message"),
    [
        ("data.txt", False, "data.txt: not UTF-8 text (byte 0)"),
        ("data.txt", True, "data.txt: not UTF-8 text (near byte 0)"),
        ("data.jsonl", False, "data.jsonl:1: not UTF-8 text"),
    ],
)
def test_binary_data_file_is_named(name, stream, message, root, tmp_path, capsys):
    data = tmp_path / name
    data.write_bytes(BINARY)
    out = tmp_path / "run"
    args = _importance_on(root, data, stream, out)
    assert f"{tmp_path}/{message}" in error_line(capsys, *args)
    assert not out.exists()


def test_binary_plan_file_is_a_bad_plan(root, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_bytes(BINARY)
    line = error_line(capsys, "prune", root / "model", "--plan", plan, "-o", tmp_path / "o")
    assert f"bad plan {plan}: plan: Invalid JSON" in line


@pytest.mark.parametrize("where", ["missing", "no_tokenizer_files"])
def test_bad_tokenizer_flag_is_named(where, root, tmp_path, capsys):
    tokenizer = tmp_path / "nope" if where == "missing" else root / "sharded"  # weights, no tokenizer
    line = error_line(
        capsys, "importance", root / "model", *SMALL, "--tokenizer", tokenizer, "-o", tmp_path / "run"
    )
    assert line.startswith("prunescope importance: error: --tokenizer: ")


# ---- an output path a file stands in the way of -----------------------------------------------------


@pytest.mark.parametrize("command", ["prune", "prune --overwrite", "importance", "distill", "search"])
def test_output_under_a_file_is_refused_before_any_work(command, root, tmp_path, capsys):
    """A file where the output (or a folder above it) should be: the save at the very end used to fail
    with a bare '[Errno 17] File exists' after the whole cut / pass / training."""
    blocker = tmp_path / "results"
    blocker.write_text("my notes")
    out = blocker / "run" if command != "prune --overwrite" else blocker
    model = root / "model"
    args = {
        "prune": ["prune", model, "--plan", root / "plan.json", "-o", out],
        "prune --overwrite": ["prune", model, "--plan", root / "plan.json", "-o", out, "--overwrite"],
        "importance": ["importance", model, *SMALL, "-o", out],
        "distill": ["distill", model, "--data", root / "data.jsonl", *DISTILL, "-o", out],
        "search": ["search", model, "--importance", tmp_path, "--budget", "params=50%", "-o", out],
    }[command]
    assert error_line(capsys, *args).endswith(f"error: -o: {blocker} is a file, not a directory")
    assert blocker.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_distill_work_dir_under_a_file_is_refused(root, tmp_path, capsys):
    blocker = tmp_path / "ckpts"
    blocker.write_text("x")
    line = error_line(
        capsys,
        *_distill_into(root, tmp_path / "out"),
        "--work-dir",
        blocker / "w",
    )
    assert line.endswith(f"error: --work-dir: {blocker} is a file, not a directory")


def _summary_step(work) -> int:
    return json.loads((work / "checkpoint.json").read_text())["step"]


def test_a_fresh_distill_over_an_earlier_checkpoint_needs_resume_or_overwrite(root, tmp_path, capsys):
    """A second run without --resume into a work dir holding a checkpoint overwrote it at its first save
    (hours of distillation). Now it is refused, and --overwrite / --resume say which was meant."""
    work, stop = tmp_path / "work", tmp_path / "STOP"
    assert main([str(a) for a in [*_distill_into(root, tmp_path / "first"), "--work-dir", work]]) == 0
    before = (work / "checkpoint.pt").read_bytes()
    assert _summary_step(work) == 2

    again = [*_distill_into(root, tmp_path / "second"), "--work-dir", work]
    line = error_line(capsys, *again)
    assert f"work directory {work} holds a checkpoint at step 2 of an earlier run" in line
    assert "--resume" in line and "--overwrite" in line
    assert (work / "checkpoint.pt").read_bytes() == before and not (tmp_path / "second").exists()

    stop.touch()  # --overwrite: the earlier checkpoint goes; this run stops at once with its own, step 0
    assert main([str(a) for a in [*again, "--overwrite", "--stop-file", stop]]) == 3
    assert f"removing the earlier run's checkpoint (step 2) in {work}" in capsys.readouterr().err
    assert _summary_step(work) == 0 and not (tmp_path / "second").exists()
    stop.unlink()
    assert main([str(a) for a in [*again, "--resume"]]) == 0  # --resume continues the new run
    assert json.loads((tmp_path / "second" / "prunescope_manifest.json").read_text())["steps"] == 2
    assert _summary_step(work) == 2


def test_a_resume_with_other_steps_says_the_schedule_changes(root, tmp_path, capsys):
    """--steps may change on a resume (to extend a run), but the cosine schedule then differs from the
    run it continues: said, not silent (outside distributed audit 10)."""
    work = tmp_path / "work"
    run = [str(a) for a in [*_distill_into(root, tmp_path / "out"), "--work-dir", work]]
    assert main(run) == 0
    capsys.readouterr()
    assert main([*run, "--resume", "--overwrite", "--steps", "3"]) == 0
    err = capsys.readouterr().err
    assert "[resume] --steps 3, the checkpoint's run planned 2: the learning-rate schedule" in err, err
    assert main([*run, "--resume", "--overwrite", "--steps", "3"]) == 0  # the same steps: nothing said
    assert "[resume] --steps" not in capsys.readouterr().err


def test_a_resume_keeps_each_step_once_in_the_metrics_file(root, tmp_path, capsys):
    """A killed run has logged steps past its last checkpoint; the resume runs them again. Each step's
    record is in --metrics-jsonl once (it held steps 4, 5, 6 twice after a killed run's resume)."""
    work, metrics = tmp_path / "work", tmp_path / "m.jsonl"
    run = [
        str(a)
        for a in [*_distill_into(root, tmp_path / "out"), "--work-dir", work, "--metrics-jsonl", metrics]
    ]
    assert main(run) == 0  # 2 steps, its checkpoint at step 2
    with metrics.open("a") as f:  # what a run killed after step 4 had written past that checkpoint
        f.write("".join(json.dumps({"phase": "train", "step": s, "loss": 9.9}) + "\n" for s in (3, 4)))
    capsys.readouterr()
    assert main([*run, "--resume", "--overwrite", "--steps", "4"]) == 0
    assert "[resume] 2 record(s) after step 2 removed" in capsys.readouterr().err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r.get("phase") == "train"] == [1, 2, 3, 4]
    assert all(r["loss"] != 9.9 for r in records if r.get("phase") == "train")


def test_resume_with_another_teacher_data_or_seq_len_is_refused(root, tmp_path, capsys):
    """The checkpoint records the teacher's weights (sampled) and the training blocks: a --resume with
    another --teacher, --data or --seq-len was accepted and continued a run it was not."""
    other_teacher, other_data = tmp_path / "teacher2", tmp_path / "data2.jsonl"
    save_model(tiny_llama(seed=7), demo_tokenizer(), other_teacher, {"kind": "test"})
    lines = (root / "data.jsonl").read_text().splitlines()
    other_data.write_text("\n".join(reversed(lines)) + "\n")
    work, stop = tmp_path / "work", tmp_path / "STOP"
    kd = ["--mode", "kd", "--teacher", root / "model", "--work-dir", work]
    stop.touch()
    assert main([str(a) for a in [*_distill_into(root, tmp_path / "out"), *kd, "--stop-file", stop]]) == 3
    stop.unlink()
    before = (work / "checkpoint.pt").read_bytes()
    resume = [*_distill_into(root, tmp_path / "out"), *kd, "--resume"]
    changed = {
        "the teacher's weights are not those": ["--teacher", other_teacher],
        "the training data are not those": ["--data", other_data],
        "seq_len is 12 but the checkpoint was made with 16": ["--seq-len", "12"],
    }
    for message, flags in changed.items():
        assert f"cannot resume: {message}" in error_line(capsys, *resume, *flags)
    assert (work / "checkpoint.pt").read_bytes() == before and not (tmp_path / "out").exists()
    assert main([str(a) for a in resume]) == 0  # the same inputs resume


def test_a_teacher_given_to_the_ce_baseline_is_said_to_be_unused(root, tmp_path, capsys):
    """--mode ce trains on labels alone: a --teacher (the same flags as a kd run) was ignored without a word."""
    assert main([str(a) for a in [*_distill_into(root, tmp_path / "out"), "--teacher", root / "model"]]) == 0
    err = capsys.readouterr().err
    assert f"[mode ce] --teacher {root / 'model'} is not read: the baseline trains on labels alone" in err


@pytest.fixture(scope="module")
def importance_run(root):
    run = root / "importance"
    assert main(["importance", str(root / "model"), *SMALL, "--block-size", "1", "-o", str(run)]) == 0
    return run


@pytest.mark.parametrize("content", [BINARY, b'["not", "a", "cache"]', None])
def test_latency_cache_that_is_not_one_is_left_alone(content, root, importance_run, tmp_path, capsys):
    """--latency-cache pointed at another file (or a folder) by mistake: the cache read it as empty and
    wrote its timings over it."""
    cache = tmp_path / "notes.bin"
    if content is None:
        cache.mkdir()
    else:
        cache.write_bytes(content)
    line = error_line(
        capsys,
        "search",
        root / "model",
        "--importance",
        importance_run,
        "--budget",
        "latency=400ms@1,16",
        "--latency-cache",
        cache,
    )
    assert line.startswith(f"prunescope search: error: --latency-cache: {cache} is ")
    assert cache.is_dir() if content is None else cache.read_bytes() == content


# ---- train-teacher (always with --out: its default is the shipped demo teacher) ---------------------

TEACHER = ["--hidden", "32", "--layers", "1", "--intermediate", "32", "--steps", "2", "--batch-size", "2"]
TEACHER += ["--seq-len", "16", "--eval-every", "1", "--checkpoint-every", "1", "--warmup", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),  # trained a teacher of NaNs
        (["--lr", "-1"], "--lr must be a positive finite number, got -1.0"),
        (["--seed", "-1"], "--seed must be 0 or more, got -1"),
        (["--tokenizer", "{tmp}/nope"], "--tokenizer: {tmp}/nope is not a directory"),
        (["--work-dir", "{tmp}/file/work"], "--work-dir: {tmp}/file is a file, not a directory"),
        (["--work-dir", "{tmp}/damaged"], "cannot resume: {tmp}/damaged/checkpoint.pt is damaged"),
    ],
)
def test_train_teacher_bad_input(args, message, root, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(BINARY)  # resumed by default
    args = [a.format(tmp=tmp_path) for a in args]
    out = tmp_path / "teacher"
    line = error_line(capsys, "train-teacher", "--out", out, "--data", root / "data.jsonl", *TEACHER, *args)
    assert message.format(tmp=tmp_path) in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["importance", "distill"])
@pytest.mark.parametrize("where", ["missing_folder", "a_folder"])
def test_metrics_file_that_cannot_be_written_is_refused_before_the_run(
    command, where, root, tmp_path, capsys
):
    """--metrics-jsonl in a folder that is not there (or naming a folder) failed at the first record, after
    the model had loaded and the first batch or step had run, with a bare OS error."""
    metrics = tmp_path / "nowhere" / "m.jsonl" if where == "missing_folder" else tmp_path
    out = tmp_path / "out"
    if command == "importance":
        args = ["importance", root / "model", *SMALL, "-o", out]
    else:
        args = ["distill", root / "model", "--data", root / "data.jsonl", *DISTILL, "-o", out]
    line = error_line(capsys, *args, "--metrics-jsonl", metrics)
    assert line.startswith(f"prunescope {command}: error: --metrics-jsonl: ")
    assert not out.exists() and not (tmp_path / "out.work").exists()


SEARCH = ["--budget", "params=90%", "--eval-samples", "2", "--eval-seq-len", "16", "--mlp-step", "8"]
SEARCH += ["--hidden-step", "8", "--all"]


def test_search_output_is_replaced_whole_and_a_foreign_folder_is_refused(
    root, importance_run, tmp_path, capsys
):
    """-o wrote its files into the folder as it went: a second search left the first one's plans beside its
    own (a mix of two searches) and any folder, however full, was written into."""
    out = tmp_path / "search"
    for top in ("3", "1"):
        code = main(
            ["search", str(root / "model"), "--importance", str(importance_run), *SEARCH, "-o", str(out)]
            + ["--top", top]
        )
        assert code == 0, capsys.readouterr().err
    report = json.loads((out / "search.json").read_text())
    assert len(report["candidates"]) > 1  # so the first search wrote more than one plan
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["search.json", f"rank01-{report['candidates'][0]['id']}.plan.json"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search"]  # no temporary folder left
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("x")
    line = error_line(
        capsys, "search", root / "model", "--importance", importance_run, *SEARCH, "-o", foreign
    )
    assert line.endswith(f"-o: {foreign} is not empty and holds no search.json; choose another output")
    assert [p.name for p in foreign.iterdir()] == ["chapter1.tex"]


CUT_GZIP = gzip.compress(b'{"text": "a line of text"}\n' * 50, mtime=0)[:30]


@pytest.mark.parametrize(
    ("name", "content", "stream", "message"),
    [
        ("cut.jsonl.gz", CUT_GZIP, False, "damaged gzip file"),
        ("cut.jsonl.gz", CUT_GZIP, True, "damaged gzip file"),
        ("fake.jsonl.gz", BINARY, False, "damaged gzip file (Not a gzipped file"),
        ("fake.jsonl.gz", BINARY, True, "damaged gzip file (Not a gzipped file"),
        ("fake.parquet", BINARY, True, "not a parquet file"),  # read whole, pyarrow's message names it
    ],
)
def test_damaged_compressed_data_is_named(name, content, stream, message, root, tmp_path, capsys):
    """A .jsonl.gz cut short was an EOFError traceback; a file that is no gzip / no parquet did not say
    which file."""
    data = tmp_path / name
    data.write_bytes(content)
    out = tmp_path / "run"
    args = _importance_on(root, data, stream, out)
    assert f"{data}: {message}" in error_line(capsys, *args)
    assert not out.exists()


@pytest.mark.parametrize(
    ("plan", "where"),
    [({"drop_layers": [True]}, "drop_layers.0"), ({"targets": {"num_layers": True}}, "targets.num_layers")],
)
def test_true_is_no_index_in_a_plan(plan, where, root, tmp_path, capsys):
    """JSON true read as 1: {"drop_layers": [true]} dropped layer 1 and saved the student."""
    file = tmp_path / "plan.json"
    file.write_text(json.dumps(plan))
    line = error_line(capsys, "prune", root / "model", "--plan", file, "-o", tmp_path / "o")
    assert f"bad plan {file}: {where}: Value error, true/false is not a number" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("damage", "message"), [("bad_json", "is damaged (Expecting"), ("no_layers", "is damaged (no 'layers')")]
)
def test_damaged_layers_file_of_a_non_uniform_student_is_named(damage, message, root, tmp_path, capsys):
    """A student whose layers differ keeps their widths in prunescope_layers.json; a missing key in it was
    a KeyError traceback, bad JSON a bare 'Expecting ...' message."""
    student = tmp_path / "student"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"remove_heads": {"0": [0, 1]}}))  # layer 0 narrower: non-uniform
    assert main(["prune", str(root / "model"), "--plan", str(plan), "-o", str(student)]) == 0
    layers = student / "prunescope_layers.json"
    info = json.loads(layers.read_text())
    layers.write_text(
        "{" if damage == "bad_json" else json.dumps({k: v for k, v in info.items() if k != "layers"})
    )
    assert f"{layers} {message}" in error_line(capsys, "summary", student)


def test_removing_every_kv_group_names_remove_kv_groups(root, tmp_path, capsys):
    """The error named remove_heads, a field the plan did not have."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"remove_kv_groups": {"0": [0, 1]}}))
    line = error_line(capsys, "plan-stats", root / "model", "--plan", plan)
    assert "bad plan: remove_kv_groups.0: layer 0 would keep no attention head" in line
