"""HEAD on every GET route: the same status and headers as GET, no body (RFC 9110 9.3.2).

FastAPI's routes answer only the methods they declare, so `curl -I`, health checkers and link checkers
got 405 on every API route. One ASGI middleware serves HEAD as GET instead of registering HEAD beside each
GET route, which would put a duplicate `head` operation of each into the OpenAPI schema.

The body is dropped at its first chunk and the response ended there; from then on the app is told the
client has gone, so a stream that would never end (the server-sent events of a job) stops at once.
"""

from __future__ import annotations

DISCONNECT = {"type": "http.disconnect"}


class HeadAsGet:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        ended = False

        async def headers_only(message):
            nonlocal ended
            if ended or message["type"] != "http.response.body":
                if not ended:
                    await send(message)
                return
            ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def gone_once_ended():
            return DISCONNECT if ended else await receive()

        await self.app({**scope, "method": "GET"}, gone_once_ended, headers_only)
