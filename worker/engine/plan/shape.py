"""What a plan keeps: each layer's removed heads and kept experts, the kept layers, the ArchSpec
`apply_plan` produces (`resulting_spec`) and its cost next to the teacher's (`plan_stats`); and the
families' alignment rules a pruned width must follow (`hidden_alignment`, `expert_alignment`)."""

from __future__ import annotations

import numpy as np

from worker.engine.memplan import dtype_bytes
from worker.engine.plan.schema import ImportanceScores, PlanError, PlanMessage, PrunePlan
from worker.engine.spec import ArchSpec, LayerShape


def layer_head_removal(plan: PrunePlan, spec: ArchSpec, layer: int) -> tuple[list[int], list[int]]:
    """(removed query heads, removed KV groups) of one layer, with fully emptied groups included."""
    shape = spec.layer_shapes()[layer]
    q = shape.num_heads // shape.num_kv_heads
    groups = set(plan.remove_kv_groups.get(layer, []))
    heads = set(plan.remove_heads.get(layer, []))
    for g in groups:
        heads.update(range(g * q, (g + 1) * q))
    for g in range(shape.num_kv_heads):
        if all(h in heads for h in range(g * q, (g + 1) * q)):
            groups.add(g)
    return sorted(heads), sorted(groups)


def kept_experts(plan: PrunePlan, spec: ArchSpec, layer: int) -> list[int]:
    removed = set(plan.remove_experts.get(layer, []))
    return [e for e in range(spec.layer_shapes()[layer].num_experts) if e not in removed]


def expert_widths(plan: PrunePlan, spec: ArchSpec, layer: int) -> dict[int, int]:
    """{kept expert: its FFN width after the plan} for one MoE layer."""
    f = spec.layer_shapes()[layer].intermediate_size
    removed = plan.remove_expert_neurons.get(layer, {})
    return {e: f - len(removed.get(e, [])) for e in kept_experts(plan, spec, layer)}


def kept_layers(plan: PrunePlan, spec: ArchSpec) -> list[int]:
    dropped = set(plan.drop_layers)
    return [i for i in range(spec.num_layers) if i not in dropped]


def _resulting_shapes(plan: PrunePlan, spec: ArchSpec) -> list[LayerShape]:
    shapes = spec.layer_shapes()
    out = []
    for i in kept_layers(plan, spec):
        heads, groups = layer_head_removal(plan, spec, i)
        if shapes[i].num_experts:  # validation makes every kept expert's width equal
            widths = expert_widths(plan, spec, i)
            intermediate = min(widths.values(), default=shapes[i].intermediate_size)
        else:
            intermediate = shapes[i].intermediate_size - len(plan.remove_neurons.get(i, []))
        out.append(
            LayerShape(
                num_heads=shapes[i].num_heads - len(heads),
                num_kv_heads=shapes[i].num_kv_heads - len(groups),
                intermediate_size=intermediate,
                num_experts=shapes[i].num_experts - len(plan.remove_experts.get(i, [])),
            )
        )
    return out


def _neutral_scores(spec: ArchSpec) -> ImportanceScores:
    """Scores that rank nothing in particular: enough to know the SIZES a plan's targets give."""
    shapes = spec.layer_shapes()
    L = spec.num_layers
    H = max(s.num_heads for s in shapes)
    F = max(s.intermediate_size for s in shapes)
    zeros = np.zeros(L)
    layers = {"block_importance": zeros, "drop_loss": zeros}
    layers.update({f"block_loss_k{k}": np.zeros(L - k + 1) for k in range(1, L)})
    layers.update({f"block_angular_k{k}": np.zeros(L - k + 1) for k in range(1, L)})
    E = max(s.num_experts for s in shapes)
    return ImportanceScores(
        heads=np.zeros((L, H)),
        neurons=np.zeros((L, F)),
        hidden=np.zeros(spec.hidden_size),
        layers=layers,
        experts=np.zeros((L, E)) if E else None,
        expert_neurons=np.zeros((L, E, F)) if E else None,
    )


