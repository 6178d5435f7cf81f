"""Distillation under torchrun: 2 gloo ranks with FSDP2 against the one-process loop on the same global batch.

Each test launches `python -m torch.distributed.run` on `distill_rank_main.py` (a fixed tiny run) and
compares with one in-process reference run of the same script. Every launch runs in its own process
group, killed in a finally, so no rank outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.engine import distill_rank_main
from tests.engine.torchrun_helpers import finish, kill_group, launch, launch_nodes, rank_env

SCRIPT = Path(distill_rank_main.__file__)
STEPS = 10


def _launch(out: Path, *args: str, ranks: int = 2, env: dict | None = None):
    return launch([str(SCRIPT), str(out), f"--steps={STEPS}", *args], ranks=ranks, env=env)


def _run(out: Path, *args: str, ranks: int = 2, env: dict | None = None) -> tuple[int, str]:
    return finish(_launch(out, *args, ranks=ranks, env=env))


def _history(out: Path) -> dict:
    return json.loads((out / "history.json").read_text())


def _assert_same_run(got: Path, want: Path, atol: float = 1e-5) -> None:
    g, w = _history(got), _history(want)
    assert [m["step"] for m in g["history"]] == list(range(1, STEPS + 1))
    for a, b in zip(g["history"], w["history"]):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "kd_loss", "ce_loss", "intermediate_loss", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=1e-4), (key, a, b)
    assert [v["val_loss"] for v in g["validation"]] == pytest.approx(
        [v["val_loss"] for v in w["validation"]], abs=1e-5
    )
    got_w, want_w = torch.load(got / "student.pt"), torch.load(want / "student.pt")
    assert set(got_w) == set(want_w)
    for name, tensor in want_w.items():
        assert torch.allclose(got_w[name], tensor, atol=atol, rtol=0), (
            name,
            (got_w[name] - tensor).abs().max(),
        )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The plain one-process loop (no torchrun, no FSDP), global batch 4."""
    out = tmp_path_factory.mktemp("reference")
    # One thread, as each rank has (torchrun_helpers): a 2-thread reference rounds its reductions
    # differently, enough to move final weights past 1e-5 over 10 steps (seen under `make test`).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert distill_rank_main.main([str(out), f"--steps={STEPS}"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_two_nodes_equal_one_process_with_sharded_teacher_and_checkpointing(tmp_path):
    """2 "nodes" of 1 rank (c10d rendezvous), the teacher sharded, activation checkpointing on, and the
    hidden-state loss too (its layer hooks run on FSDP-wrapped layers)."""
    reference = tmp_path / "reference"
    assert distill_rank_main.main([str(reference), f"--steps={STEPS}", "--intermediate-weight=0.5"]) == 0
    tmp_path = tmp_path / "nodes"
    args = [str(SCRIPT), str(tmp_path), f"--steps={STEPS}", "--teacher-placement=shard"]
    agents = launch_nodes([*args, "--gradient-checkpointing", "--intermediate-weight=0.5"])
    try:
        for agent in agents:
            code, log = finish(agent)
            assert code == 0, log
    finally:
        for agent in agents:
            kill_group(agent)
    _assert_same_run(tmp_path, reference)
    context = _history(tmp_path)["context"]
    assert context["world_size"] == 2 and context["nodes"] == 2 and context["teacher_placement"] == "shard"
    # Live figures (log_every 1): every step's metrics carry both ranks' tokens/s, peak memory, step time.
    for m in _history(tmp_path)["history"]:
        assert m["world_size"] == 2 and [r["rank"] for r in m["ranks"]] == [0, 1], m
        for r in m["ranks"]:
            assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["peak_memory_bytes"] > 2**20, r
            # each rank's own rate: its share of the step's tokens over its own step time
            assert r["tokens_per_s"] * r["step_s"] == pytest.approx(m["tokens"] / m["step"] / 2)
    # The loop changed the losses a lot over 10 steps: equality above is not two untrained runs agreeing.
    losses = [m["loss"] for m in _history(reference)["history"]]
    assert losses[-1] < 0.8 * losses[0]


