"""The names of a bake-off's candidates (its branches, the students they cut, the ranking's rows and the
workflow's progress messages): the name the request gives, else the candidate's shape
(worker.engine.spec.shape_label of its plan's resulting spec, as the dashboard labels it). Names are
unique within the bake-off: two candidates of one shape (the same sizes, different layers dropped or
units chosen) are told apart by what differs. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.errors import InvalidInput
from worker.engine.spec import shape_label

MAX_NAME = 200  # students.name


@dataclass(frozen=True)
class Named:
    given: str | None  # the request's name, kept as given
    spec: dict[str, Any] | None  # the plan's resulting spec (plan.stats["spec"])
    drop_layers: tuple[int, ...]
    candidate_id: str | None  # the search candidate it came from (its id in the search report)


def _drops(layers: tuple[int, ...]) -> str:
    return f"drops {','.join(map(str, layers))}" if layers else "drops none"


def candidate_names(items: list[Named], teacher: dict[str, Any] | None) -> list[str]:
    """One name per candidate, in order: the given name, else its shape; a shape that two candidates
    share gets the layers each drops when those differ, then its search candidate id (or its place)."""
    base = [
        (shape_label(i.spec, teacher) or i.candidate_id or f"candidate {k + 1}")[: MAX_NAME - 60]
        for k, i in enumerate(items)
    ]
    names = [i.given or b for i, b in zip(items, base)]

    def clashing(k: int) -> bool:
        return items[k].given is None and names.count(names[k]) > 1

    # Same sizes, different layers dropped (a search's layer methods): say which layers.
    groups: dict[str, set[tuple[int, ...]]] = {}
    for k, item in enumerate(items):
        if clashing(k):
            groups.setdefault(names[k], set()).add(item.drop_layers)
    names = [
        f"{n} · {_drops(i.drop_layers)}"[:MAX_NAME] if len(groups.get(n, ())) > 1 and i.given is None else n
        for i, n in zip(items, names)
    ]
    # Still alike (the same layers, other heads or neurons chosen): the search's id, or the place.
    clashes = [k for k in range(len(items)) if clashing(k)]
    for k in clashes:
        names[k] = f"{names[k][: MAX_NAME - 60]} ({items[k].candidate_id or f'candidate {k + 1}'})"[:MAX_NAME]
    dup = next((k for k, n in enumerate(names) if names.count(n) > 1), None)
    if dup is not None:  # a given name equal to another candidate's shape: the request names them
        raise InvalidInput(
            f"candidate names must differ: {names[dup]!r} names two candidates; give each a name",
            field=("body", "candidates", dup, "name"),
        )
    return names
