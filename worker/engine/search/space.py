"""The search space: every architecture the teacher can be cut to within the step alignment and the
per-axis cut limits, and the explicit plan of each (filled from the importance run's scores).

Torch-free. Axes (uniform cuts, as Minitron searches them):
    depth   layers kept, n >= L - floor(L x depth limit); which layers go is chosen by each layer method
            the importance run supports (block / drop / bi / angular: plan.fill_plan's rules)
    heads   query heads per layer: whole KV groups (g x q) or the same count within every group (G x k)
    mlp     MLP size: multiples of mlp_step (and the teacher's own size)
    hidden  hidden size: multiples of lcm(hidden_step, the family's rule: plan.hidden_alignment)
Two architectures with the same sizes but different layers dropped (or heads chosen) are different
candidates; layer methods that drop the same layers are merged into one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from worker.engine.plan import (
    ImportanceScores,
    PlanTargets,
    PrunePlan,
    fill_plan,
    hidden_alignment,
)
from worker.engine.search.budgets import Budget, computed_cost
from worker.engine.search.settings import SearchSettings
from worker.engine.spec import ArchSpec


@dataclass(frozen=True)
class Architecture:
    """One point of the space: sizes, and how the removed units are chosen."""

    num_layers: int
    drop_layers: tuple[int, ...]
    layer_method: str  # "none" when no layer is dropped; "block+angular" when several agree
    heads_per_layer: int
    head_mode: str  # "none" when no head is cut
    num_kv_heads: int
    intermediate_size: int
    hidden_size: int

    @property
    def id(self) -> str:
        return (
            f"L{self.num_layers}-{self.layer_method}.H{self.heads_per_layer}-{self.head_mode}"
            f".F{self.intermediate_size}.D{self.hidden_size}"
        )

    def shape_key(self) -> tuple:
        """What cost depends on (not which units go)."""
        return (
            self.num_layers,
            self.heads_per_layer,
            self.num_kv_heads,
            self.intermediate_size,
            self.hidden_size,
        )

    def width_key(self) -> tuple:
        """Everything but depth: candidates sharing it share one cut model in scoring."""
        return (self.heads_per_layer, self.head_mode, self.intermediate_size, self.hidden_size)

    def cut_kind(self, spec: ArchSpec) -> str:
        depth = self.num_layers < spec.num_layers
        width = (
            self.heads_per_layer < spec.num_heads
            or self.intermediate_size < spec.intermediate_size
            or self.hidden_size < spec.hidden_size
        )
        return "mixed" if depth and width else "depth" if depth else "width" if width else "none"

    def axes(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "layer_method": self.layer_method,
            "drop_layers": list(self.drop_layers),
            "heads_per_layer": self.heads_per_layer,
            "head_mode": self.head_mode,
            "num_kv_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_size": self.hidden_size,
        }

    def spec(self, teacher: ArchSpec) -> ArchSpec:
        """The student's ArchSpec (equal to plan.resulting_spec of `plan`; a test checks it)."""
        return teacher.model_copy(
            update=dict(
                num_layers=self.num_layers,
                num_heads=self.heads_per_layer,
                num_kv_heads=self.num_kv_heads,
                intermediate_size=self.intermediate_size,
                hidden_size=self.hidden_size,
                layers=None,
            )
        )

    def targets(self) -> PlanTargets:
        return PlanTargets(
            heads_per_layer=self.heads_per_layer,
            head_mode=self.head_mode if self.head_mode != "none" else "within_groups",
            intermediate_size=self.intermediate_size,
            hidden_size=self.hidden_size,
        )

    def plan(self, teacher: ArchSpec, scores: ImportanceScores) -> PrunePlan:
        """The explicit plan: layers dropped as chosen, widths filled from the scores by fill_plan."""
        return fill_plan(
            PrunePlan(drop_layers=list(self.drop_layers), targets=self.targets()), teacher, scores
        )


class ComputedCosts:
    """`budgets.computed_cost` of many architectures, fast: for a uniform shape every computed cost
    (parameters, memory) is affine in the layer count, so each width setting is priced at 1 and 2
    layers and every depth follows exactly (a large teacher's space has 10^5 architectures)."""

    def __init__(self, teacher: ArchSpec):
        self.teacher = teacher
        self.cache: dict[tuple, tuple[float, float]] = {}

    def __call__(self, budget: Budget, a: Architecture) -> float:
        key = (budget.text, a.heads_per_layer, a.num_kv_heads, a.intermediate_size, a.hidden_size)
        if key not in self.cache:
            one, two = (computed_cost(budget, replace(a, num_layers=n).spec(self.teacher)) for n in (1, 2))
            self.cache[key] = (one, two - one)
        base, per_layer = self.cache[key]
        return base + (a.num_layers - 1) * per_layer


def _check_teacher(spec: ArchSpec) -> None:
    if spec.layers is not None:
        raise ValueError("the search needs a teacher whose layers all have the same widths")
    if spec.num_experts:
        raise ValueError("the search covers dense models; mixture-of-experts teachers are not supported yet")


def _floor_allowed(size: int, limit: float) -> int:
    """The smallest size an axis of `size` units may be cut to under a cut limit (a fraction)."""
    return math.ceil(size * (1 - limit) - 1e-9)