def test_stop_on_one_rank_stops_both_and_sharded_resume_with_accumulation_is_exact(reference, tmp_path):
    # Global batch 2 x 2 micro-batches: the reference's 4 samples per step (one row per rank per micro).
    accumulate = ("--batch-size=2", "--grad-accum=2", "--val-batches=4")  # validation: the same 8 blocks
    accumulate += ("--log-every=3",)  # every rank's figures on steps 1, 3, 6, 9 and the last
    code, log = _run(tmp_path, "--stop-at=4", "--checkpoint-every=3", *accumulate)
    assert code != 0, log  # each rank exits 3 (stopped); torchrun reports the job as not completed
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [ranks[0], ranks[0]] and ranks[0]["steps"] == 4 and ranks[0]["stopped"], ranks
    summary = json.loads((tmp_path / "work" / "checkpoint.json").read_text())
    assert summary["step"] == 4 and summary["stopped"] and summary["world_size"] == 2
    assert not list((tmp_path / "work").glob(".checkpoint.dcp.*"))  # the old checkpoint was replaced

    code, log = _run(tmp_path, "--resume", *accumulate)
    assert code == 0, log
    _assert_same_run(tmp_path, reference)
    logged = [m for m in _history(tmp_path)["history"] if "ranks" in m]  # steps 1-4 from the checkpoint
    assert [m["step"] for m in logged] == [1, 3, 6, 9, 10]
    assert all(len(m["ranks"]) == m["world_size"] == 2 for m in logged)