def resulting_spec(plan: PrunePlan, spec: ArchSpec) -> ArchSpec:
    """The ArchSpec of the model `apply_plan` produces.

    Targets decide sizes, not which units go, so a plan with targets is previewed without
    importance scores (the sizes equal those `fill_plan` gives with any scores).
    """
    if plan.needs_filling():
        from worker.engine.plan.fill import fill_plan  # at call time: fill builds on this module

        plan = fill_plan(plan, spec, _neutral_scores(spec))
    shapes = _resulting_shapes(plan, spec)
    if not shapes:
        raise PlanError([PlanMessage(level="error", field="drop_layers", text="no layer left")])
    first = shapes[0]
    uniform = all(s == first for s in shapes)
    return spec.model_copy(
        update=dict(
            num_layers=len(shapes),
            hidden_size=spec.hidden_size - len(plan.remove_hidden),
            num_heads=first.num_heads,
            num_kv_heads=first.num_kv_heads,
            intermediate_size=first.intermediate_size,
            num_experts=first.num_experts,
            layers=None if uniform else shapes,
        )
    )


def vanilla_loadable(spec: ArchSpec) -> bool:
    """Whether stock `from_pretrained` can rebuild this shape from a config alone.

    Needs the same widths in every layer; GPT-2 also derives head_dim = n_embd / n_head, so its
    attention width must equal the hidden size.
    """
    if spec.layers is not None:
        return False
    if spec.family == "gpt2":
        return spec.num_heads * spec.head_dim == spec.hidden_size
    return True


def plan_stats(plan: PrunePlan, spec: ArchSpec, context: int | None = None) -> dict:
    """Cost of the pruned model next to the teacher's (what the dashboard previews); FLOPs/token of both
    at `context` tokens (None: the teacher's `flops_context()`, said as `flops_context`).

    Works for plans with targets too (sizes only; see `resulting_spec`). Raises PlanError for a
    plan that `validate_plan` rejects only where the sizes cannot be computed at all.
    """
    new = resulting_spec(plan, spec)
    context = spec.flops_context() if context is None else context
    teacher = spec.param_count()
    student = new.param_count()

    def pct(a: int, b: int) -> float:
        return round(100.0 * a / b, 2) if b else 0.0

    return {
        "spec": new.summary(),
        "params_total": student["total"],
        "params_non_embedding": student["non_embedding"],
        "params_embedding": student["embedding"],
        "percent_of_teacher_total": pct(student["total"], teacher["total"]),
        "percent_of_teacher_non_embedding": pct(student["non_embedding"], teacher["non_embedding"]),
        "flops_per_token": new.flops_per_token(context),
        "flops_context": context,
        "kv_cache_bytes_per_token": new.kv_cache_bytes_per_token(),
        "params_active": student["active"],
        "percent_of_teacher_active": pct(student["active"], teacher["active"]),
        "teacher_params_active": teacher["active"],
        "teacher_params_total": teacher["total"],
        "teacher_params_non_embedding": teacher["non_embedding"],
        "teacher_flops_per_token": spec.flops_per_token(context),
        "teacher_kv_cache_bytes_per_token": spec.kv_cache_bytes_per_token(),
        "uniform": new.layers is None,
        "vanilla_loadable": vanilla_loadable(new),
    }


# transformers' configs that validate hidden_size % num_attention_heads == 0 even with an explicit
# head_dim (the config keeps the widest layer's head count).
CONFIG_CLASS = {"llama": "LlamaConfig", "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig"}
HEAD_ALIGNED_FAMILIES = tuple(CONFIG_CLASS)


# transformers runs fused experts with torch's grouped_mm by default, whose kernels need every row of
# the expert weights to start at a multiple of 16 bytes.
_GROUPED_MM_RULE = (
    "mixture-of-experts layers run on grouped_mm kernels, which need {what} x the {dtype} element size to "
    "be a multiple of 16 bytes"
)


def expert_alignment(spec: ArchSpec) -> int:
    """What expert widths (and the hidden size) of a mixture-of-experts model must be a multiple of."""
    if not any(s.num_experts for s in spec.layer_shapes()):
        return 1
    return max(1, 16 // dtype_bytes(spec.dtype))


def hidden_alignment(spec: ArchSpec) -> int:
    """What a (pruned) hidden size must be a multiple of for the family's config to accept it.

    GPT-2 derives head_dim = n_embd / n_head, so a multiple of head_dim; Llama and Gemma configs
    require a multiple of the head count (HEAD_ALIGNED_FAMILIES); mixture-of-experts models the
    grouped_mm alignment (`expert_alignment`); other families only need head_dim kept (1)."""
    if spec.family == "gpt2":
        return spec.head_dim
    if spec.family in HEAD_ALIGNED_FAMILIES:
        return max(s.num_heads for s in spec.layer_shapes())
    return expert_alignment(spec)
