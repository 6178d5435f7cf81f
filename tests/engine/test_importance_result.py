"""The importance artifact (save / load / atomic write), rank stability and the reduction arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.engine.test_importance_scores import COMBOS, padded_batches
from tests.tiny_models import tiny_model
from worker.engine.importance import ImportanceResult, compute_importance
from worker.engine.importance.artifact import MANIFEST_FILE, SCORES_FILE
from worker.engine.importance.provenance import weights_sha256
from worker.engine.importance.stats import reduce_sums


@pytest.fixture(scope="module")
def result():
    _, batches = padded_batches([9, 6, 11, 8, 7, 10], batch_size=3)
    return compute_importance(
        tiny_model("llama"),
        batches,
        block_size=2,
        metadata={"data": "unit-test", "seed": 7, "model": "tiny-llama"},
    )


def test_artifact_round_trip_restores_every_score(result, tmp_path):
    out = result.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == sorted([SCORES_FILE, MANIFEST_FILE])
    loaded = ImportanceResult.load(out)
    assert loaded.manifest.pop("format") == "prunescope-importance/1"
    assert loaded.manifest.pop("arrays") == {k: list(v.shape) for k, v in result.arrays.items()}
    assert loaded.manifest == json.loads(json.dumps(result.manifest))
    assert set(loaded.arrays) == set(result.arrays)
    for batch, seq in COMBOS:
        a, b = result.scores(batch, seq), loaded.scores(batch, seq)
        for axis in ("heads", "neurons", "hidden"):
            np.testing.assert_array_equal(getattr(a, axis), getattr(b, axis))
        for name in a.layers:
            np.testing.assert_array_equal(a.layers[name], b.layers[name])
    assert loaded.rank_stability() == result.rank_stability()


def test_manifest_records_provenance(result):
    m = result.manifest
    assert m["model"] == "tiny-llama" and m["data"] == "unit-test" and m["seed"] == 7
    assert m["samples"] == 6 and m["seq_len"] == 11 and m["block_size"] == 2
    assert m["scans"] == ["bi", "drop", "block"]
    assert m["weights_sha256"] == weights_sha256(tiny_model("llama"))
    assert m["weights_sha256"] != weights_sha256(tiny_model("llama", seed=1))
    assert {"torch", "transformers", "numpy"} <= set(m["libraries"])
    assert m["created"].endswith("+00:00") and m["arch"]["num_layers"] == 4


def test_write_is_atomic_and_never_clobbers_foreign_directories(result, tmp_path, monkeypatch):
    target = tmp_path / "run"
    result.save(target)
    result.save(target)  # replacing a previous artifact is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp or backup dirs left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        result.save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    import worker.engine.importance.artifact as artifact

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run"]  # nothing half-written


def test_loading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImportanceResult.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="not an importance artifact"):
        ImportanceResult.load(tmp_path)


def test_loading_an_artifact_does_not_import_torch(result, tmp_path):
    result.save(tmp_path / "run")
    code = (
        "import sys; from worker.engine.importance import ImportanceResult; "
        f"r = ImportanceResult.load({str(tmp_path / 'run')!r}); r.scores(); r.rank_stability(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rank_stability_is_one_when_both_halves_see_the_same_data():
    samples, _ = padded_batches([9, 6, 11, 8], batch_size=1)
    doubled = [s for s in samples for _ in range(2)]  # sample i and its copy land in different halves
    batches = []
    for s in doubled:
        batches.append({"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)})
    result = compute_importance(tiny_model("qwen2"), batches, block_size=2)
    stability = result.rank_stability()
    assert set(stability) == {"heads", "neurons", "hidden", "block_importance", "drop_loss", "block_loss_k2"}
    for axis, rho in stability.items():
        assert rho == pytest.approx(1.0), axis


def test_rank_stability_drops_when_halves_differ(result):
    stability = result.rank_stability()
    assert all(-1.0 <= v <= 1.0 for v in stability.values())
    assert stability["neurons"] < 0.999  # random tiny data: the halves genuinely disagree somewhat


def test_batch_reductions_from_sums():
    per_sample = np.array([[1.0, 4.0], [3.0, 0.0], [2.0, 2.0]])  # 3 samples, 2 units (seq means)
    sums = np.zeros((4, 2), dtype=np.float32)
    sums[0], sums[1] = per_sample.sum(0), (per_sample**2).sum(0)
    np.testing.assert_allclose(reduce_sums(sums, 3, "mean", "mean"), per_sample.mean(0))
    np.testing.assert_allclose(reduce_sums(sums, 3, "l2", "mean"), np.linalg.norm(per_sample, axis=0))
    np.testing.assert_allclose(reduce_sums(sums, 3, "var", "mean"), per_sample.var(0), atol=1e-6)
    with pytest.raises(ValueError, match="batch reduction must be one of mean, l2, var"):
        reduce_sums(sums, 3, "max", "mean")
    with pytest.raises(ValueError, match="sequence reduction must be one of mean, l2"):
        reduce_sums(sums, 3, "mean", "sum")
