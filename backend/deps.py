"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Select
from sqlalchemy.orm import Session

from backend.db import transaction
from backend.errors import NotFound
from backend.schemas import MAX_ID, MAX_INT64
from backend.settings import Settings

# Ids in paths and queries: a 422 naming the parameter beyond the id column's range, not a database error.
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
QueryId = Annotated[int | None, Query(ge=1, le=MAX_ID)]


def get_db(request: Request) -> Iterator[Session]:
    """One session per request. Handlers commit explicitly before they return (FastAPI may run the code
    after `yield` only once the response is on its way); an error rolls everything back."""
    with transaction(request.app.state.sessionmaker) as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_or_404(session: Session, model, pk: int, label: str | None = None, field: tuple | None = None):
    """The row, or NotFound; `field`: the request field that named the id (e.g. ("body", "dataset_id"))."""
    row = session.get(model, pk)
    if row is None:
        raise NotFound(f"{label or model.__name__} {pk} not found", field=field)
    return row


def field_error(
    loc: list[Any], msg: str, type_: str = "value_error", nearby: list[Any] | None = None
) -> RequestValidationError:
    """A 422 naming one field, in FastAPI's own shape (plus the error body's `nearby` values)."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_, "nearby": nearby or []}])


class Page:
    """`?limit=&offset=` of every list endpoint (newest first): `page: Page = Depends()`."""

    def __init__(self, limit: int = Query(200, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_INT64)):
        self.limit, self.offset = limit, offset

    def of(self, query: Select) -> Select:
        return query.limit(self.limit).offset(self.offset)
