"""Filling a plan's targets from importance scores: `fill_plan` turns sizes to reach into explicit
removals (lowest scores go first; a parameter budget picks the MLP and hidden widths, `_fit_budget`),
`fill_warnings` says which filled widths look like a slip."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from worker.engine.plan.schema import ImportanceScores, PlanError, PlanMessage, PlanTargets, PrunePlan
from worker.engine.plan.shape import (
    expert_alignment,
    hidden_alignment,
    kept_experts,
    kept_layers,
    resulting_spec,
)
from worker.engine.plan.validate import _listed, _validate_targets, _warning
from worker.engine.spec import ArchSpec, LayerShape


def _lowest(scores: np.ndarray, n: int) -> list[int]:
    """Indices of the n least important units (stable for ties)."""
    if n <= 0:
        return []
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:n])


def _check_scores(scores: ImportanceScores, spec: ArchSpec) -> None:
    L, D = spec.num_layers, spec.hidden_size
    H = max(s.num_heads for s in spec.layer_shapes())
    F = max(s.intermediate_size for s in spec.layer_shapes())
    expected = {"heads": (L, H), "neurons": (L, F), "hidden": (D,)}
    E = max(s.num_experts for s in spec.layer_shapes())
    if E:  # MoE: expert and per-expert channel scores rank; the dense neuron axis may be empty
        expected.pop("neurons")
        expected.update(experts=(L, E), expert_neurons=(L, E, F))
    for name, shape in expected.items():
        got = tuple(np.shape(getattr(scores, name))) if getattr(scores, name) is not None else None
        if got != shape:
            raise ValueError(f"importance scores '{name}' have shape {got}, the model needs {shape}")


def fill_plan(plan: PrunePlan, spec: ArchSpec, scores: ImportanceScores) -> PrunePlan:
    """Turn `plan.targets` into explicit removals by ranking `scores`; returns a new plan (targets=None).

    Layers: `block` drops the contiguous block of L - num_layers layers whose removal raised the LM
    loss least (needs `block_loss_k{k}`), `bi` the lowest Block-Importance layers, `drop` the layers
    whose single removal raised the loss least, `angular` the contiguous block of L - num_layers layers
    with the smallest angular distance between its input and output (needs `block_angular_k{k}`). Heads: `within_groups` keeps the best
    heads_per_layer / kv_groups heads of every group; `whole_groups` keeps the groups with the
    highest summed head scores. Neurons and hidden channels: the highest scores are kept.
    param_budget (after every other target): shrink the MLP size down to half, then shrink MLP and
    hidden size by one common factor, taking the largest sizes under the budget.
    """
    if not plan.needs_filling():
        return plan.model_copy(update={"targets": None})
    errors = [m for m in _validate_targets(plan, spec) if m.level == "error"]
    if errors:
        raise PlanError(errors)
    _check_scores(scores, spec)
    t = plan.targets
    out = plan.model_copy(deep=True)
    out.targets = None
    shapes = spec.layer_shapes()
    L = spec.num_layers

    if t.num_layers is not None and t.num_layers < L:
        out.drop_layers = _layers_to_drop(spec, scores, L - t.num_layers, t.layer_method)

    kept = kept_layers(out, spec)
    if t.heads_per_layer is not None:
        for layer in kept:
            shape = shapes[layer]
            head_scores = np.asarray(scores.heads[layer][: shape.num_heads], dtype=np.float64)
            heads, groups = _heads_to_remove(head_scores, shape, t.heads_per_layer, t.head_mode)
            if heads:
                out.remove_heads[layer] = heads
            if groups:
                out.remove_kv_groups[layer] = groups

    if t.experts_per_layer is not None:
        for layer in kept:
            E = shapes[layer].num_experts
            if E:
                out.remove_experts[layer] = _lowest(scores.experts[layer][:E], E - t.experts_per_layer)

    intermediate, hidden = t.intermediate_size, t.hidden_size
    if t.param_budget is not None:
        intermediate, hidden = _fit_budget(out, spec, t.param_budget, intermediate, hidden, "total")
    if t.active_param_budget is not None:
        intermediate, hidden = _fit_budget(out, spec, t.active_param_budget, intermediate, hidden, "active")
    if intermediate is not None:
        for layer in kept:
            f = shapes[layer].intermediate_size
            if shapes[layer].num_experts:  # each kept expert keeps its own best channels
                out.remove_expert_neurons[layer] = {
                    e: _lowest(scores.expert_neurons[layer][e][:f], f - intermediate)
                    for e in kept_experts(out, spec, layer)
                }
            else:
                out.remove_neurons[layer] = _lowest(scores.neurons[layer][:f], f - intermediate)
    if hidden is not None:
        out.remove_hidden = _lowest(scores.hidden, spec.hidden_size - hidden)
    return PrunePlan.model_validate(out.model_dump())


# A filled width at most this share of the teacher's (an MLP of 1 neuron, hidden 8 of 4096) is a likely
# slip in a target: allowed, but said. Matrix units run fastest on widths that are multiples of 8 (64 /
# 128 better still: the planner's round_to), so a fill that leaves a teacher's multiple of 8 is said too.
EXTREME_FRACTION = 1 / 8
HARDWARE_MULTIPLE = 8


def fill_warnings(filled: PrunePlan, spec: ArchSpec, targets: PlanTargets) -> list[PlanMessage]:
    """Warnings on the widths `filled` (fill_plan of `targets`) keeps: a query-head count, MLP (expert)
    width or hidden size at most 1/8 of the teacher's (degenerate), and an MLP width or hidden size no
    longer a multiple of 8 where the teacher's was. A fill's own: a width picked unit by unit is the
    user's choice. Nothing for a plan with errors (validate_plan says those)."""
    try:
        new = resulting_spec(filled, spec)
    except PlanError:
        return []
    budget = "param_budget" if targets.param_budget is not None else "active_param_budget"
    teacher = spec.layer_shapes()
    kept = kept_layers(filled, spec)
    mlp = "expert FFN width" if any(s.num_experts for s in teacher) else "MLP width"
    kinds = [  # (what, target field, [(teacher width, kept width, layer or None)])
        (
            "query heads",
            "heads_per_layer",
            [(teacher[i].num_heads, s.num_heads, i) for i, s in zip(kept, new.layer_shapes())],
        ),
        (
            mlp,
            "intermediate_size",
            [
                (teacher[i].intermediate_size, s.intermediate_size, i)
                for i, s in zip(kept, new.layer_shapes())
            ],
        ),
        ("hidden size", "hidden_size", [(spec.hidden_size, new.hidden_size, None)]),
    ]
    msgs = []
    for what, name, widths in kinds:
        field_name = f"targets.{name if getattr(targets, name) is not None else budget}"
        tiny = [(t, w, i) for t, w, i in widths if w < t and w <= t * EXTREME_FRACTION]
        if tiny:
            t, w, _ = tiny[0]
            msgs.append(
                _warning(
                    field_name,
                    f"{what} {w} of the teacher's {t}{_where(tiny, len(widths))}: at most 1/8 of the "
                    f"teacher's is a degenerate width that distillation rarely recovers; a slip in the target?",
                )
            )
        m = HARDWARE_MULTIPLE
        odd = [  # (a degenerate width was said already)
            (t, w, i)
            for t, w, i in widths
            if what != "query heads" and w % m and not t % m and (t, w, i) not in tiny
        ]
        if odd:
            t, w, _ = odd[0]
            near = [v for v in (w // m * m, (w // m + 1) * m) if 0 < v <= t]
            msgs.append(
                _warning(
                    field_name,
                    f"{what} {w}{_where(odd, len(widths))} is not a multiple of {m} (the teacher's {t} is): "
                    f"matrix units run such shapes slower; nearby multiples: {_listed(near)} (round_to)",
                )
            )
    return msgs


def _where(found: list[tuple[int, int, int | None]], total: int) -> str:
    """ " in layers 0, 2" / " in every kept layer" / "" (the hidden size: one width)."""
    layers = [i for _, _, i in found if i is not None]
    if not layers:
        return ""
    return " in every kept layer" if len(layers) == total else f" in layers {_listed(layers)}"


def _layers_to_drop(spec: ArchSpec, scores: ImportanceScores, n: int, method: str) -> list[int]:
    def need(key: str) -> np.ndarray:
        if key not in scores.layers:
            available = ", ".join(sorted(scores.layers)) or "none"
            raise ValueError(
                f"layer_method needs '{key}' layer scores, the importance run has: {available}; "
                f"rerun importance with that scan or pick another layer_method"
            )
        return np.asarray(scores.layers[key], dtype=np.float64)

    if method == "bi":
        return _lowest(need("block_importance"), n)
    if method == "drop":
        return _lowest(need("drop_loss"), n)
    # Contiguous blocks of exactly n layers, one score per start; the first of equal minima wins.
    per_block = need(f"block_angular_k{n}" if method == "angular" else f"block_loss_k{n}")
    start = int(np.argmin(per_block))
    return list(range(start, start + n))


def _heads_to_remove(
    head_scores: np.ndarray, shape: LayerShape, keep: int, mode: str
) -> tuple[list[int], list[int]]:
    G = shape.num_kv_heads
    q = shape.num_heads // G
    per_group = head_scores.reshape(G, q)
    if mode == "whole_groups":
        groups = _lowest(per_group.sum(axis=1), G - keep // q)
        return [], groups
    k = keep // G
    heads = []
    for g in range(G):
        heads.extend(g * q + i for i in _lowest(per_group[g], q - k))
    return sorted(heads), []


def _fit_budget(
    plan: PrunePlan,
    spec: ArchSpec,
    budget: int,
    intermediate: int | None,
    hidden: int | None,
    count: Literal["total", "active"] = "total",
) -> tuple[int | None, int | None]:
    """Sizes under `budget` for the parameter `count` (total, or active: what one token runs)."""
    field_name = "targets.param_budget" if count == "total" else "targets.active_param_budget"
    base = resulting_spec(plan, spec)
    F = min(s.intermediate_size for s in spec.layer_shapes())
    D = spec.hidden_size
    align = hidden_alignment(base)
    fa = expert_alignment(spec)  # MLP widths are searched in multiples of fa (1 for dense models)

    def total(f: int | None, d: int | None) -> int:
        layers = [
            s.model_copy(update={"intermediate_size": f}) if f is not None else s for s in base.layer_shapes()
        ]
        return base.param_count(hidden=d if d is not None else D, layers=layers)[count]

    def largest(lo: int, hi: int, fits) -> int | None:
        # Parameter count is monotone in the width, so binary search the largest size that fits.
        if not fits(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    if total(intermediate, hidden) <= budget:
        return intermediate, hidden
    if intermediate is None:  # 1) shrink the MLP alone, down to half its size
        m = largest(max(1, F // 2 // fa), F // fa, lambda m: total(m * fa, hidden) <= budget)
        if m is not None:
            return m * fa, hidden
    # 2) shrink whatever is free by one common factor r (MLP from F/2 when it is free).
    f0 = intermediate if intermediate is not None else max(1, F // 2)

    def sizes(step: int) -> tuple[int, int]:
        r = step / 1000
        f = intermediate if intermediate is not None else max(fa, math.floor(f0 * r / fa) * fa)
        d = hidden if hidden is not None else max(align, math.floor(D * r / align) * align)
        return f, d

    step = largest(1, 1000, lambda s: total(*sizes(s)) <= budget)
    if step is None:
        smallest = total(*sizes(1))
        raise PlanError(
            [
                PlanMessage(
                    level="error",
                    field=field_name,
                    text=f"{budget} parameters cannot be reached by shrinking MLP and hidden size "
                    f"(smallest reachable with the other targets: {smallest}); drop layers or heads too",
                )
            ]
        )
    f, d = sizes(step)
    if intermediate is None and hidden is None:
        # The hidden size moves in steps of `align` (the head count: 8 of 32 channels in a tiny model), so
        # the common factor can stop well under the budget: the MLP takes what is left, up to the balanced
        # width of the next hidden step (wider would trade hidden channels for an MLP out of proportion).
        cap = max(f, math.floor(f0 * min(D, d + align) / D / fa) * fa)
        f = largest(f // fa, cap // fa, lambda m: total(m * fa, d) <= budget) * fa
    return f, d
