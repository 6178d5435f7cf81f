"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from backend.settings import Settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request. Handlers commit explicitly before they return (FastAPI may run the code
    after `yield` only once the response is on its way); an error rolls everything back."""
    session = request.app.state.sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_or_404(session: Session, model, pk: int, label: str | None = None):
    row = session.get(model, pk)
    if row is None:
        raise HTTPException(404, f"{label or model.__name__} {pk} not found")
    return row


def field_error(loc: list[Any], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 naming one field, in FastAPI's own shape."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_}])