def aligned_sizes(size: int, step: int, limit: float, rule: int = 1) -> list[int]:
    """Multiples of `step` below `size` down to the cut limit, and `size` itself when it is a multiple
    of `rule` (the family's own constraint), descending."""
    lowest = max(step, _floor_allowed(size, limit))
    values = {v for v in range(step * (size // step), lowest - 1, -step) if v >= lowest and v % rule == 0}
    if size % rule == 0:
        values.add(size)
    return sorted((v for v in values if v > 0), reverse=True)


def hidden_sizes(spec: ArchSpec, settings: SearchSettings, heads: int) -> list[int]:
    """Hidden sizes searched for a student with `heads` query heads per layer: multiples of the step
    that also meet the family's rule (Llama / Gemma configs: a multiple of the head count; GPT-2: of
    head_dim), i.e. of plan.hidden_alignment of the student."""
    rule = hidden_alignment(spec.model_copy(update={"num_heads": heads, "layers": None}))
    step = math.lcm(settings.hidden_step, rule)
    return aligned_sizes(spec.hidden_size, step, settings.cut_limit("hidden"), rule)


def head_options(spec: ArchSpec, settings: SearchSettings) -> list[tuple[int, str, int]]:
    """(heads kept, head mode, KV heads kept), the teacher's own first."""
    H, G = spec.num_heads, spec.num_kv_heads
    q = H // G
    lowest = _floor_allowed(H, settings.cut_limit("heads"))
    options = [(H, "none", G)]
    if "whole_groups" in settings.head_modes:
        options += [(g * q, "whole_groups", g) for g in range(G - 1, 0, -1) if g * q >= lowest]
    if "within_groups" in settings.head_modes:
        options += [(G * k, "within_groups", G) for k in range(q - 1, 0, -1) if G * k >= lowest]
    return options


def depth_options(spec: ArchSpec, scores: ImportanceScores, settings: SearchSettings) -> list[tuple]:
    """(layers kept, layers dropped, method names), the teacher's own first; identical drops merged."""
    L = spec.num_layers
    lowest = max(1, _floor_allowed(L, settings.cut_limit("depth")))
    options = [(L, (), "none")]
    for n in range(L - 1, lowest - 1, -1):
        by_drop: dict[tuple, list[str]] = {}
        for method in settings.layer_methods:
            plan = PrunePlan(targets=PlanTargets(num_layers=n, layer_method=method))
            try:
                dropped = tuple(fill_plan(plan, spec, scores).drop_layers)
            except ValueError:  # the importance run lacks this method's scan for n layers
                continue
            by_drop.setdefault(dropped, []).append(method)
        options += [(n, drop, "+".join(methods)) for drop, methods in by_drop.items()]
    return options


def axis_values(spec: ArchSpec, settings: SearchSettings) -> dict:
    """The sizes searched on each axis (what the report lists as the space); hidden sizes per head count."""
    _check_teacher(spec)
    heads = head_options(spec, settings)
    return {
        "heads": heads,
        "intermediate_size": aligned_sizes(
            spec.intermediate_size, settings.mlp_step, settings.cut_limit("mlp")
        ),
        "hidden_size": {h: hidden_sizes(spec, settings, h) for h in sorted({h for h, _, _ in heads})},
    }


def enumerate_architectures(
    spec: ArchSpec, scores: ImportanceScores, settings: SearchSettings
) -> list[Architecture]:
    """Every architecture of the space (the teacher itself included: it is the 'none' cut)."""
    values = axis_values(spec, settings)
    depths = depth_options(spec, scores, settings)
    out = []
    for n, drop, method in depths:
        for heads, mode, kv in values["heads"]:
            for f in values["intermediate_size"]:
                for d in values["hidden_size"][heads]:
                    out.append(Architecture(n, drop, method, heads, mode, kv, f, d))
    return out


def frontier(fitting: list[Architecture], spec: ArchSpec, settings: SearchSettings) -> list[Architecture]:
    """The architectures of `fitting` that cannot grow one step on any axis and still be in `fitting`.

    A step: one layer fewer dropped by the same layer method, the next larger head count in the same
    head mode, the next larger MLP or hidden size. Smaller models than a fitting neighbour waste the
    budget, so a search lists only the largest ones unless asked for all."""
    values = axis_values(spec, settings)
    index: dict[tuple, list[set[str]]] = {}
    for a in fitting:
        key = (a.num_layers, a.heads_per_layer, a.head_mode, a.intermediate_size, a.hidden_size)
        index.setdefault(key, []).append(set(a.layer_method.split("+")))

    def present(n, h, mode, f, d, methods: set[str]) -> bool:
        if n == spec.num_layers:
            methods = {"none"}
        return any(m & methods for m in index.get((n, h, mode, f, d), []))

    def next_larger(values_: list[int], v: int) -> int | None:
        bigger = sorted(x for x in values_ if x > v)
        return bigger[0] if bigger else None

    out = []
    for a in fitting:
        methods = set(a.layer_method.split("+"))
        n, h, mode, f, d = a.num_layers, a.heads_per_layer, a.head_mode, a.intermediate_size, a.hidden_size
        steps = []
        if n < spec.num_layers:
            steps.append((n + 1, h, mode, f, d))
        same_mode = [x for x, m, _ in values["heads"] if m in (mode, "none")]
        h2 = next_larger(same_mode, h)
        if h2 is not None:
            steps.append((n, h2, "none" if h2 == spec.num_heads else mode, f, d))
        f2 = next_larger(values["intermediate_size"], f)
        if f2 is not None:
            steps.append((n, h, mode, f2, d))
        d2 = next_larger(values["hidden_size"][h], d)
        if d2 is not None:
            steps.append((n, h, mode, f, d2))
        if not any(present(*step, methods) for step in steps):
            out.append(a)
    return out
