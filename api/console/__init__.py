"""The web console, served at /console by the API (docs/console.md).

Server-rendered Jinja2 templates, htmx (vendored in `static/`, pinned, with its licence) for
the parts that refresh, and a little plain JavaScript for what htmx does not do: streaming an
answer, the jobs' rate charts and the canvas of the embedding map. Nothing is fetched from
outside the API.

The browser keeps the API key in sessionStorage and sends it as `Authorization: Bearer` on
every request, exactly as any client of the API does: no cookie is set, so no request can be
forged from another site, and every part is rendered for the scopes and collections of the
key that asks. The page shells hold no data; the parts behind them need the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware

from ..routes import console

STATIC = Path(__file__).parent / "static"

# Scripts and styles from the API only, no inline script, no framing by other sites.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_console() -> FastAPI:
    """The console as an app of its own, mounted at /console: its responses are compressed
    and carry a strict content security policy, without changing the /v1 routes."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(console.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(GZipMiddleware, minimum_size=500)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return app
