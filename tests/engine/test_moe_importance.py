"""Importance of mixture-of-experts models: per expert and layer (routed share, router probability,
contribution norm) and per expert FFN channel, against a float64 reference computed from the weights
alone (router softmax / top-k / renormalisation and each expert's gated FFN written out here), with
padding; artifact round trip, rank stability, and plans filled from the scores cut == masked."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.tiny_models import MOE_FAMILIES, VOCAB, tiny_model
from worker.engine.adapters import adapter_for, arch_spec
from worker.engine.importance.compute import compute_importance
from worker.engine.importance.result import ImportanceResult
from worker.engine.masking import masked
from worker.engine.plan import PrunePlan, fill_plan, validate_plan
from worker.engine.surgery import apply_plan


def batches() -> list[dict]:
    g = torch.Generator().manual_seed(11)
    out = []
    for _ in range(3):
        mask = torch.ones(3, 10, dtype=torch.long)
        out.append({"input_ids": torch.randint(3, VOCAB, (3, 10), generator=g), "attention_mask": mask})
    out[1]["attention_mask"][0, 6:] = 0  # right padding: padded tokens must not count
    out[2]["attention_mask"][2, 3:] = 0
    return out


@torch.no_grad()
def reference(model, data) -> dict[str, list[np.ndarray]]:
    """Per sample [L, tokens, units] float64 values of every expert axis, from the MoE blocks' inputs."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    inputs = {}
    hooks = [
        adapter.mlp(layer).register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].clone()))
        for i, layer in enumerate(layers)
    ]
    k = arch_spec(model).experts_per_token
    per_sample: dict[str, list[np.ndarray]] = {"routed": [], "prob": [], "contribution": [], "neurons": []}
    try:
        for batch in data:
            with torch.no_grad():
                model(batch["input_ids"], attention_mask=batch["attention_mask"])
            for b in range(batch["input_ids"].shape[0]):
                n = int(batch["attention_mask"][b].sum())
                rows = {key: [] for key in per_sample}
                for i, layer in enumerate(layers):
                    x = inputs[i][b, :n].double()
                    router, experts = adapter.router(layer), adapter.experts(layer)
                    probs = torch.softmax(x @ router.weight.double().T, dim=-1)
                    top, chosen = torch.topk(probs, k, dim=-1)
                    if getattr(router, "norm_topk_prob", True):
                        top = top / top.sum(-1, keepdim=True)
                    E, _, F = experts.down_proj.shape
                    routed = torch.zeros(n, E, dtype=torch.float64)
                    contribution = torch.zeros(n, E, dtype=torch.float64)
                    neurons = torch.zeros(n, E, F, dtype=torch.float64)
                    for t in range(n):
                        for slot in range(k):
                            e = int(chosen[t, slot])
                            gate_up = experts.gate_up_proj[e].double() @ x[t]
                            h = torch.nn.functional.silu(gate_up[:F]) * gate_up[F:]
                            y = top[t, slot] * (experts.down_proj[e].double() @ h)
                            routed[t, e] = 1
                            contribution[t, e] = y.norm()
                            neurons[t, e] = h.abs()
                    rows["routed"].append(routed)
                    rows["prob"].append(probs)
                    rows["contribution"].append(contribution)
                    rows["neurons"].append(neurons.reshape(n, -1))
                for key, values in rows.items():
                    per_sample[key].append(torch.stack(values).numpy())
    finally:
        for h in hooks:
            h.remove()
    return per_sample


def aggregate(samples: list[np.ndarray], batch: str, seq: str) -> np.ndarray:
    per = [np.abs(s).mean(axis=1) if seq == "mean" else np.sqrt((s**2).sum(axis=1)) for s in samples]
    per = np.stack(per)  # [samples, L, units]
    return per.mean(axis=0) if batch == "mean" else np.sqrt((per**2).sum(axis=0))


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_expert_scores_equal_a_float64_reference(family):
    model = tiny_model(family)
    data = batches()
    result = compute_importance(model, data, scans=("bi",), hash_weights=False)
    expected = reference(model, data)
    L, E, F = 4, 6, 12
    assert result.arrays["neurons"].shape == (2, 4, L, 0)  # no dense MLP
    for batch, seq in (("mean", "mean"), ("l2", "mean"), ("mean", "l2")):
        got = result.expert_scores(batch, seq)
        for metric in ("routed", "prob", "contribution"):
            want = aggregate(expected[metric], batch, seq)
            np.testing.assert_allclose(
                got[metric], want, rtol=2e-5, atol=1e-7, err_msg=f"{metric} {batch}/{seq}"
            )
        want = aggregate(expected["neurons"], batch, seq).reshape(L, E, F)
        np.testing.assert_allclose(result.expert_neuron_scores(batch, seq), want, rtol=2e-5, atol=1e-7)
    # The routed shares of a layer sum to top-k (every token picks k experts).
    np.testing.assert_allclose(result.expert_scores("mean", "mean")["routed"].sum(axis=1), 2.0, rtol=1e-6)


def test_artifact_round_trip_rank_stability_and_fill(tmp_path):
    model = tiny_model("qwen3_moe")
    result = compute_importance(model, batches(), scans=("bi",), hash_weights=False)
    result.save(tmp_path / "run")
    loaded = ImportanceResult.load(tmp_path / "run")
    for metric, scores in result.expert_scores().items():
        np.testing.assert_array_equal(loaded.expert_scores()[metric], scores)
    stability = loaded.rank_stability()
    for axis in ("experts_routed", "experts_prob", "experts_contribution", "expert_neurons"):
        assert -1.0 <= stability[axis] <= 1.0
    with pytest.raises(ValueError, match="routed, prob, contribution"):
        loaded.scores(expert_metric="tokens")

    spec = arch_spec(model)
    scores = loaded.scores(expert_metric="routed")
    plan = fill_plan(PrunePlan(targets={"experts_per_layer": 3, "intermediate_size": 8}), spec, scores)
    for layer in range(spec.num_layers):  # the least routed experts go
        assert plan.remove_experts[layer] == sorted(
            np.argsort(scores.experts[layer], kind="stable")[:3].tolist()
        )
    assert validate_plan(plan, spec) == []
    with masked(model, plan), torch.no_grad():
        expected = model(batches()[0]["input_ids"]).logits
    student = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        got = student(batches()[0]["input_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_layer_streamed_pass_equals_the_in_memory_pass(family, tmp_path):
    """The streamed pass loads each layer from the checkpoint's per-expert layout (fused on load)."""
    from tests.engine.test_importance_streamed import assert_same_result
    from worker.engine.importance.streamed import compute_importance_streamed
    from worker.engine.loading import load_model

    tiny_model(family).save_pretrained(tmp_path / "teacher")
    model, _ = load_model(tmp_path / "teacher")
    in_memory = compute_importance(model, batches(), scans=("bi", "drop"))
    streamed = compute_importance_streamed(tmp_path / "teacher", batches(), scans=("bi", "drop"))
    assert_same_result(streamed, in_memory)  # every array, expert ones included, and the weights hash
    assert streamed.manifest["execution"]["mode"] == "streamed"
