"""Every error answer of the API in one shape, FastAPI's own 422 body plus `nearby`:

    {"detail": [{"loc": ["body", "params", "batch_size"], "msg": "...", "type": "value_error",
                 "nearby": [8, 16]}]}

`loc` is the field path (empty when the error names no field: a missing row, a job in the wrong state),
`nearby` the valid values closest to what was sent (empty when there is nothing to suggest). The handlers
here turn request validation errors, the domain errors of backend/errors.py and any HTTPException left
into that body; routes declare it for their 4xx answers with `responses=errors(404, 409)`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.errors import DomainError

# The `type` of an entry that names no field, by status (a 422 entry keeps pydantic's own type).
STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "value_error",
    500: "internal_error",
    503: "unavailable",
}
# By class name along the MRO (a subclass of one of them maps like it).
DOMAIN_STATUS = {"NotFound": 404, "Conflict": 409, "InvalidInput": 422, "Unavailable": 503, "Forbidden": 403}
STATUS_WORDS = {
    400: "Bad request",
    401: "Missing or wrong bearer token",
    403: "Refused",
    404: "Not found",
    409: "Conflict with the current state (e.g. a job in the wrong status, a stale plan version)",
    413: "Request body too large",
    422: "Invalid input: each entry names the field",
    503: "A service the request needs (broker, worker registry) is unreachable",
}


class SafeJSONResponse(JSONResponse):
    """JSON whatever the text holds: unpaired surrogates escaped (UTF-8 cannot encode them)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


class ErrorEntry(BaseModel):
    loc: list[str | int] = Field(
        description='path of the field at fault, e.g. ["body", "params", "batch_size"]; [] when none'
    )
    msg: str = Field(description="what is wrong, in words a user can act on")
    type: str = Field(
        description='kind of error: pydantic\'s ("missing", "int_parsing"...) or "not_found"...'
    )
    nearby: list[Any] = Field(
        default_factory=list, description="valid values close to the one sent (may be empty)"
    )


class ErrorBody(BaseModel):
    """The body of every 4xx (and 5xx) answer."""

    detail: list[ErrorEntry]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: these statuses answer with ErrorBody (422 is declared by FastAPI)."""
    return {s: {"model": ErrorBody, "description": STATUS_WORDS.get(s, "Error")} for s in statuses}


def entry(loc, msg: str, type_: str, nearby=None) -> dict[str, Any]:
    return {
        "loc": [p if isinstance(p, int) else str(p) for p in loc],
        "msg": msg,
        "type": type_,
        "nearby": list(nearby or []),
    }


def body(status: int, entries: list[dict[str, Any]], headers: dict | None = None) -> SafeJSONResponse:
    return SafeJSONResponse({"detail": entries}, status_code=status, headers=headers)


def message(status: int, msg: str, headers: dict | None = None) -> SafeJSONResponse:
    """An error that names no field."""
    return body(status, [entry([], msg, STATUS_TYPES.get(status, "error"))], headers)


async def validation_error(request, exc: RequestValidationError) -> SafeJSONResponse:
    """422 with each error's field and message. Not the rejected `input` FastAPI echoes by default: it may
    be NaN or hold unpaired surrogates, which would turn the answer to bad input into a 500."""
    return body(
        422,
        [entry(e["loc"], e["msg"], e.get("type", "value_error"), _nearby(e)) for e in exc.errors()],
    )


def _nearby(error: dict[str, Any]) -> list[Any] | None:
    """A validator's nearby values: PydanticCustomError(..., {"nearby": [...]}) puts them in ctx."""
    return error.get("nearby") or (error.get("ctx") or {}).get("nearby")


async def http_error(request, exc: StarletteHTTPException) -> SafeJSONResponse:
    detail = exc.detail
    if isinstance(detail, list):  # already entries
        entries = [entry(d.get("loc", []), d["msg"], d.get("type", "error"), d.get("nearby")) for d in detail]
        return body(exc.status_code, entries, exc.headers)
    return message(exc.status_code, str(detail), exc.headers)


def domain_entries(exc: DomainError) -> list[dict[str, Any]]:
    """One entry per Problem of a backend.errors domain error."""
    type_ = STATUS_TYPES.get(_status(exc), "error")
    return [entry(p.field or (), p.message, type_, p.nearby) for p in exc.problems]


def _status(exc: DomainError) -> int:
    return next((DOMAIN_STATUS[c.__name__] for c in type(exc).__mro__ if c.__name__ in DOMAIN_STATUS), 400)


async def domain_error(request, exc: DomainError) -> SafeJSONResponse:
    return body(_status(exc), domain_entries(exc))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DomainError, domain_error)
