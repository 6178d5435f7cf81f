"""Mixture of experts through the API: the layers x experts payload of a real Qwen3-MoE importance run
(every metric, ranks in fill_plan's order), 404 for a dense run, plan validation naming the field with
nearby valid values, plans filled by each expert metric, and the active / total parameter preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Teacher
from tests.platform.helpers import error_text
from tests.platform.test_api import counts
from tests.tiny_models import VOCAB, tiny_model
from worker.engine.adapters import arch_spec
from worker.engine.importance.compute import compute_importance
from worker.engine.importance.result import ImportanceResult
from worker.engine.plan import PlanTargets, PrunePlan, fill_plan, plan_stats


@pytest.fixture
def moe_run(api_env):
    model = tiny_model("qwen3_moe")
    g = torch.Generator().manual_seed(2)
    data = [{"input_ids": torch.randint(3, VOCAB, (2, 12), generator=g)} for _ in range(2)]
    key = "importance/moe"
    path = Path(api_env["PRUNESCOPE_ARTIFACTS"]) / key
    compute_importance(model, data, scans=("bi",), hash_weights=False).save(path)
    spec = arch_spec(model)
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="moe", source="org/moe", status="ready", spec=spec.summary())
        dataset = Dataset(name="d", source="demo")
        s.add_all([teacher, dataset])
        s.flush()
        run = ImportanceRun(
            teacher_id=teacher.id, dataset_id=dataset.id, params={"scans": ["bi"]}, artifact=key
        )
        s.add(run)
        s.flush()
        return {"teacher_id": teacher.id, "run_id": run.id, "path": path, "spec": spec}


def test_experts_payload(client, moe_run):
    r = client.get(f"/api/v1/importance-runs/{moe_run['run_id']}/experts?batch=mean&seq=mean")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["layers"], body["experts"], body["expert_width"]) == (4, 6, 12)
    exact = ImportanceResult.load(moe_run["path"]).expert_scores("mean", "mean")
    for metric in ("routed", "prob", "contribution"):
        np.testing.assert_allclose(body["metrics"][metric], exact[metric], rtol=1e-3)
        for layer, ranks in enumerate(body["rank"][metric]):
            assert (
                ranks == np.argsort(np.argsort(exact[metric][layer], kind="stable"), kind="stable").tolist()
            )
    np.testing.assert_allclose(np.sum(body["metrics"]["routed"], axis=1), 2.0, rtol=1e-3)  # top-2
    stability = client.get(f"/api/v1/importance-runs/{moe_run['run_id']}/stability").json()
    assert {"experts_routed", "experts_prob", "experts_contribution", "expert_neurons"} <= set(stability)


def test_plans_validate_fill_and_preview_active_parameters(client, api_env, moe_run):
    ids = {"teacher_id": moe_run["teacher_id"]}
    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    r = client.post(
        "/api/v1/plans/validate", json={**ids, "plan": {"remove_experts": {"0": [0, 1, 2, 3, 4]}}}
    )
    errors = {m["field"]: m["text"] for m in r.json()["messages"] if m["level"] == "error"}
    assert "remove at most 4" in errors["remove_experts.0"] and r.json()["stats"] is None
    r = client.post("/api/v1/plans/validate", json={**ids, "plan": {"remove_experts": {"1": [2, 3]}}})
    stats = r.json()["stats"]
    assert (
        stats["params_active"]
        == plan_stats(PrunePlan(remove_experts={1: [2, 3]}), moe_run["spec"])["params_active"]
    )
    assert stats["params_total"] < stats["teacher_params_total"]
    # Still top-2 experts per token: only the two router rows leave the active count.
    assert stats["teacher_params_active"] - stats["params_active"] == 2 * moe_run["spec"].hidden_size

    fill = {**ids, "importance_run_id": moe_run["run_id"], "batch": "mean", "seq": "mean"}
    scores = ImportanceResult.load(moe_run["path"])
    for metric in ("routed", "contribution"):
        r = client.post(
            "/api/v1/plans/fill", json={**fill, "targets": {"experts_per_layer": 4}, "expert_metric": metric}
        )
        assert r.status_code == 200, r.text
        expected = fill_plan(
            PrunePlan(targets=PlanTargets(experts_per_layer=4)),
            moe_run["spec"],
            scores.scores("mean", "mean", expert_metric=metric),
        )
        assert r.json()["plan"]["remove_experts"] == {str(k): v for k, v in expected.remove_experts.items()}
    budget = int(moe_run["spec"].param_count()["active"] * 0.9)
    r = client.post("/api/v1/plans/fill", json={**fill, "targets": {"active_param_budget": budget}})
    assert r.status_code == 200, r.text
    assert r.json()["stats"]["params_active"] <= budget
    r = client.post("/api/v1/plans/fill", json={**fill, "targets": {"experts_per_layer": 1}})
    assert r.status_code == 422 and ["body", "targets", "experts_per_layer"] in [
        d["loc"] for d in r.json()["detail"]
    ]
    r = client.post(
        "/api/v1/plans/fill", json={**fill, "targets": {"experts_per_layer": 4}, "expert_metric": "tokens"}
    )
    assert r.status_code == 422
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before  # validate / fill write nothing


def test_a_dense_run_has_no_experts_payload(client, api_env, moe_run):
    model = tiny_model("llama")
    key = "importance/dense"
    compute_importance(
        model, [{"input_ids": torch.randint(3, VOCAB, (2, 8))}], scans=(), hash_weights=False
    ).save(Path(api_env["PRUNESCOPE_ARTIFACTS"]) / key)
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        run = ImportanceRun(teacher_id=moe_run["teacher_id"], dataset_id=1, params={}, artifact=key)
        s.add(run)
        s.flush()
        run_id = run.id
    r = client.get(f"/api/v1/importance-runs/{run_id}/experts")
    assert r.status_code == 404 and "no mixture-of-experts layers" in error_text(r)
