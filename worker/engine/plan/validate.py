"""Plan validation: `validate_plan` (every error and warning, each with the field it is about and
valid values nearby), `check_plan` (raises PlanError), and the checks of a plan's targets that
`fill_plan` runs too (`_validate_targets`)."""

from __future__ import annotations

from worker.engine.plan.schema import PlanError, PlanMessage, PrunePlan
from worker.engine.plan.shape import (
    _GROUPED_MM_RULE,
    CONFIG_CLASS,
    expert_alignment,
    expert_widths,
    hidden_alignment,
    kept_layers,
    layer_head_removal,
    resulting_spec,
    vanilla_loadable,
)
from worker.engine.spec import ArchSpec, LayerShape


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
    moot: dict[int, list[str]] = {}  # dropped layer -> the entries that cut inside it
    for name in _LAYER_MAPPINGS:
        mapping = getattr(plan, name)
        msgs.extend(_range_errors(name, list(mapping), L, "layer"))
        for layer in mapping:
            if layer in plan.drop_layers:
                moot.setdefault(layer, []).append(name)
    if moot:  # one line, not one per layer and entry: dropping a layer with marks in it is routine
        layers = sorted(moot)
        names = sorted({n for entries in moot.values() for n in entries})
        which = f"layer {layers[0]} is" if len(layers) == 1 else f"layers {_listed(layers)} are"
        msgs.append(_warning("drop_layers", f"{which} dropped: {', '.join(names)} there have no effect"))
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


def check_plan(plan: PrunePlan, spec: ArchSpec) -> list[PlanMessage]:
    """validate_plan, raising PlanError when there is any error; returns the warnings."""
    msgs = validate_plan(plan, spec)
    errors = [m for m in msgs if m.level == "error"]
    if errors:
        raise PlanError(errors)
    return msgs


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
