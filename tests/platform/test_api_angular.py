"""Gromov et al.'s block angular distance through the API: the importance-run scan (422 naming the field on
bad input, nothing written), the layer-scores payload, rank stability and `layer_method="angular"` plans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Teacher
from tests.platform.test_api import counts
from tests.tiny_models import tiny_spec
from worker.engine.importance.result import ImportanceResult
from worker.engine.plan import PlanTargets, PrunePlan, fill_plan

SPEC = tiny_spec()  # 4 layers
ANGULAR = np.array([0.30, 0.12, 0.20])  # lowest at block 1: drop layers 1, 2
BLOCK_LOSS = np.array([0.5, 0.9, 0.1])  # lowest at block 2: the block-loss method drops 2, 3


def width_sums(rng, *units) -> np.ndarray:
    return rng.random((2, 4, *units))


def one_sample_sums(values: np.ndarray, seq_l2: np.ndarray) -> np.ndarray:
    """Running sums [2, 4, rows, 1] of one sample whose per-sample seq mean / seq L2 are the values given."""
    sums = np.zeros((2, 4, len(values), 1))
    sums[0, 0, :, 0], sums[0, 1, :, 0] = values, values**2
    sums[0, 2, :, 0], sums[0, 3, :, 0] = seq_l2, seq_l2**2
    return sums


def save_scored_artifact(artifacts: Path, key: str) -> str:
    """An artifact for SPEC with width scores and angular + block-loss scores (k = 2); returns `key`."""
    L, H, F, D = SPEC.num_layers, SPEC.num_heads, SPEC.intermediate_size, SPEC.hidden_size
    rng = np.random.default_rng(0)
    arrays = {
        "heads": width_sums(rng, L, H),
        "neurons": width_sums(rng, L, F),
        "hidden": width_sums(rng, 2 * L + 1, D),
        "block_angular_k2": one_sample_sums(ANGULAR, np.array([3.0, 1.0, 2.0])),
        "samples": np.array([1.0, 0.0]),
        "loss_base": np.array([10.0, 0.0]),
        "loss_tokens": np.array([10.0, 0.0]),
        "loss_block_k2": np.stack([10.0 + 10.0 * BLOCK_LOSS, np.zeros(3)]),
    }
    manifest = {"scans": ["block", "angular"], "block_size": 2}
    ImportanceResult({n: a.astype(np.float32) for n, a in arrays.items()}, manifest).save(artifacts / key)
    return key


@pytest.fixture
def angular_run(api_env):
    """A ready teacher and an importance run whose artifact holds angular and block-loss scores (k = 2)."""
    key = save_scored_artifact(Path(api_env["PRUNESCOPE_ARTIFACTS"]), "importance/angular")
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=SPEC.summary())
        dataset = Dataset(name="d", source="demo")
        s.add_all([teacher, dataset])
        s.flush()
        run = ImportanceRun(
            teacher_id=teacher.id, dataset_id=dataset.id, params={"scans": ["angular"]}, artifact=key
        )
        s.add(run)
        s.flush()
        return {
            "teacher_id": teacher.id,
            "run_id": run.id,
            "path": Path(api_env["PRUNESCOPE_ARTIFACTS"]) / key,
        }


def test_importance_run_accepts_the_angular_scan_and_checks_its_block_size(client, api_env):
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=SPEC.summary())
        s.add(teacher)
        s.flush()
        teacher_id = teacher.id
    dataset = client.post("/api/v1/datasets", json={"name": "d", "source": "demo"}).json()
    body = {"teacher_id": teacher_id, "dataset_id": dataset["id"]}
    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    for extra, loc in [
        ({"scans": ["angular", "gromov"]}, ["body", "scans", 1]),
        ({"scans": ["angular"], "block_size": 4}, ["body", "block_size"]),  # the teacher has 4 layers
    ]:
        r = client.post("/api/v1/importance-runs", json={**body, **extra})
        assert r.status_code == 422, r.text
        assert loc in [d["loc"] for d in r.json()["detail"]], r.json()
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before
    r = client.post(
        "/api/v1/importance-runs", json={**body, "scans": ["angular", "bi", "angular"], "block_size": 3}
    )
    assert r.status_code == 201, r.text
    assert r.json()["params"]["scans"] == ["angular", "bi"] and r.json()["params"]["block_size"] == 3


def test_layer_scores_and_stability_include_the_angular_distance(client, angular_run):
    base = f"/api/v1/importance-runs/{angular_run['run_id']}"
    layers = client.get(f"{base}/layers").json()
    assert layers["block_angular"] == {"2": ANGULAR.tolist()}  # batch L2 of one sample = its seq mean
    assert layers["block_loss"] == {"2": pytest.approx(BLOCK_LOSS.tolist(), abs=1e-5)}
    assert client.get(f"{base}/layers?seq=l2").json()["block_angular"] == {"2": [3.0, 1.0, 2.0]}
    assert "block_angular_k2" in client.get(f"{base}/stability").json()


def test_plan_fill_by_angular_drops_the_closest_block(client, angular_run):
    fill = {"teacher_id": angular_run["teacher_id"], "importance_run_id": angular_run["run_id"]}
    r = client.post(
        "/api/v1/plans/fill", json={**fill, "targets": {"num_layers": 2, "layer_method": "angular"}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["plan"]["drop_layers"] == [1, 2] and r.json()["stats"]["spec"]["num_layers"] == 2
    # The same scores through the engine give the same plan; the block-loss method picks another block.
    scores = ImportanceResult.load(angular_run["path"]).scores()
    expected = fill_plan(PrunePlan(targets=PlanTargets(num_layers=2, layer_method="angular")), SPEC, scores)
    assert r.json()["plan"]["drop_layers"] == expected.drop_layers
    r = client.post(
        "/api/v1/plans/fill", json={**fill, "targets": {"num_layers": 2, "layer_method": "block"}}
    )
    assert r.json()["plan"]["drop_layers"] == [2, 3]

    r = client.post(
        "/api/v1/plans/fill", json={**fill, "targets": {"num_layers": 1, "layer_method": "angular"}}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "targets"]
    assert "block_angular_k3" in r.json()["detail"][0]["msg"]
    r = client.post(
        "/api/v1/plans/fill", json={**fill, "targets": {"num_layers": 2, "layer_method": "gromov"}}
    )
    assert r.status_code == 422
    assert ["body", "targets", "layer_method"] in [d["loc"] for d in r.json()["detail"]]
