"""The API's front door, one ASGI middleware: request size limit, Host and Origin checks, bearer token,
and a last-resort 500 that keeps the connection open. Its refusals have the body of every error
(backend/api/errors.py).

Host and Origin: with no token (the loopback default) any web page the user visits could otherwise drive
the API — by posting to it from its own origin (cross-site request), or by pointing its own DNS name at
127.0.0.1 (DNS rebinding: the browser then sends the attacker's name as `Host`). So every request must
name a host this server answers to, and a state-changing request that carries an `Origin` (browsers
always send one on cross-origin writes) must come from the page's own origin. The dashboard is served by
this app, so its requests are same-origin; clients that send no `Origin` (curl, httpx, the CLI) pass.

A plain ASGI middleware (not BaseHTTPMiddleware), so streaming responses (SSE) pass through untouched.
"""

from __future__ import annotations

import hmac
import logging
import re
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException

from backend.api.errors import message
from backend.settings import Settings

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Only these may take the token from `?token=`: EventSource and plain download links cannot send headers.
QUERY_TOKEN_PATHS = re.compile(rf"^{PREFIX}/(jobs|teachers)/\d+/events$|^{PREFIX}/students/\d+/download$")


class Guard:
    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        self.hosts = settings.served_hosts()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, detail, extra = refusal
            return await message(status, detail, extra)(scope, receive, send)
        if "chunked" in headers.get("transfer-encoding", ""):  # no length stated: count as it arrives
            limit = self.settings.max_body_bytes
            receive = _limited(receive, limit, f"request body over {limit} bytes")
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            # A bug, not bad input. Answer 500 here instead of letting the exception reach the server,
            # which would close the client's kept-alive connection; mid-response there is no such choice.
            if started:
                raise
            log.exception("%s %s failed", scope["method"], scope["path"])
            await message(500, "internal server error (logged on the server)")(scope, receive, send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, dict] | None:
        """(status, detail, headers) of the response that refuses this request, or None to serve it."""
        limit = self.settings.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return 413, f"request body over {limit} bytes", {}
        host = headers.get("host", "")
        if self.hosts is not None and hostname(host) not in self.hosts:
            return (
                400,
                f"Host {host!r} is not served here (this server answers to {', '.join(sorted(self.hosts))}; "
                "add a name to PRUNESCOPE_ALLOWED_HOSTS to serve it)",
                {},
            )
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS:
            if origin is not None and not self._same_site(origin, scope, host):
                return (
                    403,
                    f"cross-site request refused: Origin {origin!r} is not this server's own pages "
                    f"(http://{host}); add its host to PRUNESCOPE_ALLOWED_HOSTS to allow it",
                    {},
                )
            # No Origin, but the browser says another site sent it (Fetch Metadata): refused too.
            if origin is None and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
                return 403, "cross-site request refused: sent by another site (Sec-Fetch-Site)", {}
        path = scope["path"]
        token = self.settings.token
        if token and path.startswith(PREFIX) and path != f"{PREFIX}/health":
            if not hmac.compare_digest(self._given_token(scope, headers).encode(), token.encode()):
                return 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
        return None

    def _same_site(self, origin: str, scope, host: str) -> bool:
        """The Origin is this server as the browser reached it, or a host the operator allowed."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file:// pages) and anything odd
        if hostname(parts.netloc) in self.settings.extra_hosts():
            return True
        return (parts.scheme, parts.netloc.lower()) == (scope.get("scheme", "http"), host.lower())

    @staticmethod
    def _given_token(scope, headers: dict[str, str]) -> str:
        scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        if scope["method"] == "GET" and QUERY_TOKEN_PATHS.match(scope["path"]):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return query.get("token", [""])[0]
        return ""


def hostname(host: str) -> str:
    """The name part of a `Host` header or URL netloc ("[::1]:8000" -> "::1"), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _limited(receive, limit: int, detail: str):
    """`receive` that fails the request with 413 once the body passes `limit` bytes (FastAPI lets an
    HTTPException raised while it reads the body through as the response)."""
    received = 0

    async def wrapped():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, detail)
        return message

    return wrapped
