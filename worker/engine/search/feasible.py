"""Whether any architecture of the space can meet the search's budgets, and in words why not.

Torch-free: the computed budgets (params, params_non_embedding, memory) depend only on the shapes of the
space, which the teacher's stored spec and the settings give without its weights or importance scores
(which layers go changes no computed cost). The API refuses an impossible computed budget at submit with
`nothing_fits_computed`; the engine words its empty report's note with the same sentences (`smallest`).
"""

from __future__ import annotations

from worker.engine.memplan import format_bytes
from worker.engine.search.budgets import Budget, computed_cost, parse_budget
from worker.engine.search.settings import SearchSettings
from worker.engine.search.space import Architecture, ComputedCosts, _floor_allowed, axis_values
from worker.engine.spec import ArchSpec

LOOSEN = "loosen the cut limits (max_width_cut, max_depth_cut, max_cut) or the budget"


def shapes(spec: ArchSpec, settings: SearchSettings) -> list[Architecture]:
    """Every shape of the space (layer count x heads x MLP x hidden), the teacher's first. Layers are
    counted down to the depth cut limit whether or not the importance run scanned for each count, so
    these shapes hold the real space's: nothing they rule out could have fitted."""
    values = axis_values(spec, settings)
    lowest = max(1, _floor_allowed(spec.num_layers, settings.cut_limit("depth")))
    return [
        Architecture(n, (), "none" if n == spec.num_layers else "any", heads, mode, kv, f, d)
        for n in range(spec.num_layers, lowest - 1, -1)
        for heads, mode, kv in values["heads"]
        for f in values["intermediate_size"]
        for d in values["hidden_size"][heads]
    ]


def figure(budget: Budget, value: float) -> str:
    """A cost of `budget`'s kind in its units: 4,414,272 parameters, 1.2 GB, 3.10 ms/token, 2000 tokens/s."""
    if budget.kind == "params":
        return f"{value:,.0f} parameters"
    if budget.kind == "params_non_embedding":
        return f"{value:,.0f} non-embedding parameters"
    if budget.kind == "memory":
        return f"{format_bytes(value)} at batch {budget.batch}, context {budget.context}"
    if budget.kind == "throughput":
        return f"{value:,.0f} tokens/s at batch {budget.batch}, context {budget.context}"
    unit = "s/token" if budget.kind == "latency" else "s per prefill"
    return f"{value * 1e3:.3g} m{unit} at batch {budget.batch}, context {budget.context}"


def smallest(
    budget: Budget,
    value: float,
    teacher_value: float,
    arch_id: str | None,
    among: str = "any architecture of the space",
) -> str:
    """Why `budget` admits nothing: the cheapest figure `among` reaches on its axis (the fastest or the
    highest throughput for the measured kinds), against the teacher's."""
    best = {
        "params": "the fewest parameters",
        "params_non_embedding": "the fewest non-embedding parameters",
        "memory": "the least memory",
        "latency": "the fastest decode",
        "prefill": "the fastest prefill",
        "throughput": "the highest throughput",
    }[budget.kind]
    where = f" ({arch_id})" if arch_id else ""
    share = f" ({100 * value / teacher_value:.1f}% of the teacher's)" if teacher_value else ""
    return f"{best} {among} reaches{where} is {figure(budget, value)}{share}"


def nothing_fits_computed(spec: ArchSpec, settings: SearchSettings) -> tuple[int, str] | None:
    """(index of the budget, the sentence) when no shape of the space meets the computed budgets (each
    within the tolerance, all of them together, as the search requires); None when one does or when only
    measured budgets (latency, prefill, throughput: timed on the worker) could rule them out."""
    budgets = [parse_budget(t, settings.latency_batch, settings.latency_context) for t in settings.budgets]
    computed = [(i, b) for i, b in enumerate(budgets) if not b.measured]
    if not computed:
        return None
    space = shapes(spec, settings)
    costs = ComputedCosts(spec)
    teacher = {b.text: computed_cost(b, spec) for _, b in computed}
    limits = {b.text: b.limit(teacher[b.text]) for _, b in computed}
    for i, b in computed:
        cheapest = min(space, key=lambda a, b=b: costs(b, a))
        value = costs(b, cheapest)
        if not b.fits(value, limits[b.text], settings.tolerance):
            return i, (
                f"no architecture of the space meets {b.text}: "
                f"{smallest(b, value, teacher[b.text], None)}; {LOOSEN}"
            )
    if any(all(b.fits(costs(b, a), limits[b.text], settings.tolerance) for _, b in computed) for a in space):
        return None
    texts = " and ".join(b.text for _, b in computed)
    return computed[0][0], (
        f"no architecture of the space meets {texts} together (each alone is met by some): {LOOSEN}s"
    )
