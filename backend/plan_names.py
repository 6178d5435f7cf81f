"""Plan names are unique per teacher (the index `uq_plans_teacher_name`, migration 0006). A name already
taken is a 409 at the request's name field; one taken meanwhile (two requests saving the same name at
once: the check passes for both, the index lets one insert) is the same 409, never a 500."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.errors import Conflict
from backend.models import Plan

MAX_NAME = 200  # plans.name


class PlanNameTaken(Conflict):
    """The teacher has a plan of that name (`plan_id`)."""

    def __init__(self, teacher_id: int, name: str, plan_id: int, field: Sequence[str | int]):
        super().__init__(
            f"teacher {teacher_id} already has a plan named {name!r} (plan {plan_id}): choose another name",
            field=field,
        )
        self.plan_id = plan_id


def plan_named(db: Session, teacher_id: int, name: str, *, other_than: int | None = None) -> int | None:
    """The id of the teacher's plan called `name` (leaving out plan `other_than`), or None."""
    q = select(Plan.id).where(Plan.teacher_id == teacher_id, Plan.name == name)
    if other_than is not None:
        q = q.where(Plan.id != other_than)
    return db.scalar(q.limit(1))


def refuse_taken(
    db: Session, teacher_id: int, name: str, field: Sequence[str | int], *, other_than: int | None = None
) -> None:
    taken = plan_named(db, teacher_id, name, other_than=other_than)
    if taken is not None:
        raise PlanNameTaken(teacher_id, name, taken, field)


@contextmanager
def unless_taken_meanwhile(
    db: Session, teacher_id: int, name: str, field: Sequence[str | int], *, other_than: int | None = None
) -> Iterator[None]:
    """Runs the write (insert or rename, flushed inside) that `refuse_taken` allowed: when a concurrent
    request saved the name in between, the index refuses it and this turns that into PlanNameTaken
    (the transaction is rolled back: nothing of the request is written)."""
    try:
        yield
    except IntegrityError:
        db.rollback()
        taken = plan_named(db, teacher_id, name, other_than=other_than)
        if taken is None:  # another constraint: not ours to explain
            raise
        raise PlanNameTaken(teacher_id, name, taken, field) from None


def numbered(name: str, number: int) -> str:
    """`name (number)` within the column's length (the name is cut, never the number)."""
    suffix = f" ({number})"
    return name[: MAX_NAME - len(suffix)] + suffix


def free_name(db: Session, teacher_id: int, name: str) -> str:
    """`name`, or the first of "name (2)", "name (3)"... the teacher has no plan called (the plans a
    bake-off saves for its candidates: their shapes repeat across bake-offs of one teacher)."""
    db.flush()  # plans added earlier in this request count
    candidate, number = name, 1
    while plan_named(db, teacher_id, candidate) is not None:
        number += 1
        candidate = numbered(name, number)
    return candidate
