"""The one prune-plan schema, its validation, its cost preview and its filling from importance scores.

Torch-free (pydantic + numpy): the backend and the dashboard import it to check a plan and show its
cost before anything is cut, and `surgery.apply_plan` cuts exactly what it describes.

Index conventions (all indices refer to the UNPRUNED model):
- `drop_layers`: decoder layers removed whole.
- `remove_heads[l]`: query heads removed from layer l. A KV group whose query heads are all removed is
  removed with them (so for multi-head attention, where every group has one query head, removing a
  head removes its key/value head too).
- `remove_kv_groups[l]`: KV groups removed whole, i.e. key/value head g and its query heads
  g*q .. g*q+q-1 (q = query heads per group).
- `remove_neurons[l]`: MLP intermediate channels removed from layer l.
- `remove_hidden`: hidden (embedding) channels removed from every layer, embeddings and LM head.
- `remove_experts[l]`: experts removed from mixture-of-experts layer l, with their router rows. Tokens
  are then routed among the kept experts (the router's softmax and top-k over those only), so at least
  top-k experts must stay in every layer.
- `remove_expert_neurons[l][e]`: FFN channels removed from expert e of MoE layer l (e and the channel
  indices refer to the unpruned layer). The experts of a layer are stored as fused [experts, ...]
  tensors, so every kept expert of a layer must keep the same width; WHICH channels each expert keeps
  is its own. For MoE layers `targets.intermediate_size` is that per-expert width.
- `targets`: sizes to reach instead of explicit indices; `fill_plan` turns them into explicit
  removals by ranking importance scores (lowest scores go first). A filled plan has `targets=None`.

Every kept KV group of a layer must keep the same number of query heads: transformers maps query
head i to key/value head i // (heads / kv_heads). head_dim is always kept.

JSON: dict keys are layer indices; JSON writes them as strings and pydantic reads them back as ints.
Example: drop layer 3, cut one head per KV group of layer 0 (8 heads in 4 groups), KV group 2 of
layer 1, and keep an MLP size of 2048 in every layer, chosen by importance:
    {"drop_layers": [3],
     "remove_heads": {"0": [1, 3, 5, 7]},
     "remove_kv_groups": {"1": [2]},
     "remove_neurons": {},
     "remove_hidden": [],
     "targets": {"intermediate_size": 2048}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from worker.engine.memplan import dtype_bytes
from worker.engine.spec import ArchSpec, LayerShape


def _not_a_boolean(value):
    # pydantic's lax mode reads JSON true/false as 1/0: {"drop_layers": [true]} dropped layer 1.
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")
    return value


Index = Annotated[int, BeforeValidator(_not_a_boolean)]  # a layer, head, neuron... of the unpruned model
Count = Annotated[int | None, BeforeValidator(_not_a_boolean)]  # a size to reach


class PlanTargets(BaseModel):
    """Sizes to reach; filled into explicit removals by `fill_plan` from importance scores."""

    model_config = ConfigDict(extra="forbid")

    num_layers: Count = Field(None, ge=1, description="decoder layers kept")
    layer_method: Literal["block", "bi", "drop", "angular"] = Field(
        "block",
        description="block: drop the contiguous block whose removal raised the LM loss least; "
        "bi: drop the lowest Block-Importance layers; drop: drop the layers whose single removal "
        "raised the LM loss least; angular: drop the contiguous block whose input and output are "
        "closest in angular distance (Gromov et al.)",
    )
    heads_per_layer: Count = Field(None, ge=1, description="query heads kept in every layer")
    head_mode: Literal["within_groups", "whole_groups"] = Field(
        "within_groups",
        description="within_groups: keep the best heads of every KV group (same count per group); "
        "whole_groups: keep the best KV groups with all their query heads",
    )
    intermediate_size: Count = Field(
        None, ge=1, description="MLP neurons kept in every layer (mixture of experts: in every expert)"
    )
    experts_per_layer: Count = Field(
        None, ge=1, description="experts kept in every mixture-of-experts layer (at least top-k)"
    )
    hidden_size: Count = Field(None, ge=1, description="hidden channels kept")
    param_budget: Count = Field(
        None, ge=1, description="total parameters at most; shrinks MLP, then MLP and hidden together"
    )
    active_param_budget: Count = Field(
        None,
        ge=1,
        description="active parameters (what one token runs: top-k experts) at most; shrinks like "
        "param_budget",
    )

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (
                self.num_layers,
                self.heads_per_layer,
                self.intermediate_size,
                self.experts_per_layer,
                self.hidden_size,
                self.param_budget,
                self.active_param_budget,
            )
        )


class PrunePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop_layers: list[Index] = Field(default_factory=list)
    remove_heads: dict[int, list[Index]] = Field(default_factory=dict)
    remove_kv_groups: dict[int, list[Index]] = Field(default_factory=dict)
    remove_neurons: dict[int, list[Index]] = Field(default_factory=dict)
    remove_hidden: list[Index] = Field(default_factory=list)
    remove_experts: dict[int, list[Index]] = Field(default_factory=dict)
    remove_expert_neurons: dict[int, dict[int, list[Index]]] = Field(default_factory=dict)
    targets: PlanTargets | None = None

    @model_validator(mode="after")
    def _normalise(self) -> PrunePlan:
        # Sorted and de-duplicated so equal plans compare and serialise equally; empty entries dropped.
        self.drop_layers = sorted(set(self.drop_layers))
        self.remove_hidden = sorted(set(self.remove_hidden))
        for name in ("remove_heads", "remove_kv_groups", "remove_neurons", "remove_experts"):
            mapping = getattr(self, name)
            setattr(self, name, {k: sorted(set(v)) for k, v in sorted(mapping.items()) if v})
        nested = {
            layer: {e: sorted(set(v)) for e, v in sorted(per_expert.items()) if v}
            for layer, per_expert in sorted(self.remove_expert_neurons.items())
        }
        self.remove_expert_neurons = {layer: v for layer, v in nested.items() if v}
        return self

    def needs_filling(self) -> bool:
        return self.targets is not None and not self.targets.is_empty()

    def is_empty(self) -> bool:
        return not (
            self.drop_layers
            or self.remove_heads
            or self.remove_kv_groups
            or self.remove_neurons
            or self.remove_hidden
            or self.remove_experts
            or self.remove_expert_neurons
            or self.needs_filling()
        )


class PlanMessage(BaseModel):
    level: Literal["error", "warning"]
    field: str = Field(description='dotted path in the plan, e.g. "remove_heads.3"')
    text: str
    nearby: list[int] = Field(default_factory=list, description="valid values close to the one given")


class PlanError(ValueError):
    """A plan that cannot be applied; `messages` holds every reason."""

    def __init__(self, messages: list[PlanMessage]):
        self.messages = messages
        super().__init__("; ".join(f"{m.field}: {m.text}" for m in messages))


@dataclass
class ImportanceScores:
    """Per-unit importance, higher = more important (for loss arrays: a larger loss increase)."""

    heads: np.ndarray  # [L, H]
    neurons: np.ndarray  # [L, F]
    hidden: np.ndarray  # [D]
    layers: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # block_importance, drop_loss, block_loss_k{k}, block_angular_k{k}
    experts: np.ndarray | None = None  # [L, E] mixture of experts only
    expert_neurons: np.ndarray | None = None  # [L, E, F] each expert's FFN channels


# ---- what a plan keeps ----------------------------------------------------------------------


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


def plan_stats(plan: PrunePlan, spec: ArchSpec, context: int = 2048) -> dict:
    """Cost of the pruned model next to the teacher's (what the dashboard previews).

    Works for plans with targets too (sizes only; see `resulting_spec`). Raises PlanError for a
    plan that `validate_plan` rejects only where the sizes cannot be computed at all.
    """
    new = resulting_spec(plan, spec)
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


# ---- validation --------------------------------------------------------------------------------


def _valid_head_counts(shape: LayerShape) -> list[int]:
    """Query-head counts reachable by keeping g groups with k heads each."""
    q = shape.num_heads // shape.num_kv_heads
    return sorted({g * k for g in range(1, shape.num_kv_heads + 1) for k in range(1, q + 1)})


def _nearby(values: list[int], target: int, n: int = 3) -> list[int]:
    """The n valid values closest to the target, ascending."""
    return sorted(sorted(values, key=lambda v: (abs(v - target), v))[:n])


def _listed(values: list[int]) -> str:
    return ", ".join(map(str, values))


def _range_errors(field_name: str, indices: list[int], limit: int, what: str) -> list[PlanMessage]:
    bad = [i for i in indices if i < 0 or i >= limit]
    if not bad:
        return []
    return [
        PlanMessage(
            level="error",
            field=field_name,
            text=f"{what} {', '.join(map(str, bad[:5]))} out of range; valid: 0..{limit - 1}",
        )
    ]


def _error(field_name: str, text: str, nearby: list[int] = ()) -> PlanMessage:
    return PlanMessage(level="error", field=field_name, text=text, nearby=list(nearby))


def _warning(field_name: str, text: str) -> PlanMessage:
    return PlanMessage(level="warning", field=field_name, text=text)


def _has_error(msgs: list[PlanMessage]) -> bool:
    return any(m.level == "error" for m in msgs)


def validate_plan(plan: PrunePlan, spec: ArchSpec) -> list[PlanMessage]:
    """Every reason the plan cannot be applied (errors) or may surprise (warnings).

    The checks run in order, each needing the ones before to have passed: layer indices, then each
    kept layer's heads, KV groups, neurons and experts, then hidden channels, then the shapes the
    plan would produce (family alignment rules, loadability)."""
    msgs: list[PlanMessage] = []
    if plan.needs_filling():
        msgs.extend(_validate_targets(plan, spec))
    msgs.extend(_layer_index_messages(plan, spec))
    if _has_error(msgs):
        return msgs  # the per-layer checks below need valid layer indices
    for layer in kept_layers(plan, spec):
        msgs.extend(_kept_layer_messages(plan, spec, layer))
    msgs.extend(_hidden_messages(plan, spec))
    if _has_error(msgs):
        return msgs
    try:
        new = resulting_spec(plan, spec)
    except PlanError as exc:  # a target out of reach (param_budget)
        return msgs + exc.messages
    return msgs + _result_messages(plan, spec, new)


_LAYER_MAPPINGS = (
    "remove_heads",
    "remove_kv_groups",
    "remove_neurons",
    "remove_experts",
    "remove_expert_neurons",
)


def _layer_index_messages(plan: PrunePlan, spec: ArchSpec) -> list[PlanMessage]:
    """Layer indices in range, at least one layer kept, per-layer entries of dropped layers."""
    L = spec.num_layers
    msgs = _range_errors("drop_layers", plan.drop_layers, L, "layer")
    if len(set(plan.drop_layers) & set(range(L))) >= L:
        msgs.append(
            _error("drop_layers", f"cannot drop all {L} layers; keep at least one (drop at most {L - 1})")
        )
    for name in _LAYER_MAPPINGS:
        mapping = getattr(plan, name)
        msgs.extend(_range_errors(name, list(mapping), L, "layer"))
        for layer in mapping:
            if layer in plan.drop_layers:
                msgs.append(
                    _warning(f"{name}.{layer}", f"layer {layer} is dropped; its {name} entry has no effect")
                )
    return msgs


def _kept_layer_messages(plan: PrunePlan, spec: ArchSpec, layer: int) -> list[PlanMessage]:
    """One kept layer: indices in range first; the counts they leave only when they are."""
    shape = spec.layer_shapes()[layer]
    msgs = [
        *_range_errors(f"remove_heads.{layer}", plan.remove_heads.get(layer, []), shape.num_heads, "head"),
        *_range_errors(
            f"remove_kv_groups.{layer}", plan.remove_kv_groups.get(layer, []), shape.num_kv_heads, "KV group"
        ),
        *_range_errors(
            f"remove_neurons.{layer}", plan.remove_neurons.get(layer, []), shape.intermediate_size, "neuron"
        ),
        *_expert_errors(plan, spec, layer),
    ]
    if msgs:
        return msgs  # indices out of range: the counts below would be meaningless
    return _head_errors(plan, spec, layer) + _neuron_errors(plan, spec, layer)


def _head_errors(plan: PrunePlan, spec: ArchSpec, layer: int) -> list[PlanMessage]:
    """A kept layer keeps at least one query head, and the same number in every kept KV group."""
    shape = spec.layer_shapes()[layer]
    q = shape.num_heads // shape.num_kv_heads
    heads, groups = layer_head_removal(plan, spec, layer)
    kept_heads = shape.num_heads - len(heads)
    valid = _valid_head_counts(shape)
    if kept_heads == 0:
        # Named after what the plan wrote: whole KV groups alone remove every head too.
        field = "remove_heads" if plan.remove_heads.get(layer) else "remove_kv_groups"
        return [
            _error(
                f"{field}.{layer}",
                f"layer {layer} would keep no attention head; keep at least one (valid head counts: "
                f"{_listed(_nearby(valid, 1))}) or drop the whole layer with drop_layers",
                _nearby(valid, 1),
            )
        ]
    removed = set(heads)
    per_group = [
        sum(1 for h in range(g * q, (g + 1) * q) if h not in removed)
        for g in range(shape.num_kv_heads)
        if g not in groups
    ]
    if len(set(per_group)) <= 1:
        return []
    return [
        _error(
            f"remove_heads.{layer}",
            f"layer {layer}: the kept KV groups would keep {per_group} query heads; every "
            f"group must keep the same number because query head i attends with KV head "
            f"i // (heads / kv_heads). Remove the same number of heads from every group, or "
            f"whole groups (remove_kv_groups). Valid head counts near {kept_heads}: "
            f"{_listed(_nearby(valid, kept_heads))}",
            _nearby(valid, kept_heads),
        )
    ]


def _neuron_errors(plan: PrunePlan, spec: ArchSpec, layer: int) -> list[PlanMessage]:
    """A kept dense layer keeps at least one MLP neuron (expert layers: `_expert_errors`)."""
    shape = spec.layer_shapes()[layer]
    kept_neurons = shape.intermediate_size - len(plan.remove_neurons.get(layer, []))
    if kept_neurons or shape.num_experts:
        return []
    return [
        _error(
            f"remove_neurons.{layer}",
            f"layer {layer} would keep no MLP neuron; keep at least 1 of "
            f"{shape.intermediate_size} or drop the whole layer with drop_layers",
        )
    ]


def _hidden_messages(plan: PrunePlan, spec: ArchSpec) -> list[PlanMessage]:
    """Hidden-channel indices in range, at least one kept, GPT-2's multiple of head_dim."""
    D = spec.hidden_size
    msgs = _range_errors("remove_hidden", plan.remove_hidden, D, "hidden channel")
    kept_hidden = D - len(plan.remove_hidden)
    if kept_hidden <= 0:
        msgs.append(_error("remove_hidden", f"all {D} hidden channels removed; keep at least one"))
    elif spec.family == "gpt2":  # its rule (head_dim) does not depend on the plan: check it early
        msgs.extend(_hidden_size_errors("remove_hidden", kept_hidden, spec, D))
    return msgs