def test_teacher_correction_on_two_ranks_equals_one_process(tmp_path):
    """The teacher fine-tuned first (CE on the distillation data) as an FSDP2-sharded copy on 2 ranks, then
    placed sharded for the distillation: the same correction losses, corrected teacher and run as in one
    process."""
    # 2 correction steps: AdamW's normalised steps carry the float rounding of the sharded reductions
    # into the weights, a little more each step (seen: 3.9e-6 after 2 steps, 9.4e-6 after 4)
    args = (f"--steps={STEPS}", "--teacher-correction-steps=2")
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        assert distill_rank_main.main([str(reference), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    code, log = finish(launch([str(SCRIPT), str(tmp_path / "two"), *args, "--teacher-placement=shard"]))
    assert code == 0, log
    got, want = _history(tmp_path / "two"), _history(reference)
    assert [m["step"] for m in got["correction"]] == [1, 2]
    for a, b in zip(got["correction"], want["correction"], strict=True):
        for key in ("ce_loss", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=1e-4), (key, a, b)
    assert want["correction"][-1]["ce_loss"] < want["correction"][0]["ce_loss"]  # it trained
    got_t, want_t = torch.load(tmp_path / "two" / "teacher.pt"), torch.load(reference / "teacher.pt")
    from tests.engine.distill_helpers import tiny_llama

    untouched = tiny_llama(seed=1, layers=3, hidden=32).state_dict()
    assert any(not torch.allclose(want_t[n], untouched[n]) for n in untouched)  # corrected, not the source
    for name, tensor in want_t.items():
        assert torch.allclose(got_t[name], tensor, atol=1e-5, rtol=0), (
            name,
            (got_t[name] - tensor).abs().max(),
        )
    # Then distilled from it alike: the losses to 1e-5 for every step; the student's weights to 5e-5, as
    # the two corrected teachers differ by float rounding (< 1e-5, above) that Adam's normalised steps
    # carry into the student (seen: 1.8e-5 after 10 steps).
    _assert_same_run(tmp_path / "two", reference, atol=5e-5)
    assert got["context"]["teacher_placement"] == "shard"


def test_killed_rank_fails_the_job_and_it_resumes_on_one_rank(reference, tmp_path):
    # The last rank stalls before step 5 (after the step-4 checkpoint); we SIGKILL it there.
    proc = _launch(tmp_path, "--checkpoint-every=2", "--hang-at=5")
    try:
        deadline = time.monotonic() + 180
        summary = tmp_path / "work" / "checkpoint.json"
        while not (summary.exists() and json.loads(summary.read_text())["step"] == 4):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        killed_at = time.monotonic()
        os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
        code, log = finish(proc, timeout=60)
        assert code != 0, log
        assert time.monotonic() - killed_at < 60
    finally:
        kill_group(proc)
    assert not (tmp_path / "history.json").exists()  # the job did not finish

    code, log = _run(tmp_path, "--resume", ranks=1)  # 2 ranks -> 1: DCP reshards the checkpoint
    assert code == 0, log
    _assert_same_run(tmp_path, reference)
    assert _history(tmp_path)["context"]["world_size"] == 1


def test_a_one_process_checkpoint_resumes_on_two_ranks_and_back(reference, tmp_path):
    """Plain checkpoint.pt (one process, steps 1-4) -> 2 FSDP ranks (5-7, sharded checkpoint) -> one
    process again (8-10): the same run as the reference, each switch removing the older format."""
    work = tmp_path / "work"
    assert distill_rank_main.main([str(tmp_path), f"--steps={STEPS}", "--stop-at=4"]) == 3
    assert (work / "checkpoint.pt").is_file() and not (work / "checkpoint.dcp").exists()

    code, log = _run(tmp_path, "--resume", "--stop-at=7")  # full state dicts into the shards
    assert code != 0, log  # the ranks stopped (exit 3) at step 7
    summary = json.loads((work / "checkpoint.json").read_text())
    assert summary["step"] == 7 and summary["world_size"] == 2
    assert (work / "checkpoint.dcp").is_dir() and not (work / "checkpoint.pt").exists()

    assert distill_rank_main.main([str(tmp_path), f"--steps={STEPS}", "--resume"]) == 0  # DCP, no group
    assert (work / "checkpoint.pt").is_file() and not (work / "checkpoint.dcp").exists()
    _assert_same_run(tmp_path, reference)
    assert _history(tmp_path)["context"]["world_size"] == 1


def test_hung_rank_fails_the_job_within_the_collective_timeout(tmp_path):
    began = time.monotonic()
    code, log = _run(tmp_path, "--hang-at=2", env=rank_env(PRUNESCOPE_DIST_TIMEOUT_S="5"))
    assert code != 0, log
    assert time.monotonic() - began < 120
    assert "timed out" in log.lower() or "timeout" in log.lower(), log[-3000:]


def test_distill_cli_under_torchrun_streams_by_rank_and_saves_as_one_process(tmp_path):
    """`prunescope distill --stream` in one process == the same command on 2 ranks (torchrun -m)."""
    from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama
    from worker.cli import main
    from worker.engine.loading import MANIFEST_FILE, load_model, save_model

    tok = demo_tokenizer()
    save_model(tiny_llama(seed=1, layers=3), tok, tmp_path / "teacher", {"kind": "test-teacher"})
    save_model(tiny_llama(seed=2, layers=2), tok, tmp_path / "student", {"kind": "test-student"})
    lines = [ln for doc in demo_documents("train", 6) for ln in doc.split("\n") if len(ln.strip()) > 20]
    docs = ["\n".join(lines[i : i + 6]) for i in range(0, min(len(lines), 1800), 6)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def args(out):
        return [
            *(str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--data", str(data)),
            *("--stream", "-o", str(out), "--steps", "4", "--batch-size", "4", "--seq-len", "32"),
            *("--lr", "3e-3", "--warmup", "1", "--val-every", "2", "--val-batches", "1"),
            *("--checkpoint-every", "2"),
        ]

    assert main(["distill", *args(tmp_path / "one")]) == 0
    proc = launch(["-m", "worker.cli", "distill", *args(tmp_path / "two")])
    code, log = finish(proc)
    assert code == 0, log

    results = [
        json.loads((tmp_path / n / "distill_result.json").read_text())["result"] for n in ("one", "two")
    ]
    for a, b in zip(results[0]["history"], results[1]["history"]):
        assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5, rel=1e-4)
    placed = results[1]["distributed"]
    assert placed["world_size"] == 2 and placed["teacher_placement"] == "replicate"  # tiny: it fits
    assert placed["teacher_placement_reason"].startswith("memory planner:")
    assert len(placed["peak_memory_per_rank"]) == 2 and min(placed["peak_memory_per_rank"]) > 2**20
    manifest = json.loads((tmp_path / "two" / MANIFEST_FILE).read_text())
    assert manifest["world_size"] == 2 and manifest["nodes"] == 1 and manifest["format"] == "vanilla"
    one, _ = load_model(tmp_path / "one")
    two, _ = load_model(tmp_path / "two")
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name

    # Its work dir holds the step-4 checkpoint: a fresh run on it is refused by every rank, before any
    # process group or model, and said once (worker.engine.launch.first_to_say); --overwrite starts
    # afresh, rank 0 alone removing the old state.
    again = [*args(tmp_path / "three"), "--work-dir", str(tmp_path / "two.work")]
    code, log = finish(launch(["-m", "worker.cli", "distill", *again]))
    assert code != 0 and log.count("prunescope distill: error: work directory") == 1, log  # no traceback
    assert "exitcode  : 2" in log, log
    assert "holds a checkpoint at step 4 of an earlier run" in log and not (tmp_path / "three").exists()
    code, log = finish(launch(["-m", "worker.cli", "distill", *again, "--overwrite"]))
    assert code == 0, log
    assert log.count("[overwrite] removing the earlier run's checkpoint (step 4)") == 1, log
    rerun = json.loads((tmp_path / "three" / "distill_result.json").read_text())["result"]
    assert [m["loss"] for m in rerun["history"]] == pytest.approx([m["loss"] for m in results[1]["history"]])


def test_ranks_come_from_torchrun_or_slurm_and_one_process_is_the_identity(monkeypatch):
    from worker.engine.distributed import DistributedContext, launched_ranks

    slurm_nodes = ("SLURM_NTASKS_PER_NODE", "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "SLURM_PROCID",
        "MASTER_ADDR",
        *slurm_nodes,
    ):
        monkeypatch.delenv(name, raising=False)
    assert launched_ranks() is None
    ctx = DistributedContext.from_environment()
    assert not ctx.distributed and ctx.is_main and ctx.mean([1.5, 2.0]) == [1.5, 2.0] and not ctx.any(False)
    assert torch.equal(ctx.local_rows(torch.arange(4)), torch.arange(4))
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2(x2)"}
    for name, value in {**slurm, "MASTER_ADDR": "node0"}.items():
        monkeypatch.setenv(name, value)
    assert launched_ranks() == {"rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2}
    # srun without --ntasks-per-node: the per-node count from the step's nodes (a 2-node run said nodes: 1)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert launched_ranks() == {"rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2}
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)  # torchrun's variables win over SLURM's
    assert launched_ranks() == {"rank": 1, "world_size": 2, "local_rank": 0, "local_world_size": 1}


def test_a_slurm_task_says_what_it_waits_for():
    """Inside an sbatch script (SLURM_PROCID, SLURM_NTASKS and MASTER_ADDR set for a later srun) a plain
    command joins a group of SLURM_NTASKS ranks: it says so before waiting, instead of sitting silent
    until the collective timeout (outside distributed audit 8)."""
    import subprocess
    import sys

    from tests.engine.torchrun_helpers import rank_env

    env = {
        **rank_env(),
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29731",
    }
    code = "from worker.engine.distributed import DistributedContext; DistributedContext.from_environment('cpu', 2)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    first = proc.stderr.splitlines()[0]
    assert first.startswith("[ranks] SLURM task 0 of 2: waiting for the others at 127.0.0.1:29731"), (
        proc.stderr
    )


def test_the_memory_planner_places_the_teacher():
    """An 8B teacher (bf16, 16 GB) beside a ~4B student sharded over 8 ranks: replicated on 141 GB devices
    (no all-gather in its forward), sharded on 24 GB ones where a whole copy leaves no room."""
    from tests.real_shapes import llama_3_1_8b
    from worker.engine.distill.config import DistillConfig
    from worker.engine.distill.distributed import plan_teacher_placement

    teacher, student = llama_3_1_8b(), llama_3_1_8b(num_layers=16, intermediate_size=9216)
    config = DistillConfig(batch_size=8, weights_dtype="bfloat16", gradient_checkpointing=True)
    gib = 2**30
    roomy, why = plan_teacher_placement(student, teacher, config, 4096, 8, "cuda", 141 * gib)
    tight, why_not = plan_teacher_placement(student, teacher, config, 4096, 8, "cuda", 24 * gib)
    assert (roomy, tight) == ("replicate", "shard"), (why, why_not)
    assert why.startswith("memory planner:") and "with the teacher replicated" in why
