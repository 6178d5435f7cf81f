"""Data-parallel importance: 2 gloo ranks, each scoring its batches, == one process on the same samples."""

from __future__ import annotations

import numpy as np

from tests.engine import importance_rank_main
from tests.engine.torchrun_helpers import run
from worker.engine.importance.result import ImportanceResult


def test_two_ranks_score_like_one_process(tmp_path):
    assert importance_rank_main.main([str(tmp_path / "one")]) == 0
    code, log = run([importance_rank_main.__file__, str(tmp_path / "two")])
    assert code == 0, log
    one, two = (ImportanceResult.load(tmp_path / n) for n in ("one", "two"))
    assert set(one.arrays) == set(two.arrays) and "loss_drop" in one.arrays and "heads" in one.arrays
    for name, want in one.arrays.items():
        got = two.arrays[name]
        assert np.abs(want).max() > 0 or name == "samples", name  # not two empty passes agreeing
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(), err_msg=name)
    assert two.manifest["samples"] == one.manifest["samples"] == 10
    assert two.manifest["evaluations"] == one.manifest["evaluations"]
    assert two.manifest["world_size"] == 2


def test_importance_cli_under_torchrun_writes_the_one_process_artifact(tmp_path):
    """`prunescope importance` on 2 ranks (torchrun -m worker.cli) == the same command in one process."""
    from tests.engine.distill_helpers import demo_tokenizer, tiny_llama
    from worker.cli import main
    from worker.engine.loading import save_model

    save_model(tiny_llama(seed=4, layers=3), demo_tokenizer(), tmp_path / "model", {"kind": "test"})
    args = [str(tmp_path / "model"), "--samples", "6", "--seq-len", "32", "--batch-size", "2"]
    args += ["--scans", "bi,drop", "--offload", "never"]
    assert main(["importance", *args, "-o", str(tmp_path / "one")]) == 0
    code, log = run(["-m", "worker.cli", "importance", *args, "-o", str(tmp_path / "two")])
    assert code == 0, log
    one, two = (ImportanceResult.load(tmp_path / n) for n in ("one", "two"))
    for name, want in one.arrays.items():
        np.testing.assert_allclose(two.arrays[name], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert two.manifest["world_size"] == 2 and two.manifest["nodes"] == 1
    assert two.manifest["weights_sha256"] == one.manifest["weights_sha256"]
