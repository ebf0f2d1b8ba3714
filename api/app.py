"""The HTTP API: `uvicorn pgrag.api.app:app` (or `pgrag up --api-port 8080`).

Routes are grouped by resource in `api/routes/` and stay thin: they parse the request, call
a `pgrag` function and shape its result. Every route but /healthz needs an API key
(`api/auth.py`, docs/security.md); request bodies are bounded (`api/limits.py`); what routes
take is validated by the types of `api/validation.py`. OpenAPI docs are served at /docs; the
schema's operation ids are the routes' function names. The web console is at /console
(`api/console`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute

from pgrag.runtime.services import ServiceError

from .console import create_console
from .events import EVENT_DEFINITIONS
from .limits import BodyLimit
from .routes import answers, collections, health, ingest, search
from .routes.console import CONSOLE_PATH
from .validation import refusal


def operation_id(route: APIRoute) -> str:
    return route.name


def create_app() -> FastAPI:
    app = FastAPI(
        title="pgrag",
        version="0.1.0",
        description="Ingest documents into PostgreSQL + pgvector and answer questions over "
        "them: queued questions whose answers stream back as server-sent events.",
        generate_unique_id_function=operation_id,
        responses={503: refusal("PostgreSQL or Redis is unreachable")},
    )
    for module in (answers, search, ingest, collections, health):
        app.include_router(module.router)
    app.mount(CONSOLE_PATH, create_console())  # the web console (docs/console.md)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_PATH}/")

    app.add_middleware(BodyLimit)

    @app.exception_handler(ServiceError)
    async def service_unavailable(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own 422, ASCII-escaped: it echoes the invalid input, which may hold a lone
        # surrogate that UTF-8 cannot encode.
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    fastapi_schema = app.openapi  # FastAPI's, built once and kept

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the component schemas of the answer stream's events."""
        schema = fastapi_schema()
        for name, definition in EVENT_DEFINITIONS.items():
            schema["components"]["schemas"].setdefault(name, definition)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
