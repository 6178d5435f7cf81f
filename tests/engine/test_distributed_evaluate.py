"""Data-parallel evaluation over 2 gloo ranks == one process: the perplexity (each rank scoring every
other batch of windows) and lm-eval (each rank answering every other batch of each model call)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.engine.torchrun_helpers import live_ranks, run

RANK_MAIN = Path(__file__).with_name("lm_eval_rank_main.py")


def test_two_ranks_give_the_one_process_perplexity(tmp_path):
    from tests.engine.distill_helpers import demo_tokenizer, tiny_llama
    from worker.engine.data import read_documents
    from worker.engine.evaluation import perplexity
    from worker.engine.loading import save_model

    model, tokenizer = tiny_llama(seed=5, layers=2), demo_tokenizer()
    save_model(model, tokenizer, tmp_path / "model", {"kind": "test"})
    docs = read_documents("demo", "test")[:12]
    # Short windows with a stride: long documents become several windows, so there are many batches.
    options = dict(context=48, stride=24, batch_size=4)
    want = perplexity(model, docs, tokenizer, **options)
    batches = []
    perplexity(model, docs, tokenizer, **options, progress=lambda done, total: batches.append(total))
    assert len(batches) >= 6  # several batches each: rank 1 gets real work, not a remainder

    args = [str(tmp_path / "model"), "--split", "test", "--max-documents", "12", "--context", "48"]
    args += ["--stride", "24", "--batch-size", "4", "--out", str(tmp_path / "two.json")]
    code, log = run(["-m", "worker.evaluate_ranks", *args])
    assert code == 0, log
    result = json.loads((tmp_path / "two.json").read_text())
    got = result["perplexity"]
    assert got["world_size"] == result["world_size"] == 2 and result["tasks"] == []
    assert got["tokens"] == want["tokens"] and got["documents"] == want["documents"] == 12
    assert abs(got["loss"] - want["loss"]) <= 1e-6 * abs(want["loss"]), (got, want)
    assert abs(got["perplexity"] - want["perplexity"]) <= 1e-6 * want["perplexity"], (got, want)
    print(f"relative difference of the perplexity: {abs(got['perplexity'] / want['perplexity'] - 1):.2e}")


def test_prunescope_evaluate_under_torchrun_is_data_parallel_and_saves_once(tmp_path):
    """`torchrun ... prunescope evaluate` scores each rank's share and writes the one-process perplexity
    once, with its world size (it ran the whole evaluation on every rank, each writing the same -o file)."""
    from tests.engine.distill_helpers import demo_tokenizer, tiny_llama
    from worker.cli import main
    from worker.engine.loading import save_model

    save_model(tiny_llama(seed=5, layers=2), demo_tokenizer(), tmp_path / "model", {"kind": "test"})
    args = [str(tmp_path / "model"), "--split", "test", "--max-documents", "12", "--context", "48"]
    args += ["--stride", "24", "--batch-size", "4", "--tasks", "none"]
    assert main(["evaluate", *args, "-o", str(tmp_path / "one.json")]) == 0
    code, log = run(["-m", "worker.cli", "evaluate", *args, "-o", str(tmp_path / "two.json")])
    assert code == 0, log
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["result"] for n in ("one", "two"))
    assert two["world_size"] == 2 and one["world_size"] == 1  # one shape, however many ranks
    assert two["perplexity"]["tokens"] == one["perplexity"]["tokens"]
    assert abs(two["perplexity"]["loss"] - one["perplexity"]["loss"]) <= 1e-6 * one["perplexity"]["loss"]
    assert log.count("[save]") == 1 and log.count("[perplexity]") == 1, log


def test_two_ranks_give_the_one_process_lm_eval(tmp_path):
    """Every request type's answers, bit for bit (each batch is the tensor one process forms), the
    local tasks' metrics, on both ranks; rank 0's progress counts the whole call's requests."""
    from tests.engine.lm_eval_rank_main import main

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert main([str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    code, log = run([str(RANK_MAIN), str(tmp_path / "two")])
    assert code == 0, log
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]

    sizes = {kind: len(answers) for kind, answers in one["answers"].items()}
    assert sizes["loglikelihood"] > 6 * 4 and sizes["generate_until"] > 2 * 4, sizes  # batches of 4
    assert sum(one["answers"]["loglikelihood_rolling"]) < 0
    for kind, rows in one["work"].items():  # each rank ran the model on its share of the rows only
        assert ranks[0]["work"][kind] + ranks[1]["work"][kind] == rows, (kind, one["work"], ranks)
        assert 0 < ranks[1]["work"][kind] <= ranks[0]["work"][kind] < rows, (kind, one["work"], ranks)
    for got in ranks:
        assert got["answers"] == one["answers"]  # exact: same floats, same generated text
        assert got["rows"] == one["rows"] and {r["task"] for r in got["rows"]} == {
            "prunescope_cloze",
            "prunescope_rolling",
        }
    # Rank 0 reports each call over all its requests, as one process does, and ends at the total.
    assert ranks[0]["calls"].keys() == one["calls"].keys()
    for call, reports in ranks[0]["calls"].items():
        totals = {total for _, total in reports}
        assert totals == {one["calls"][call][-1][1]} and reports[-1][0] == reports[-1][1] > 0, call
        assert [d for d, _ in reports] == sorted(d for d, _ in reports), call


class _Runtime:
    """What worker.multi_rank.run_ranks needs of a job's runtime: its log, and no stop asked."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, line: str, level: str = "info") -> None:
        self.lines.append(line)

    def should_stop(self) -> bool:
        return False


def _hanging_ranks(rt, tmp_path, **options) -> bool:
    """Two ranks of lm_eval_rank_main whose last one hangs in its first lm-eval model call (OUT/pid1)."""
    from worker.multi_rank import run_ranks

    return run_ranks(
        rt,
        2,
        "tests.engine.lm_eval_rank_main",
        [str(tmp_path), "--hang-in-call"],
        work=tmp_path / "ranks",
        device_type="cpu",
        on_record=lambda _: None,
        **options,
    )


def test_a_rank_killed_in_an_lm_eval_call_fails_the_ranks_naming_it(tmp_path):
    """Rank 1 dies (SIGKILL) inside the first lm-eval model call while rank 0 waits for its answers in
    the gather: the ranks' supervisor (multi_rank.run_ranks, every multi-rank job's) raises RanksFailed whose first line names rank 1 and how it
    died (torchrun's own "root cause" is often rank 0, failing after it), well within the collective
    timeout, and no rank is left running."""
    import os
    import signal
    import threading
    import time

    from worker.multi_rank import RanksFailed

    rt, raised = _Runtime(), []

    def supervise() -> None:
        try:
            _hanging_ranks(rt, tmp_path)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            raised.append(exc)

    job = threading.Thread(target=supervise)
    job.start()
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "pid1").exists():
            assert job.is_alive() and time.monotonic() < deadline, (raised, rt.lines)
            time.sleep(0.1)
        pid = int((tmp_path / "pid1").read_text())
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        job.join(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        (tmp_path / "ranks" / "stop").touch()  # should the supervisor still run: its ranks stop
        job.join()
    assert len(raised) == 1 and isinstance(raised[0], RanksFailed), (raised, rt.lines)
    reason = str(raised[0]).splitlines()[0]
    assert reason == (
        f"rank 1 (local rank 1 on localhost, pid {pid}) was killed by SIGKILL (out of memory, or killed "
        "from outside); rank 0 ended after it"
    ), str(raised[0])[-3000:]
    assert took < 30, took  # the collective timeout (600 s) did not have to run out
    assert live_ranks("tests.engine.lm_eval_rank_main", str(tmp_path)) == []
    print(f"the supervisor raised {took:.1f} s after the kill: {reason}")


def test_failure_reason_without_a_signal_names_every_failed_rank():
    from worker.rank_failures import failure_reason

    def failure(rank: int, code: int, pid: int) -> str:  # as torchrun prints one
        return (
            f"[{rank}]:\n  time      : 2026-11-30_09:51:00\n  host      : node7\n"
            f"  rank      : {rank} (local_rank: {rank})\n  exitcode  : {code} (pid: {pid})\n"
            "  error_file: <N/A>\n"
        )

    summary = f"Failures:\n{failure(1, 1, 12)}----\nRoot Cause (first observed failure):\n{failure(0, 1, 11)}"
    assert failure_reason(summary) == (
        "rank 0 (local rank 0 on node7, pid 11) exited with code 1; "
        "rank 1 (local rank 1 on node7, pid 12) exited with code 1"
    )
    assert failure_reason("torchrun: no summary") is None
    # A hung rank shows only as the others failing in a collective: the reason says a collective timed out.
    nccl = "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9) ran for 600041 milliseconds before timing out."
    assert failure_reason(f"{nccl}\n{summary}").endswith(
        "exited with code 1, after a collective timed out (600 s, PRUNESCOPE_DIST_TIMEOUT_S): a rank stopped "
        "answering (hung, or far behind the others)"
    )


def test_a_failed_launch_leads_with_the_commands_own_error_line():
    """A job's error starts with what the ranks' command said (its "prunescope distill: error: ..."
    line), not with exit codes and a tail of loading bars cut mid-word (outside distributed audit 6)."""
    from worker.rank_failures import command_error, whole_lines

    log = (
        "oading weights: 100%|#####| 21/21\n[load] /models/student\n"
        "prunescope distill: error: model not found: demo is not a local directory\n"
        "prunescope distill: error: model not found: demo is not a local directory\n"
        "Traceback (most recent call last):\n  File torchrun ...\n"
    )
    assert command_error(log) == "prunescope distill: error: model not found: demo is not a local directory"
    assert command_error("Traceback (most recent call last):\nRuntimeError: boom\n") is None
    assert whole_lines(log).startswith("[load] /models/student")


class _Stopping(_Runtime):
    """A runtime whose job is cancelled once the last rank is inside its first lm-eval call."""

    def __init__(self, pid_file):
        super().__init__()
        self.pid_file = pid_file

    def should_stop(self) -> bool:
        return self.pid_file.exists()


def test_a_stop_ends_ranks_that_read_no_stop_file_after_the_evaluations_grace(tmp_path):
    """A cancel while a rank is inside a long lm-eval call (building requests reads no stop file): an
    evaluation's ranks save nothing on a stop, so they are ended after `stop_grace_s("evaluate")`, not
    the minute a distillation gets for its checkpoint, and no rank is left running."""
    import time

    from worker.multi_rank import STOP_GRACE_S, stop_grace_s

    grace = stop_grace_s("evaluate")
    assert grace < 10 < STOP_GRACE_S == stop_grace_s("distill")
    rt = _Stopping(tmp_path / "pid1")
    began = time.monotonic()
    finished = _hanging_ranks(rt, tmp_path, stop_grace_s=grace)
    asked = (tmp_path / "pid1").stat().st_mtime
    took = time.time() - asked
    assert finished is False  # stopped on request, not failed
    assert any(f"ranks still running {grace:.0f} s after the stop: ending them" in line for line in rt.lines)
    assert took < grace + 20, took  # not STOP_GRACE_S
    assert live_ranks("tests.engine.lm_eval_rank_main", str(tmp_path)) == []
    print(f"ranks ended {took:.1f} s after the stop ({time.monotonic() - began:.1f} s in all)")


def test_a_rank_hung_in_an_lm_eval_call_fails_the_ranks_within_the_collective_timeout(tmp_path, monkeypatch):
    """Rank 1 hangs (alive, silent) inside the first lm-eval model call: rank 0's gather of the answers
    times out after PRUNESCOPE_DIST_TIMEOUT_S, the ranks fail with a reason that says so (no silent
    hang), and no rank is left running."""
    import time

    from worker.multi_rank import RanksFailed

    monkeypatch.setenv("PRUNESCOPE_DIST_TIMEOUT_S", "5")
    rt = _Runtime()
    began = time.monotonic()
    try:
        _hanging_ranks(rt, tmp_path)
    except RanksFailed as exc:
        failure = str(exc)
    else:
        raise AssertionError(f"the ranks did not fail: {rt.lines[-20:]}")
    took = time.monotonic() - began
    assert (tmp_path / "pid1").exists()  # it did hang where it should
    assert "after a collective timed out (5 s, PRUNESCOPE_DIST_TIMEOUT_S)" in failure.splitlines()[0], (
        failure[-3000:]
    )
    assert took < 120, took  # the 5 s timeout, plus start-up on a loaded machine
    assert live_ranks("tests.engine.lm_eval_rank_main", str(tmp_path)) == []
    print(f"failed {took:.1f} s after the start: {failure.splitlines()[0]}")
