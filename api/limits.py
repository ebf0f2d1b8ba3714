"""Bounded request bodies: 413 for a body over its limit, counted as its bytes arrive.

Uploads (`POST /v1/collections/{name}/documents`) may send PGRAG_MAX_REQUEST_MB; every other
route PGRAG_MAX_JSON_KB. A declared Content-Length over the limit is refused before a byte is
read; a chunked body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import re

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgrag.runtime.settings import get_settings

UPLOAD_PATH = re.compile(r"^/v1/collections/[^/]+/documents$")


def body_limit(path: str) -> int:
    settings = get_settings()
    if UPLOAD_PATH.match(path):
        return int(settings.max_request_mb * 2**20)
    return settings.max_json_kb * 2**10


def too_large(limit: int) -> str:
    return f"request body over the limit of {limit / 2**20:.3g} MiB"


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": too_large(limit)}, 413)(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # Raised inside the route's read of the body: the app answers it as a 413.
                raise HTTPException(413, too_large(limit))
            return message

        await self.app(scope, bounded, send)
