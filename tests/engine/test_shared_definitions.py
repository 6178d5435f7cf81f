"""One definition of each concept the engine shares between its parts: each test fails if a second,
drifted copy came back (a trainer with its own schedule, a result with its own weights hash, ...)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from tests.engine.test_importance_scores import padded_batches
from tests.tiny_models import tiny_model
from worker.demo import demo_teacher_path
from worker.engine import atomic
from worker.engine.distill.schedule import lambda_for, lr_at
from worker.engine.evaluation import make_manifest
from worker.engine.fingerprint import library_versions
from worker.engine.importance import compute_importance
from worker.engine.teacher import CURVE_FILE, TeacherRecipe
from worker.engine.teacher import lr_at as teacher_lr_at


def test_teacher_and_distillation_share_one_lr_schedule():
    """Same settings, same curve: the teacher's decay only ends one step earlier (its explicit flag)."""
    peak, minimum, warmup, steps = 2e-3, 1e-4, 7, 60
    recipe = TeacherRecipe(steps=steps + 1, peak_lr=peak, min_lr=minimum, warmup_steps=warmup)
    distill_multiplier = lambda_for(peak=peak, minimum=minimum, warmup=warmup, total=steps)
    distill_curve = [distill_multiplier(s) * peak for s in range(steps + 1)]
    teacher_curve = [teacher_lr_at(s, recipe) for s in range(steps + 1)]
    assert teacher_curve == pytest.approx(distill_curve, rel=1e-12, abs=0)
    assert distill_curve[-1] == pytest.approx(minimum) and teacher_curve[-1] == pytest.approx(minimum)
    shifted = [
        lr_at(s, peak=peak, minimum=minimum, warmup=warmup, total=steps, minimum_at_last_step=True)
        for s in range(steps)
    ]
    assert shifted[-1] == pytest.approx(minimum) and shifted != distill_curve[:steps]


def test_shipped_teacher_curve_was_trained_with_this_schedule():
    """Every LR recorded in the committed demo teacher's curve is what the schedule gives today."""
    record = json.loads((demo_teacher_path() / CURVE_FILE).read_text())
    recipe = TeacherRecipe.model_validate(record["summary"]["recipe"])
    for point in record["curve"]:
        assert teacher_lr_at(point["step"] - 1, recipe) == pytest.approx(point["lr"], rel=1e-12), point


def test_importance_manifest_and_evaluation_match_by_weights_hash_and_versions(tmp_path):
    """An importance run and an evaluation of the same weights record the same hash (so they can be
    matched), a different model a different one; both record the same library versions."""
    _, batches = padded_batches([9, 6, 11], batch_size=3)
    importance = compute_importance(tiny_model("llama"), batches, block_size=2, metadata={"data": "t"})
    same = make_manifest(models={"model": tiny_model("llama")})
    other = make_manifest(models={"model": tiny_model("llama", seed=1)})
    assert importance.manifest["weights_sha256"] == same["model_hashes"]["model"]
    assert importance.manifest["weights_sha256"] != other["model_hashes"]["model"]
    assert importance.manifest["libraries"] == same["versions"] == library_versions()
    assert library_versions()["torch"] and library_versions()["transformers"]


def test_every_torch_save_of_the_engine_is_the_atomic_one(tmp_path):
    """A failed save leaves the previous file and no temporary file; no module saves on its own
    (a `torch.save` outside `atomic.py` would be a second, non-atomic copy). The sharded checkpoint
    saves into a temporary directory that `replace_dir`-style renaming swaps in whole."""
    target = tmp_path / "state.pt"
    atomic.torch_save({"step": 1}, target)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic.torch_save({"step": 2, "bad": lambda: None}, target)  # a lambda does not pickle
    assert torch.load(target) == {"step": 1} and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    engine = Path(atomic.__file__).parent
    saving = sorted(
        str(p.relative_to(engine))
        for p in engine.rglob("*.py")
        if "torch.save(" in p.read_text() and p.name != "atomic.py"
    )
    assert saving == ["distill/sharded_checkpoint.py"]


def test_only_the_train_teacher_command_imports_the_teacher_recipe():
    """The what-if preview, the perplexity evaluation and the teacher's curve share `block_nll`
    (evaluation.perplexity); nothing outside `prunescope train-teacher` depends on the demo teacher's
    training recipe module."""
    root = Path(atomic.__file__).parents[2]
    importers = sorted(
        str(p.relative_to(root))
        for package in ("backend", "worker")
        for p in (root / package).rglob("*.py")
        if "worker.engine.teacher import" in p.read_text()
    )
    assert importers == ["worker/cli/teacher_commands.py"]
