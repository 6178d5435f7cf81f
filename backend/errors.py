"""Domain errors: what the service modules (backend.lifecycle, backend.dispatch, backend.memcheck, ...)
raise when a request cannot be served. They know nothing of HTTP; the routers' exception handlers
(registered in backend.app) turn each class into its status code and the structured error body.

Each error carries one or more `Problem`s: the field it is about (a path such as ("body", "params",
"steps"), or None when it is about the request as a whole), a message a person can act on, and, where
it helps, `nearby` valid values (the closest allowed settings, the statuses a transition accepts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    message: str
    field: FieldPath | None = None
    nearby: tuple[Any, ...] | None = None


class DomainError(Exception):
    """Base class. `problems` lists what is wrong; `message` is the first one's (or all, joined)."""

    def __init__(
        self,
        message: str = "",
        *,
        field: Sequence[str | int] | None = None,
        nearby: Sequence[Any] | None = None,
        problems: Sequence[Problem] = (),
    ):
        own = [Problem(message, _path(field), _values(nearby))] if message else []
        self.problems: tuple[Problem, ...] = (*own, *problems)
        if not self.problems:
            raise ValueError("a domain error needs a message or a problem")
        self.message = "; ".join(p.message for p in self.problems)
        super().__init__(self.message)

    @property
    def field(self) -> FieldPath | None:
        return self.problems[0].field

    @property
    def nearby(self) -> tuple[Any, ...] | None:
        return self.problems[0].nearby


class NotFound(DomainError):
    """A row the request names does not exist (HTTP 404)."""


class Conflict(DomainError):
    """The request is well-formed but the current state refuses it: a job already finished, a student
    not ready, a row changed meanwhile, no live worker for the device (HTTP 409)."""


class InvalidInput(DomainError):
    """A value of the request is wrong; `field` names it (HTTP 422)."""


class Forbidden(DomainError):
    """The server's settings refuse this value (a path outside the allowed roots...) (HTTP 403)."""


class Unavailable(DomainError):
    """A service the request needs (the broker, the worker registry) cannot be reached (HTTP 503)."""


@contextmanager
def fields_at(prefix: FieldPath) -> Iterator[None]:
    """Service checks (backend.dispatch, backend.memcheck) name fields of the params they are given
    (("gpus",)); a router puts them where its request holds those params (("body", "params", "gpus"))."""
    try:
        yield
    except DomainError as exc:
        exc.problems = tuple(
            p if p.field is None else replace(p, field=(*prefix, *p.field)) for p in exc.problems
        )
        raise


@contextmanager
def stored_fields(owner: str) -> Iterator[None]:
    """Service checks run on params stored earlier (a resume routes the job as it was created): no
    field of this request holds them, so each problem is about the request as a whole and its message
    names the stored field ("job 7's device: ...")."""
    try:
        yield
    except DomainError as exc:
        exc.problems = tuple(
            p if p.field is None else Problem(f"{owner}'s {'.'.join(map(str, p.field))}: {p.message}")
            for p in exc.problems
        )
        exc.message = "; ".join(p.message for p in exc.problems)
        exc.args = (exc.message,)
        raise


def _path(field: Sequence[str | int] | None) -> FieldPath | None:
    return tuple(field) if field is not None else None


def _values(nearby: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return tuple(nearby) if nearby is not None else None