def _result_messages(plan: PrunePlan, spec: ArchSpec, new: ArchSpec) -> list[PlanMessage]:
    """Rules on the shapes the plan produces (`new`): the family's alignments, one head count for
    Phi-3, and whether vanilla from_pretrained can load the result."""
    return [
        *_hidden_alignment_errors(plan, spec, new),
        *_expert_width_errors(plan, spec, new),
        *_phi3_head_errors(spec, new),
        *_loadability_warnings(spec, new),
    ]


def _hidden_alignment_errors(plan: PrunePlan, spec: ArchSpec, new: ArchSpec) -> list[PlanMessage]:
    field_name = "targets.hidden_size" if plan.targets and plan.targets.hidden_size else "remove_hidden"
    return _hidden_size_errors(field_name, new.hidden_size, new, spec.hidden_size)


def _hidden_size_errors(field_name: str, size: int, student: ArchSpec, largest: int) -> list[PlanMessage]:
    """An error when hidden `size` breaks the family's rule for `student` (`hidden_alignment`), with
    the valid sizes either side of it up to `largest` (the teacher's hidden size)."""
    align = hidden_alignment(student)
    if not size % align:
        return []
    near = [v for v in (size // align * align, (size // align + 1) * align) if 0 < v <= largest]
    return [
        _error(
            field_name,
            f"{_hidden_rule(student)} ({size} is not a multiple of {align}); nearby valid hidden sizes: "
            f"{_listed(near)}",
            near,
        )
    ]


def _hidden_rule(spec: ArchSpec) -> str:
    """Why the family's hidden size must be a multiple of `hidden_alignment(spec)`."""
    if spec.family == "gpt2":
        return (
            f"GPT-2 derives head_dim = n_embd / n_head, so the hidden size must be a multiple of "
            f"head_dim={spec.head_dim}"
        )
    if spec.family in CONFIG_CLASS:
        return f"{CONFIG_CLASS[spec.family]} requires hidden_size to be a multiple of num_attention_heads"
    return _GROUPED_MM_RULE.format(what="hidden_size", dtype=spec.dtype)


def _expert_width_errors(plan: PrunePlan, spec: ArchSpec, new: ArchSpec) -> list[PlanMessage]:
    """The first kept expert layer whose width breaks the grouped_mm alignment (one message)."""
    new_shapes = new.layer_shapes()
    ealign = expert_alignment(spec)
    kept = kept_layers(plan, spec)
    if len(kept) != len(new_shapes):  # targets chose which layers go: name them by their new position
        kept = list(range(len(new_shapes)))
    for layer, shape in zip(kept, new_shapes, strict=True):
        if shape.num_experts and shape.intermediate_size % ealign:
            f = shape.intermediate_size
            near = [v for v in (f // ealign * ealign, (f // ealign + 1) * ealign) if v > 0]
            return [
                _error(
                    "targets.intermediate_size"
                    if plan.targets and plan.targets.intermediate_size
                    else f"remove_expert_neurons.{layer}",
                    f"{_GROUPED_MM_RULE.format(what='the expert width', dtype=spec.dtype)} (layer {layer} "
                    f"keeps {f}, not a multiple of {ealign}); nearby valid widths: {_listed(near)}",
                    near,
                )
            ]
    return []


def _phi3_head_errors(spec: ArchSpec, new: ArchSpec) -> list[PlanMessage]:
    counts = sorted({s.num_heads for s in new.layer_shapes()})
    if spec.family != "phi3" or len(counts) <= 1:
        return []
    return [
        _error(
            "remove_heads",
            f"Phi-3 splits its fused qkv_proj with config.num_attention_heads, one value for all "
            f"layers, so every kept layer must keep the same number of query heads (this plan "
            f"keeps {counts}); valid: any one of those counts in every layer",
        )
    ]


def _loadability_warnings(spec: ArchSpec, new: ArchSpec) -> list[PlanMessage]:
    if vanilla_loadable(new):
        return []
    why = "layers differ in width"
    if new.layers is None and spec.family == "gpt2":
        why = (
            f"GPT-2 needs n_embd = n_head x head_dim ({new.num_heads} x {new.head_dim} != "
            f"{new.hidden_size}); keep hidden {new.num_heads * new.head_dim} for a vanilla save"
        )
    return [
        _warning(
            "plan",
            f"not loadable by vanilla from_pretrained ({why}); it is saved in the Prunescope "
            f"format that worker.engine.loading.load_model restores",
        )
    ]


def _expert_errors(plan: PrunePlan, spec: ArchSpec, layer: int) -> list[PlanMessage]:
    """Expert removals and expert FFN cuts of one kept layer (and neuron cuts that do not fit it)."""
    shape = spec.layer_shapes()[layer]
    msgs: list[PlanMessage] = []

    def error(field_name: str, text: str, nearby: list[int] = ()) -> None:
        msgs.append(_error(field_name, text, nearby))

    removed = plan.remove_experts.get(layer, [])
    cuts = plan.remove_expert_neurons.get(layer, {})
    if not shape.num_experts:
        for name, given in (("remove_experts", removed), ("remove_expert_neurons", cuts)):
            if given:
                error(f"{name}.{layer}", f"layer {layer} has a dense MLP, no experts; use remove_neurons")
        return msgs
    E, F, k = shape.num_experts, shape.intermediate_size, spec.experts_per_token
    if plan.remove_neurons.get(layer):
        error(
            f"remove_neurons.{layer}",
            f"layer {layer} is a mixture of {E} experts: give each expert's channels in "
            f"remove_expert_neurons.{layer}.<expert> (or targets.intermediate_size)",
        )
    msgs.extend(_range_errors(f"remove_experts.{layer}", removed, E, "expert"))
    msgs.extend(_range_errors(f"remove_expert_neurons.{layer}", list(cuts), E, "expert"))
    for e, neurons in cuts.items():
        msgs.extend(_range_errors(f"remove_expert_neurons.{layer}.{e}", neurons, F, "channel"))
    if msgs:
        return msgs
    kept = E - len(removed)
    if kept < k:
        error(
            f"remove_experts.{layer}",
            f"layer {layer} would keep {kept} of {E} experts, fewer than the {k} every token is routed to "
            f"(top-k); remove at most {E - k} experts (keep {k}..{E}; nearby valid: "
            f"{_listed(_nearby(list(range(k, E + 1)), kept))} kept)",
            _nearby(list(range(k, E + 1)), kept),
        )
    for e in cuts:
        if e in removed:
            msgs.append(
                _warning(
                    f"remove_expert_neurons.{layer}.{e}",
                    f"expert {e} of layer {layer} is removed; its channel cut has no effect",
                )
            )
    widths = expert_widths(plan, spec, layer)
    distinct = sorted(set(widths.values()))
    if len(distinct) > 1:
        by_width = {w: [e for e, x in widths.items() if x == w] for w in distinct}
        error(
            f"remove_expert_neurons.{layer}",
            f"the kept experts of layer {layer} would have widths "
            f"{', '.join(f'{w} (experts {by_width[w]})' for w in distinct)}; a layer stores its experts "
            f"as one fused tensor, so remove the same number of channels from every kept expert "
            f"(nearby common widths: {_listed(_nearby(distinct, min(distinct)))})",
            _nearby(distinct, min(distinct)),
        )
    elif distinct and distinct[0] == 0:
        error(
            f"remove_expert_neurons.{layer}",
            f"the experts of layer {layer} would keep no channel; keep 1..{F}",
        )
    return msgs


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


def check_plan(plan: PrunePlan, spec: ArchSpec) -> list[PlanMessage]:
    """validate_plan, raising PlanError when there is any error; returns the warnings."""
    msgs = validate_plan(plan, spec)
    errors = [m for m in msgs if m.level == "error"]
    if errors:
        raise PlanError(errors)
    return msgs


# ---- filling targets from importance ---------------------------------------------------------------


def _validate_targets(plan: PrunePlan, spec: ArchSpec) -> list[PlanMessage]:
    t = plan.targets
    msgs: list[PlanMessage] = []

    def error(field_name: str, text: str, nearby: list[int] = ()) -> None:
        msgs.append(_error(f"targets.{field_name}", text, nearby))

    shapes = spec.layer_shapes()
    if t.num_layers is not None:
        if plan.drop_layers:
            error("num_layers", "give either drop_layers or targets.num_layers, not both")
        if t.num_layers > spec.num_layers:
            error("num_layers", f"the model has {spec.num_layers} layers; valid: 1..{spec.num_layers}")
    # A non-uniform (already pruned) teacher: every target must suit each layer it applies to; an
    # error names the first layer it does not suit, with that layer's own valid values.
    layers = [i for i in range(len(shapes)) if i not in plan.drop_layers] or list(range(len(shapes)))
    uniform = len({tuple(shapes[i].model_dump().values()) for i in layers}) == 1
    if t.heads_per_layer is not None:
        if plan.remove_heads or plan.remove_kv_groups:
            error("heads_per_layer", "give either explicit head/group removals or heads_per_layer")
        for i in layers:
            s = shapes[i]
            q = s.num_heads // s.num_kv_heads
            step = s.num_kv_heads if t.head_mode == "within_groups" else q
            valid = list(range(step, s.num_heads + 1, step))
            if t.heads_per_layer not in valid:
                how = (
                    f"a multiple of the {s.num_kv_heads} KV groups (same count kept in every group)"
                    if t.head_mode == "within_groups"
                    else f"a multiple of the {q} query heads per group (whole groups)"
                )
                where = "" if uniform else f" in layer {i} ({s.num_heads} heads, {s.num_kv_heads} KV groups)"
                error(
                    "heads_per_layer",
                    f"{t.heads_per_layer} heads cannot be kept{where} with head_mode={t.head_mode}: it "
                    f"must be {how}; nearby valid: {_listed(_nearby(valid, t.heads_per_layer))}",
                    _nearby(valid, t.heads_per_layer),
                )
                break
    if t.intermediate_size is not None:
        if plan.remove_neurons or plan.remove_expert_neurons:
            given = "remove_neurons" if plan.remove_neurons else "remove_expert_neurons"
            error("intermediate_size", f"give either {given} or targets.intermediate_size")
        narrowest = min(layers, key=lambda i: shapes[i].intermediate_size)
        smallest = shapes[narrowest].intermediate_size
        if t.intermediate_size > smallest:
            what = "the MLP size" if uniform else f"the MLP size of layer {narrowest}, the narrowest"
            error("intermediate_size", f"at most {smallest} ({what}) can be kept")
    if t.hidden_size is not None:
        if plan.remove_hidden:
            error("hidden_size", "give either remove_hidden or targets.hidden_size")
        if t.hidden_size > spec.hidden_size:
            error("hidden_size", f"at most {spec.hidden_size} (the hidden size) can be kept")
        elif spec.family == "gpt2":  # the other families' rules depend on the heads kept: checked later
            msgs.extend(_hidden_size_errors("targets.hidden_size", t.hidden_size, spec, spec.hidden_size))
    if t.experts_per_layer is not None:
        counts = sorted({s.num_experts for s in shapes if s.num_experts})
        k = spec.experts_per_token
        if not counts:
            error("experts_per_layer", "the model has no mixture-of-experts layer")
        elif plan.remove_experts:
            error("experts_per_layer", "give either remove_experts or targets.experts_per_layer")
        elif not k <= t.experts_per_layer <= counts[0]:
            error(
                "experts_per_layer",
                f"keep between top-k={k} and {counts[0]} experts per layer; nearby valid: "
                f"{_listed(_nearby(list(range(k, counts[0] + 1)), t.experts_per_layer))}",
                _nearby(list(range(k, counts[0] + 1)), t.experts_per_layer),
            )
    for budget in ("param_budget", "active_param_budget"):
        if getattr(t, budget) is not None and t.intermediate_size is not None and t.hidden_size is not None:
            error(budget, f"{budget} needs intermediate_size or hidden_size left free to choose")
        # The budget picks the MLP and hidden widths by importance: explicit cuts of them would be replaced.
        given = [n for n in ("remove_neurons", "remove_expert_neurons", "remove_hidden") if getattr(plan, n)]
        if getattr(t, budget) is not None and given:
            error(
                budget,
                f"give either {' / '.join(given)} or targets.{budget}: the budget chooses those widths",
            )
    if t.param_budget is not None and t.active_param_budget is not None:
        error("active_param_budget", "give either param_budget or active_param_budget, not both")
    return msgs


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


__all__ = [
    "ImportanceScores",
    "PlanError",
    "PlanMessage",
    "PlanTargets",
    "PrunePlan",
    "check_plan",
    "expert_widths",
    "fill_plan",
    "fill_warnings",
    "kept_experts",
    "kept_layers",
    "layer_head_removal",
    "plan_stats",
    "resulting_spec",
    "validate_plan",
    "vanilla_loadable",
]
